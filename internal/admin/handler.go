package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/auth"
)

// Handler serves ops as a small JSON API. It bounds every request body
// it reads to MaxRequestBody itself, whatever server it runs in.
func Handler(ops Operations) http.Handler {
	mux := http.NewServeMux()
	register(mux, ops, reply)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxRequestBody)
		mux.ServeHTTP(w, r)
	})
}

// reply answers v as JSON, or err as {"error": text} with the status that
// lets the client tell not found, conflict and a bad configuration apart.
func reply(w http.ResponseWriter, v any, err error) {
	status := http.StatusOK
	if err != nil {
		status = statusOf(err)
		v = map[string]string{"error": err.Error()}
	}
	writeJSON(w, status, v)
}

func statusOf(err error) int {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, queue.ErrNotFound), errors.Is(err, auth.ErrNoSuchUser):
		return http.StatusNotFound
	case errors.Is(err, auth.ErrUserExists):
		return http.StatusConflict
	case errors.Is(err, ErrConfig):
		return http.StatusUnprocessableEntity
	}
	return http.StatusBadRequest
}

// writeJSON encodes v before writing anything, so that a value that does
// not encode is answered 500 with the reason, not a 200 cut short.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(map[string]string{"error": "encode the answer: " + err.Error()}) // a map of strings always encodes
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// An error here is the client gone: there is no one left to tell.
	w.Write(append(b, '\n'))
}

// register adds the routes of ops to mux.
func register(mux *http.ServeMux, ops Operations, reply func(http.ResponseWriter, any, error)) {
	mux.HandleFunc("GET /v1/queue", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := queue.Filter{RcptDomain: q.Get("domain"), Sender: q.Get("sender"), State: q.Get("state")}
		var err error
		if v := q.Get("arrived_before"); v != "" {
			f.ArrivedBefore, err = time.Parse(time.RFC3339Nano, v)
		}
		if v := q.Get("arrived_after"); v != "" && err == nil {
			f.ArrivedAfter, err = time.Parse(time.RFC3339Nano, v)
		}
		if err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		msgs, err := ops.QueueList(f)
		reply(w, msgs, err)
	})
	// A backup takes as long as the copy does.
	directoryRoute(mux, "POST /v1/backup", reply, "an absolute directory and its parent's identity",
		func(req BackupTarget) bool { return filepath.IsAbs(req.Dir) && req.Parent != nil }, ops.Backup)
	mux.HandleFunc("POST /v1/queue/flush", func(w http.ResponseWriter, r *http.Request) {
		n, err := ops.QueueFlush()
		reply(w, map[string]int{"messages": n}, err)
	})
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		summary, err := ops.Reload()
		reply(w, map[string]string{"summary": summary}, err)
	})
	mux.HandleFunc("GET /v1/tlsrpt/{day}", func(w http.ResponseWriter, r *http.Request) {
		day, err := time.Parse("2006-01-02", r.PathValue("day"))
		if err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		agg, err := ops.TLSReports(day)
		reply(w, agg, err)
	})
	mux.HandleFunc("POST /v1/tlsrpt/{day}/send", func(w http.ResponseWriter, r *http.Request) {
		day, err := time.Parse("2006-01-02", r.PathValue("day"))
		if err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		// Sending takes up to five minutes (TLSReportSend's bound).
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(6 * time.Minute))
		out, err := ops.TLSReportSend(day)
		if err != nil {
			// Partial results matter: say what went out and what did not.
			writeJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error(), "outcomes": out})
			return
		}
		reply(w, out, nil)
	})
	mux.HandleFunc("GET /v1/audit", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := audit.Filter{RcptDomain: q.Get("rcpt_domain"), MessageID: q.Get("message_id")}
		var err error
		if v := q.Get("since"); v != "" {
			f.Since, err = time.Parse(time.RFC3339Nano, v)
		}
		if v := q.Get("until"); v != "" && err == nil {
			f.Until, err = time.Parse(time.RFC3339Nano, v)
		}
		if err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		records, err := ops.Audit(f)
		reply(w, records, err)
	})
	mux.HandleFunc("GET /v1/queue/{id}", func(w http.ResponseWriter, r *http.Request) {
		m, err := ops.QueueShow(r.PathValue("id"))
		reply(w, m, err)
	})
	mux.HandleFunc("POST /v1/queue/{id}/{action}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]string{"ok": "true"}, ops.QueueAction(r.PathValue("action"), r.PathValue("id")))
	})
	mux.HandleFunc("GET /v1/users", func(w http.ResponseWriter, r *http.Request) {
		users, err := ops.UserList()
		reply(w, users, err)
	})
	mux.HandleFunc("POST /v1/users", func(w http.ResponseWriter, r *http.Request) {
		var req UserRequest
		if !decodeRequest(w, r, &req, reply) {
			return
		}
		reply(w, map[string]string{"ok": "true"}, ops.UserAdd(req.Name, req.Password, req.AllowFrom))
	})
	mux.HandleFunc("DELETE /v1/users/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]string{"ok": "true"}, ops.UserDelete(r.PathValue("name")))
	})
	mux.HandleFunc("GET /v1/policy/{domain}", func(w http.ResponseWriter, r *http.Request) {
		port, err := strconv.Atoi(r.URL.Query().Get("port"))
		if err != nil || port <= 0 || port > 65535 {
			reply(w, nil, fmt.Errorf("bad request: port %q", r.URL.Query().Get("port")))
			return
		}
		// A check takes as long as its lookups and fetch (bounded below).
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(2 * time.Minute))
		rep, err := ops.PolicyCheck(r.PathValue("domain"), port)
		reply(w, rep, err)
	})
	mux.HandleFunc("DELETE /v1/policy/memory/{domain}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]string{"ok": "true"}, ops.PolicyForget(r.PathValue("domain")))
	})
	mux.HandleFunc("POST /v1/users/{name}/require-tls", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			On bool `json:"on"`
		}
		if !decodeRequest(w, r, &req, reply) {
			return
		}
		reply(w, map[string]string{"ok": "true"}, ops.UserRequireTLS(r.PathValue("name"), req.On))
	})
	mux.HandleFunc("POST /v1/users/{name}/any-header-from", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			On bool `json:"on"`
		}
		if !decodeRequest(w, r, &req, reply) {
			return
		}
		reply(w, map[string]string{"ok": "true"}, ops.UserAnyHeaderFrom(r.PathValue("name"), req.On))
	})
	mux.HandleFunc("POST /v1/users/{name}/password", func(w http.ResponseWriter, r *http.Request) {
		var req UserRequest
		if !decodeRequest(w, r, &req, reply) {
			return
		}
		reply(w, map[string]string{"ok": "true"}, ops.UserPasswd(r.PathValue("name"), req.Password))
	})
	userVolumeRoutes(mux, ops, reply)
	handoverRoutes(mux, ops, reply)
}

func userVolumeRoutes(mux *http.ServeMux, ops Operations, reply func(http.ResponseWriter, any, error)) {
	mux.HandleFunc("GET /v1/users/{name}", func(w http.ResponseWriter, r *http.Request) {
		rep, err := ops.UserShow(r.PathValue("name"))
		reply(w, rep, err)
	})
	mux.HandleFunc("POST /v1/users/{name}/suspend", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			On bool `json:"on"`
		}
		if !decodeRequest(w, r, &req, reply) {
			return
		}
		reply(w, map[string]string{"ok": "true"}, ops.UserSuspend(r.PathValue("name"), req.On))
	})
	mux.HandleFunc("POST /v1/users/{name}/limit", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Which string `json:"which"`
			Value *int   `json:"value"`
		}
		if !decodeRequest(w, r, &req, reply) {
			return
		}
		reply(w, map[string]string{"ok": "true"}, ops.UserLimit(r.PathValue("name"), req.Which, req.Value))
	})
}

func handoverRoutes(mux *http.ServeMux, ops Operations, reply func(http.ResponseWriter, any, error)) {
	h, ok := ops.(Handover)
	if !ok {
		return
	}
	// An export takes as long as the wait and the copy do; an import as the copy.
	directoryRoute(mux, "POST /v1/queue/export", reply, "an absolute directory and its parent's identity",
		func(req ExportRequest) bool { return filepath.IsAbs(req.Dir) && req.Parent != nil }, h.QueueExport)
	directoryRoute(mux, "POST /v1/queue/import", reply, "an absolute directory and its identity",
		func(req ImportRequest) bool { return filepath.IsAbs(req.Dir) && req.Self != nil }, h.QueueImport)
}

// decodeRequest reads r's JSON body into v; when it does not parse, it
// answers 400 through reply and reports false.
func decodeRequest(w http.ResponseWriter, r *http.Request, v any, reply func(http.ResponseWriter, any, error)) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		reply(w, nil, fmt.Errorf("bad request: %w", err))
		return false
	}
	return true
}

// directoryRoute serves an operation on a directory the CLI names (backup,
// export, import): the request must name it absolutely, with the identity
// the CLI saw, so that daemon and CLI provably mean the same directory; and
// the answer may take as long as the copy does, past the write deadline.
func directoryRoute[Req, Res any](mux *http.ServeMux, pattern string, reply func(http.ResponseWriter, any, error),
	want string, valid func(Req) bool, run func(Req) (Res, error)) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if !decodeRequest(w, r, &req, reply) {
			return
		}
		if !valid(req) {
			reply(w, nil, errors.New("bad request: want "+want))
			return
		}
		http.NewResponseController(w).SetWriteDeadline(time.Time{})
		res, err := run(req)
		reply(w, res, err)
	})
}
