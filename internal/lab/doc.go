// Package lab is a private, in-process mini-internet: DNS servers that
// answer like recursive resolvers from zones signed under a root key of
// their own (or unsigned), recording SMTP servers, certificate authorities,
// and HTTPS servers for MTA-STS policies, all on 127.0.0.1 with ports the
// kernel chooses.
//
// The tests use it through resolver/resolvertest, relay/smtptest and
// tlspolicy/tlstest, which turn its errors into test failures and close
// what it starts when the test ends; `postern demo` uses it directly, so it
// does not depend on package testing.
package lab
