package deploy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// posternConfig is what the packaging must agree with in a Postern
// configuration.
type posternConfig struct {
	DataDir    string `json:"data_dir"`
	Submission struct {
		Listen    []string `json:"listen"`
		TLSListen []string `json:"tls_listen"`
	} `json:"submission"`
	Admin struct {
		MetricsListen string `json:"metrics_listen"`
	} `json:"admin"`
	Shutdown struct {
		Timeout time.Duration `json:"-"`
		Text    string        `json:"timeout"`
	} `json:"shutdown"`
}

func parseConfig(t *testing.T, text string) posternConfig {
	t.Helper()
	var c posternConfig
	if err := yaml.Unmarshal([]byte(text), &c); err != nil {
		t.Fatal(err)
	}
	d, err := time.ParseDuration(c.Shutdown.Text)
	if err != nil {
		t.Fatalf("shutdown.timeout %q: %v (the packaging's grace periods are set from it: write it out)", c.Shutdown.Text, err)
	}
	c.Shutdown.Timeout = d
	if c.DataDir == "" || len(c.Submission.Listen) == 0 || len(c.Submission.TLSListen) == 0 || c.Admin.MetricsListen == "" {
		t.Fatalf("the configuration leaves data_dir, a listener or admin.metrics_listen to the defaults: write them out\n%s", text)
	}
	return c
}

var posternBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "postern-deploy")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "postern")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/postern").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// configCheck runs "postern config check" on text, with env set and the
// certificate under /etc/postern/tls/ (a Secret's mount) replaced by one of
// the test's.
func configCheck(t *testing.T, text string, env map[string]string) {
	t.Helper()
	bin, err := posternBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeCert(t, filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	file := filepath.Join(dir, "postern.yaml")
	os.WriteFile(file, []byte(strings.ReplaceAll(text, "/etc/postern/tls/", dir+"/")), 0o600)
	cmd := exec.Command(bin, "config", "check", "-c", file)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("postern config check: %v\n%s", err, out)
	}
}

func writeCert(t *testing.T, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay.example.org"},
		DNSNames: []string{"relay.example.org"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}
