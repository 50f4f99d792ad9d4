package app

import (
	"context"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/limits"
)

// TestDerivedKeyExposure: a derived key recorded as a digest — in an entry (a watermark
// question's text_hmac) or in a request record of a batch (a prompt_hmac), as versions
// before the forty-sixth session recorded a client's text equal to a label — is found and
// named; digests of other values are not taken for one.
func TestDerivedKeyExposure(t *testing.T) {
	ctx := context.Background()
	a, _ := initApp(t, ctx, nil)
	hk, err := os.ReadFile(a.Config.Audit.HMACKey)
	if err != nil {
		t.Fatal(err)
	}
	digestOf := func(label string) string { return "hmac-sha256:" + hex.EncodeToString(audit.DeriveKey(hk, label)) }
	clean := func() {
		t.Helper()
		found, _, err := a.DerivedKeyExposure(ctx)
		if err != nil || len(found) != 0 {
			t.Fatalf("a log without a derived key: %v %v", found, err)
		}
	}
	// Digests of ordinary values, and of the labels as this version makes them.
	if err := a.Audit(ctx, audit.Event{Kind: "watermark.detect", Decision: audit.Allow,
		Fields: map[string]string{"text_hmac": a.Redactor.Digest(revocationLabel), "other": a.Redactor.Digest("hello")}}); err != nil {
		t.Fatal(err)
	}
	clean()

	if err := a.Audit(ctx, audit.Event{Kind: "watermark.detect", Decision: audit.Allow,
		Fields: map[string]string{"text_hmac": digestOf(revocationLabel)}}); err != nil {
		t.Fatal(err)
	}
	b := a.RequestRecords()
	ev := audit.Event{V: 1, TS: time.Now(), Kind: audit.KindRequest, Decision: audit.Allow,
		Actor: map[string]string{"principal": "p"}, Subject: map[string]string{"model": "m"},
		Fields: map[string]string{"prompt_hmac": digestOf(limits.NamesLabel)}}
	if _, err := b.Submit(ctx, ev)(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	found, size, err := a.DerivedKeyExposure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var inEntry, inRecord bool
	for _, e := range found {
		inEntry = inEntry || (e.Record < 0 && e.Key == derivedKeyLabels[revocationLabel])
		inRecord = inRecord || (e.Record >= 0 && e.Key == derivedKeyLabels[limits.NamesLabel])
	}
	if !inEntry || !inRecord || len(found) != 2 {
		t.Fatalf("found %+v in %d entries; want the revocation key in an entry and the limiter's in a request record", found, size)
	}
}
