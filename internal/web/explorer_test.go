package web_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/store"
	"golang.org/x/mod/sumdb/note"
)

var hexDecode = hex.DecodeString

// TestAuditExplorer: search by principal and kind, pages newest first by index, and the
// export of every match as JSON lines (itself recorded).
func TestAuditExplorer(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	for i := range 120 {
		who := "alice"
		if i%2 == 1 {
			who = "bob"
		}
		if err := h.e.App.Audit(audit.WithActor(ctx, map[string]string{"principal": who}), audit.Event{Kind: "test.event", Decision: audit.Allow, Reason: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	h.events(t, store.AuditQuery{})
	b := h.browser(t)
	b.signIn(h.admin)
	var seen []string
	next := "/console/audit?principal=alice&kind=test.event"
	for next != "" {
		res, body := b.get(next)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s", next, res.Status)
		}
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "<tr><td>") && strings.Contains(line, "test.event") {
				seen = append(seen, line)
			}
		}
		next = ""
		if i := strings.Index(body, `id="next"`); i >= 0 {
			j := strings.LastIndex(body[:i], `href="`)
			next = strings.ReplaceAll(body[j+6:i-2], "&amp;", "&")
		}
	}
	if len(seen) != 60 {
		t.Fatalf("alice's events over the pages: %d, want 60", len(seen))
	}
	res, body := b.get("/console/audit/export?kind=test.event")
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("export: %s %s", res.Status, res.Header.Get("Content-Type"))
	}
	n := 0
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		var l struct {
			Index uint64      `json:"index"`
			Event audit.Event `json:"event"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil || l.Event.Kind != "test.event" {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		n++
	}
	if n != 120 {
		t.Fatalf("exported %d, want 120", n)
	}
	if evs := h.events(t, store.AuditQuery{Kind: "console.audit_export"}); len(evs) != 1 || evs[0].Principal != h.admin.ID {
		t.Fatalf("export not recorded: %+v", evs)
	}
}

// TestProofEndpoint: what the browser is given proves the entry (and a request record in
// its batch) in a checkpoint signed by the log key. The browser's own check of the same
// answer runs in the Chromium test.
func TestProofEndpoint(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	idx, err := h.e.App.AuditLog.Record(ctx, audit.Event{V: 1, TS: time.Now(), Kind: "detect.alert", Decision: audit.Deny, Actor: map[string]string{"principal": "p"}})
	if err != nil {
		t.Fatal(err)
	}
	rec := h.e.App.RequestRecords().Submit(ctx, audit.Event{V: 1, TS: time.Now(), Kind: "gateway.request", Decision: audit.Allow, Actor: map[string]string{"principal": "p"}})
	if _, err := rec(); err != nil {
		t.Fatal(err)
	}
	reqs := h.events(t, store.AuditQuery{Kind: "gateway.request"})
	if len(reqs) != 1 {
		t.Fatalf("request records indexed: %d", len(reqs))
	}
	v, _, _ := h.e.App.LogVerifier()
	b := h.browser(t)
	b.signIn(h.admin)
	for _, i := range []uint64{idx, reqs[0].Index} {
		var p struct {
			Checkpoint string   `json:"checkpoint"`
			Index      uint64   `json:"index"`
			TreeSize   uint64   `json:"tree_size"`
			Entry      []byte   `json:"entry"`
			Proof      []string `json:"proof"`
			Record     []byte   `json:"record"`
			Position   int      `json:"position"`
			Records    int      `json:"records"`
			RecProof   []string `json:"record_proof"`
		}
		// The checkpoint may not cover a fresh entry yet: ask until it does.
		deadline := time.Now().Add(10 * time.Second)
		for {
			res, body := b.get("/console/proof?index=" + strconv.FormatUint(i, 10))
			if res.StatusCode == http.StatusOK {
				if err := json.Unmarshal([]byte(body), &p); err != nil {
					t.Fatal(err)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("proof of %d: %s %s", i, res.Status, body)
			}
			time.Sleep(100 * time.Millisecond)
		}
		cp, err := audit.OpenCheckpoint([]byte(p.Checkpoint), audit.VerifyOptions{LogKey: v})
		if err != nil || cp.Size != p.TreeSize {
			t.Fatalf("checkpoint: %v (size %d vs %d)", err, cp.Size, p.TreeSize)
		}
		if _, err := note.Open([]byte(p.Checkpoint), note.VerifierList(v)); err != nil {
			t.Fatal(err)
		}
		if err := audit.VerifyInclusion(p.Entry, p.Index, p.TreeSize, decode(t, p.Proof), cp.Hash); err != nil {
			t.Fatalf("entry %d: %v", p.Index, err)
		}
		if i == reqs[0].Index {
			ev, _ := audit.ParseEvent(p.Entry)
			root, _ := hexDecode(ev.Fields["root"])
			if err := audit.VerifyRecord(p.Record, uint64(p.Position), uint64(p.Records), decode(t, p.RecProof), root); err != nil || p.Records == 0 {
				t.Fatalf("record: %v", err)
			}
		}
	}
}

func decode(t *testing.T, ss []string) [][]byte {
	var out [][]byte
	for _, s := range ss {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}
