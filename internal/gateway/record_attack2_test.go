package gateway

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/store"
)

// checkRecord is mustParseRecord without the panic.
func checkRecord(t *testing.T, what string, rec store.AuditEvent) {
	t.Helper()
	if _, err := parseRecord(rec); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

// TestAttackRecordIndexFieldsWhenTruncated: a request record over audit.MaxEventSize is
// truncated (every value cut to 1 KiB); the index fields the gateway hands with it must
// still be those the truncated bytes carry — also when the principal's name is itself
// longer than 1 KiB (a long name, or one full of invalid UTF-8), with a huge reason (an
// engine's error message) or a huge principal, tenant or model name pushing it over.
func TestAttackRecordIndexFieldsWhenTruncated(t *testing.T) {
	red, err := audit.NewRedactor(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 7, 30, 0, 123456789, time.UTC)
	g := &Gateway{cfg: Config{Redactor: red, Now: func() time.Time { return now }}}
	cases := []struct {
		name, principal, tenant, model, reason string
	}{
		{"long principal, huge reason", strings.Repeat("p", 2000), "acme", "demo", strings.Repeat("r", audit.MaxEventSize)},
		{"huge principal", strings.Repeat("p", audit.MaxEventSize+10), "acme", "demo", "ok"},
		{"invalid utf8 principal, huge tenant", strings.Repeat("\xff", 1500), strings.Repeat("t", audit.MaxEventSize), "demo", ""},
		{"U+2028 principal, huge model", strings.Repeat("\u2028", 600), "acme", strings.Repeat("m", audit.MaxEventSize), ""},
		{"short principal, huge reason", "alice", "acme", "demo", strings.Repeat("\x01", audit.MaxEventSize)},
	}
	for _, c := range cases {
		for _, decision := range []string{audit.Allow, audit.Deny} {
			st := &reqState{start: now.Add(-time.Second), endpoint: "chat", country: "US", decision: decision, reason: c.reason, status: 200,
				p:     &authn.Principal{Principal: store.Principal{ID: c.principal, Tenant: c.tenant}, KeyID: "k1"},
				route: &Route{Model: c.model}, rec: modelrec.Record{Version: "1"}}
			for _, kind := range []audit.Kind{audit.KindRequest, audit.KindStreamStart} {
				checkRecord(t, c.name+"/"+decision+"/"+string(kind), g.requestRecord(st, kind))
			}
		}
	}
}
