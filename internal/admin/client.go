package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/tlsrpt"
)

// remote performs Operations through a running daemon's admin socket.
type Client struct {
	client *http.Client
	// long has no overall timeout, for a backup: it takes as long as
	// the copy does.
	long *http.Client
}

// NewClient talks to the admin socket at path.
func NewClient(path string) *Client {
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}
	return &Client{client: &http.Client{Timeout: time.Minute, Transport: transport}, long: &http.Client{Transport: transport}}
}

// RemoteError is an error answer from the daemon. API marks an answer of
// the admin API itself (a JSON error), whose status means something: not
// found, conflict, bad configuration. Any other answer (the mux's 404 for
// a route this daemon does not have, say) matches none of those errors.
type RemoteError struct {
	Status int
	API    bool
	Msg    string
}

func (e *RemoteError) Error() string { return e.Msg }
func (e *RemoteError) Is(target error) bool {
	if !e.API {
		return false
	}
	switch e.Status {
	case http.StatusNotFound:
		return target == queue.ErrNotFound || target == auth.ErrNoSuchUser
	case http.StatusConflict:
		return target == auth.ErrUserExists
	case http.StatusUnprocessableEntity:
		return target == ErrConfig
	}
	return false
}

func (r *Client) do(method, path string, body, out any) error {
	return r.doWith(r.client, method, path, body, out)
}

func (r *Client) doWith(client *http.Client, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("admin socket: %s %s: encode the request: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://postern"+path, rd)
	if err != nil {
		return fmt.Errorf("admin socket: %s %s: %w", method, path, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errorAnswer(method, path, resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("admin socket: %s %s: decode the answer: %w", method, path, err)
	}
	return nil
}

// errorAnswer reads a refusal: the API's {"error": text}, or from anything
// else its status and the start of its body, so that it never reads as an
// empty "not found".
func errorAnswer(method, path string, resp *http.Response) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxRequestBody))
	var e struct {
		Error string `json:"error"`
	}
	if err == nil && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") &&
		json.Unmarshal(b, &e) == nil && e.Error != "" {
		return &RemoteError{Status: resp.StatusCode, API: true, Msg: e.Error}
	}
	text := strings.TrimSpace(string(b))
	if err != nil {
		text = fmt.Sprintf("reading the answer: %v", err)
	}
	return &RemoteError{Status: resp.StatusCode, Msg: fmt.Sprintf("admin socket: %s %s: %s: %s", method, path, resp.Status, text)}
}

func (r *Client) QueueList(f queue.Filter) ([]queue.Message, error) {
	var out []queue.Message
	v := url.Values{"domain": {f.RcptDomain}, "sender": {f.Sender}, "state": {f.State}}
	if !f.ArrivedBefore.IsZero() {
		v.Set("arrived_before", f.ArrivedBefore.Format(time.RFC3339Nano))
	}
	if !f.ArrivedAfter.IsZero() {
		v.Set("arrived_after", f.ArrivedAfter.Format(time.RFC3339Nano))
	}
	return out, r.do("GET", "/v1/queue?"+v.Encode(), nil, &out)
}

// Backup asks the daemon for a backup, telling it which directory DIR's
// parent is here: the daemon may see another (a private /tmp).
func (r *Client) Backup(t BackupTarget) (BackupReport, error) {
	var out BackupReport
	t, err := TargetFor(t.Dir)
	if err != nil {
		return out, err
	}
	return out, r.doWith(r.long, "POST", "/v1/backup", t, &out)
}
func (r *Client) QueueFlush() (int, error) {
	var out map[string]int
	err := r.do("POST", "/v1/queue/flush", nil, &out)
	return out["messages"], err
}
func (r *Client) Reload() (string, error) {
	var out map[string]string
	err := r.do("POST", "/v1/reload", nil, &out)
	return out["summary"], err
}
func (r *Client) TLSReports(day time.Time) (map[string][]tlsrpt.PolicyResult, error) {
	var out map[string][]tlsrpt.PolicyResult
	return out, r.do("GET", "/v1/tlsrpt/"+day.Format("2006-01-02"), nil, &out)
}
func (r *Client) TLSReportSend(day time.Time) ([]ReportOutcome, error) {
	var out []ReportOutcome
	return out, r.doWith(r.long, "POST", "/v1/tlsrpt/"+day.Format("2006-01-02")+"/send", nil, &out)
}
func (r *Client) Audit(f audit.Filter) ([]audit.Record, error) {
	var out []audit.Record
	v := url.Values{"rcpt_domain": {f.RcptDomain}, "message_id": {f.MessageID}}
	if !f.Since.IsZero() {
		v.Set("since", f.Since.Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		v.Set("until", f.Until.Format(time.RFC3339Nano))
	}
	return out, r.do("GET", "/v1/audit?"+v.Encode(), nil, &out)
}
func (r *Client) QueueShow(id string) (queue.Message, error) {
	var m queue.Message
	return m, r.do("GET", "/v1/queue/"+url.PathEscape(id), nil, &m)
}
func (r *Client) QueueAction(action, id string) error {
	return r.do("POST", "/v1/queue/"+url.PathEscape(id)+"/"+url.PathEscape(action), nil, nil)
}
func (r *Client) UserAdd(name, pw string, allow []string) error {
	return r.do("POST", "/v1/users", UserRequest{Name: name, Password: pw, AllowFrom: allow}, nil)
}
func (r *Client) UserList() ([]auth.User, error) {
	var out []auth.User
	return out, r.do("GET", "/v1/users", nil, &out)
}
func (r *Client) UserDelete(name string) error {
	return r.do("DELETE", "/v1/users/"+url.PathEscape(name), nil, nil)
}
func (r *Client) PolicyCheck(domain string, port int) (PolicyReport, error) {
	var out PolicyReport
	return out, r.doWith(r.long, "GET", "/v1/policy/"+url.PathEscape(domain)+"?port="+strconv.Itoa(port), nil, &out)
}
func (r *Client) PolicyForget(domain string) error {
	return r.do("DELETE", "/v1/policy/memory/"+url.PathEscape(domain), nil, nil)
}
func (r *Client) UserRequireTLS(name string, on bool) error {
	return r.do("POST", "/v1/users/"+url.PathEscape(name)+"/require-tls", map[string]bool{"on": on}, nil)
}
func (r *Client) UserAnyHeaderFrom(name string, on bool) error {
	return r.do("POST", "/v1/users/"+url.PathEscape(name)+"/any-header-from", map[string]bool{"on": on}, nil)
}
func (r *Client) UserPasswd(name, pw string) error {
	return r.do("POST", "/v1/users/"+url.PathEscape(name)+"/password", UserRequest{Password: pw}, nil)
}
func (r *Client) Close() error { return nil }

func (r *Client) UserShow(name string) (UserReport, error) {
	var out UserReport
	return out, r.do("GET", "/v1/users/"+url.PathEscape(name), nil, &out)
}

func (r *Client) UserSuspend(name string, on bool) error {
	return r.do("POST", "/v1/users/"+url.PathEscape(name)+"/suspend", map[string]bool{"on": on}, nil)
}

func (r *Client) UserLimit(name, which string, n *int) error {
	return r.do("POST", "/v1/users/"+url.PathEscape(name)+"/limit", map[string]any{"which": which, "value": n}, nil)
}

func (r *Client) QueueExport(req ExportRequest) (ExportResult, error) {
	var out ExportResult
	t, err := TargetFor(req.Dir)
	if err != nil {
		return out, err
	}
	req.Parent = t.Parent
	return out, r.doWith(r.long, "POST", "/v1/queue/export", req, &out)
}

func (r *Client) QueueImport(req ImportRequest) (ImportResult, error) {
	var out ImportResult
	fi, err := os.Stat(req.Dir)
	if err != nil {
		return out, fmt.Errorf("import: %w", err)
	}
	id := IDOf(fi)
	req.Self = &id
	return out, r.doWith(r.long, "POST", "/v1/queue/import", req, &out)
}
