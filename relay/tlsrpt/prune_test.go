package tlsrpt_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/tlsrpt"
)

// The record of reports sent does not grow forever: days before the
// retention's cutoff are forgotten, later ones kept (and not sent again).
func TestSentReportsArePruned(t *testing.T) {
	c := &clock{now: time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)}
	dir := t.TempDir()
	q, err := queue.Open(filepath.Join(dir, "queue.db"), queue.Options{Clock: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	db, err := bbolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r, err := tlsrpt.NewReporter(tlsrpt.Config{OrganizationName: "O", ContactInfo: "c@b.example", Submitter: "relay.example",
		From: "reports@b.example", SendHour: 1},
		tlsrpt.Deps{Queue: q, DB: db, Clock: c.Now, LookupTXT: func(context.Context, string) ([]string, error) {
			return []string{"v=TLSRPTv1; rua=mailto:tlsrpt@dest.example"}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	var days []time.Time
	for i := 0; i < 3; i++ { // an attempt on each of three days, each day reported
		day := tlsrpt.Day(c.now)
		days = append(days, day)
		id, _ := q.Enqueue("", queue.Envelope{From: "a@b.example", Recipients: []queue.Recipient{{Addr: "x@dest.example"}}}, strings.NewReader("x\r\n"))
		l, _ := q.Lease(1, time.Minute)
		a := tlsrpt.Attempt{PolicyDomain: "dest.example", PolicyType: "no-policy-found", MXHost: "mx.dest.example"}
		q.Record(id, l[0].Seq, []queue.Outcome{{Recipient: 0, Result: queue.ResultDelivered, Journal: [][]byte{a.Encode()}}})
		if _, err := r.Send(context.Background(), day); err != nil {
			t.Fatal(err)
		}
		c.now = c.now.Add(24 * time.Hour)
	}
	n, err := r.PruneSent(days[2])
	if err != nil || n != 2 {
		t.Fatalf("pruned %d records (%v), want the first two days'", n, err)
	}
	if n, _ := r.PruneSent(days[2]); n != 0 {
		t.Fatalf("pruned %d more", n)
	}
	before, _ := q.Count()
	if _, err := r.Send(context.Background(), days[2]); err != nil {
		t.Fatal(err)
	}
	if after, _ := q.Count(); after != before {
		t.Fatal("a report kept as sent was sent again")
	}
}
