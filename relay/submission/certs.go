package submission

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"sync"
	"time"
)

// Certificates serves the submission certificate and picks up a new one
// when the files change or Reload is called (on SIGHUP), so rotation needs
// no restart and drops no connection.
type Certificates struct {
	certFile, keyFile string
	log               *slog.Logger

	mu    sync.RWMutex
	cert  *tls.Certificate
	stamp string
}

// NewCertificates loads certFile and keyFile. With both empty it makes a
// self-signed certificate for hostname, for local use, and warns: clients
// will have to be told not to verify it.
func NewCertificates(certFile, keyFile, hostname string, log *slog.Logger) (*Certificates, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Certificates{certFile: certFile, keyFile: keyFile, log: log}
	if certFile == "" && keyFile == "" {
		cert, err := SelfSigned(hostname)
		if err != nil {
			return nil, err
		}
		c.cert = &cert
		log.Warn("no submission certificate configured; using a self-signed one, fit only for local testing",
			"hostname", hostname)
		return c, nil
	}
	if _, err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// GetCertificate is for tls.Config.
func (c *Certificates) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cert, nil
}

func (c *Certificates) fileStamp() string {
	var s string
	for _, f := range []string{c.certFile, c.keyFile} {
		if fi, err := os.Stat(f); err == nil {
			s += fmt.Sprintf("%d/%d;", fi.ModTime().UnixNano(), fi.Size())
		}
	}
	return s
}

// Reload re-reads the files if they changed. A bad new pair is reported and
// the current certificate kept: a typo during rotation must not take
// submission down.
func (c *Certificates) Reload() (bool, error) {
	if c.certFile == "" {
		return false, nil
	}
	stamp := c.fileStamp()
	c.mu.RLock()
	same := stamp == c.stamp && c.cert != nil
	c.mu.RUnlock()
	if same {
		return false, nil
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return false, fmt.Errorf("load submission.tls.cert_file %s / key_file %s: %w", c.certFile, c.keyFile, err)
	}
	c.mu.Lock()
	c.cert, c.stamp = &cert, stamp
	c.mu.Unlock()
	if leaf, err := x509.ParseCertificate(cert.Certificate[0]); err == nil {
		c.log.Info("submission certificate loaded", "file", c.certFile,
			"subject", leaf.Subject.String(), "not_after", leaf.NotAfter)
	}
	return true, nil
}

// Watch polls the files every interval until ctx ends. Polling (rather than
// inotify) also sees symlink swaps as certbot and Kubernetes do them.
func (c *Certificates) Watch(ctx context.Context, interval time.Duration) {
	if c.certFile == "" || interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := c.Reload(); err != nil {
				c.log.Error("certificate reload failed; keeping the current one", "err", err)
			}
		}
	}
}

// SelfSigned makes an ECDSA certificate for hostname, localhost and the
// loopback addresses, valid for a year.
func SelfSigned(hostname string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hostname, Organization: []string{"Postern self-signed"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{hostname, "localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
