// Package interop tests Postern against mail and DNS software it did not
// write: knot (a private signed root and zones) and unbound (recursing and
// validating) for DNS; Postfix, Exim, OpenSMTPD and Sendmail as receiving
// MTAs; swaks, msmtp and Python's smtplib as submitting clients;
// python3-dkim's dkimverify and Python's email package as verifiers.
//
// The suite runs only when asked, as root, after interop/install.sh:
//
//	POSTERN_INTEROP=1 go test ./interop/ -v
//
// docs/interop.md has the matrix of receivers and policies it proves.
package interop
