package tlspolicy

import (
	"strings"
	"testing"
	"time"
)

func TestParseSTSPolicy(t *testing.T) {
	good := "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n"
	p, err := ParseSTSPolicy(good)
	if err != nil || p.Mode != "enforce" || len(p.MX) != 2 || p.MaxAge != 7*24*time.Hour {
		t.Fatalf("%+v %v", p, err)
	}
	if p, err := ParseSTSPolicy("version: STSv1\nmode: none\nmax_age: 0\nfuture_key: whatever\n"); err != nil || p.Mode != "none" {
		t.Fatalf("mode none without mx, unknown key: %+v %v", p, err)
	}
	for name, body := range map[string]string{
		"no version":        "mode: enforce\nmx: a.example\nmax_age: 1\n",
		"wrong version":     "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
		"bad mode":          "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
		"mode twice":        "version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmax_age: 1\n",
		"no mx":             "version: STSv1\nmode: enforce\nmax_age: 1\n",
		"max_age too large": "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n",
		"max_age negative":  "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
		"no max_age":        "version: STSv1\nmode: enforce\nmx: a.example\n",
		"wildcard inside":   "version: STSv1\nmode: enforce\nmx: mail.*.example\nmax_age: 1\n",
		"not a line":        "version: STSv1\nmode enforce\nmx: a.example\nmax_age: 1\n",
		"html":              "<html><body>policy</body></html>",
	} {
		if _, err := ParseSTSPolicy(body); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSTSMatching(t *testing.T) {
	p := STSPolicy{MX: []string{"mail.example.com", "*.example.net"}}
	for host, want := range map[string]bool{
		"mail.example.com": true, "MAIL.example.com.": true, "mx1.example.net": true,
		"example.net": false, "a.b.example.net": false, "other.example.com": false,
	} {
		if p.Matches(host) != want {
			t.Errorf("%s: want %v", host, want)
		}
	}
}

func TestSTSRecord(t *testing.T) {
	if id, err := stsID([]string{"v=spf1 -all", "v=STSv1; id=20160831085700Z;"}); err != nil || id != "20160831085700Z" {
		t.Fatalf("%q %v", id, err)
	}
	if id, err := stsID(nil); err != nil || id != "" {
		t.Fatalf("no record: %q %v", id, err)
	}
	for _, bad := range [][]string{
		{"v=STSv1; id=a;", "v=STSv1; id=b;"}, // two records: no policy
		{"v=STSv1;"}, {"v=STSv1; id=not-alnum;"}, {"v=STSv1; id=" + strings.Repeat("a", 33)},
		{" id=1; v=STSv1"},
	} {
		if id, err := stsID(bad); err == nil && id != "" {
			t.Errorf("%q accepted as %q", bad, id)
		}
	}
}

// FuzzSTSPolicy: the parser never panics, and what it accepts is
// consistent: a known mode, max_age within a year, mx present unless none,
// and every pattern matched by the name it describes.
func FuzzSTSPolicy(f *testing.F) {
	f.Add("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n")
	f.Add("version: STSv1\nmode: none\nmax_age: 0\n")
	f.Add("version: STSv1\nmode: testing\nmx: a.b\nmax_age: 31557600\nx: y\n")
	f.Fuzz(func(t *testing.T, body string) {
		p, err := ParseSTSPolicy(body)
		if err != nil {
			return
		}
		if p.Mode != "enforce" && p.Mode != "testing" && p.Mode != "none" {
			t.Fatalf("mode %q", p.Mode)
		}
		if p.MaxAge < 0 || p.MaxAge > maxSTSAge {
			t.Fatalf("max_age %v", p.MaxAge)
		}
		if p.Mode != "none" && len(p.MX) == 0 {
			t.Fatal("no mx")
		}
		for _, mx := range p.MX {
			host := strings.Replace(mx, "*", "x", 1)
			if !p.Matches(host) {
				t.Fatalf("pattern %q does not match %q", mx, host)
			}
		}
	})
}
