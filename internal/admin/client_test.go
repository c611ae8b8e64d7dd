package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/auth"
)

// fakeOps answers the few operations a test calls; any other panics
// (the embedded nil interface).
type fakeOps struct {
	Operations
	show func(id string) (queue.Message, error)
}

func (f fakeOps) QueueShow(id string) (queue.Message, error) { return f.show(id) }

// serve runs h on a Unix socket in a temporary directory, as the daemon
// runs the admin socket, and returns a client of it.
func serve(t *testing.T, h http.Handler) *Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "admin.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	c := NewClient(path)
	t.Cleanup(func() {
		c.client.CloseIdleConnections()
		c.long.CloseIdleConnections()
		// Shutdown, not Close: it waits for a connection that is being
		// closed after a refused body (net/http lingers on it).
		srv.Shutdown(context.Background())
		<-done
	})
	return c
}

// TestNotFoundOfTheAPI: the API's own 404 (no such message) reads as
// queue.ErrNotFound, with the daemon's text.
func TestNotFoundOfTheAPI(t *testing.T) {
	c := serve(t, Handler(fakeOps{show: func(id string) (queue.Message, error) {
		return queue.Message{}, fmt.Errorf("message %s: %w", id, queue.ErrNotFound)
	}}))
	_, err := c.QueueShow("x1")
	if !errors.Is(err, queue.ErrNotFound) || !strings.Contains(err.Error(), "message x1") {
		t.Errorf("the API's not found: %v", err)
	}
}

// TestNotFoundOfTheMux: a 404 from a mux (a route the daemon does not
// have, as an older daemon lacks a newer command's) is not "no such
// message" or "no such user", and says what answered; nor is a 405.
func TestNotFoundOfTheMux(t *testing.T) {
	c := serve(t, http.NewServeMux())
	_, err := c.QueueShow("x1")
	if errors.Is(err, queue.ErrNotFound) || errors.Is(err, auth.ErrNoSuchUser) {
		t.Errorf("the mux's 404 reads as not found: %v", err)
	}
	var re *RemoteError
	if !errors.As(err, &re) || re.Status != http.StatusNotFound || re.API {
		t.Fatalf("want a non-API 404, got %#v", err)
	}
	if !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), "/v1/queue/x1") {
		t.Errorf("the error does not say what answered: %q", err)
	}
	_, err = serve(t, Handler(fakeOps{})).QueueExport(ExportRequest{Dir: t.TempDir()})
	if !errors.As(err, &re) || re.API || errors.Is(err, queue.ErrNotFound) || err.Error() == "" {
		t.Errorf("queue export through a daemon without it: %#v", err)
	}
}

// TestRequestBodyBounded: the handler bounds the bodies it reads by
// itself, whatever server it runs in: a body past MaxRequestBody is
// refused with 413, and the operation is not performed.
func TestRequestBodyBounded(t *testing.T) {
	c := serve(t, Handler(fakeOps{}))
	big := strings.NewReader(`{"on": true, "pad": "` + strings.Repeat("x", 2*MaxRequestBody) + `"}`)
	resp, err := c.client.Post("http://postern/v1/users/app/require-tls", "application/json", big)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("status %d, want 413", resp.StatusCode)
	}
}

// TestRequestThatDoesNotEncode: a body that cannot be encoded is an error
// before anything is sent, not an empty request.
func TestRequestThatDoesNotEncode(t *testing.T) {
	c := serve(t, Handler(fakeOps{}))
	err := c.do("POST", "/v1/users", map[string]any{"bad": func() {}}, nil)
	if err == nil || !strings.Contains(err.Error(), "encode the request") {
		t.Errorf("got %v", err)
	}
}
