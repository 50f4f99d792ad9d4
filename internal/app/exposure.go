package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/limits"
	"github.com/strongroom/strongroom/internal/store"
)

// Every key Strongroom derives from the audit key is HMAC-SHA256(audit key, label), and
// before the forty-sixth session the records' digests were HMAC-SHA256(audit key, value)
// of values clients choose: a prompt or a watermark question equal to a label put that
// label's key in the public log, as its prompt_hmac or text_hmac (outside round 63).
// DerivedKeyExposure looks for exactly that: any derived key, as a digest, in any entry or
// request record of this log.

// derivedKeyLabels names the keys derived from the audit key, by what they protect.
var derivedKeyLabels = map[string]string{
	"strongroom/log-entry/v1":       "the shared log's entry MACs",
	"strongroom/request-journal/v2": "the request journal's MACs",
	"strongroom/detect-bus/v1":      "the detection bus's seal",
	limits.NamesLabel:               "the shared limiter's scope names",
	revocationLabel:                 "the key-revocation announcements' seal",
	audit.DigestLabel:               "the records' digests (since the forty-sixth session)",
}

// Exposure is a derived key found as a digest in the log.
type Exposure struct {
	Key    string `json:"key"`    // what the key protects
	Entry  uint64 `json:"entry"`  // the log entry that holds it (a batch entry for a request record)
	Record int    `json:"record"` // the request record's position in that batch; -1: the entry itself
}

// DerivedKeyExposure scans every entry of the log, and every request record of its batch
// entries, for a digest that is one of the audit key's derived keys.
func (a *App) DerivedKeyExposure(ctx context.Context) ([]Exposure, uint64, error) {
	hk, err := os.ReadFile(a.Config.Audit.HMACKey)
	if err != nil {
		return nil, 0, fmt.Errorf("audit HMAC key: %w", err)
	}
	defer clear(hk)
	digests := map[string]string{}
	for label, what := range derivedKeyLabels {
		k := audit.DeriveKey(hk, label)
		digests[hex.EncodeToString(k)] = what
		clear(k)
	}
	find := func(raw []byte, at uint64, rec int, out *[]Exposure) {
		s := string(raw)
		for {
			i := strings.Index(s, "hmac-sha256:")
			if i < 0 {
				return
			}
			s = s[i+len("hmac-sha256:"):]
			if len(s) >= 2*sha256.Size {
				if what, ok := digests[s[:2*sha256.Size]]; ok {
					*out = append(*out, Exposure{Key: what, Entry: at, Record: rec})
				}
			}
		}
	}
	size, err := a.AuditLog.IntegratedSize(ctx)
	if err != nil {
		return nil, 0, err
	}
	o := audit.VerifyOptions{Bundles: a.AuditLog.Bundles().Bundle}
	var found []Exposure
	err = audit.ReadEntries(ctx, a.AuditLog.Reader().ReadEntryBundle, 0, size, func(evs []store.AuditEvent) error {
		for _, x := range evs {
			find(x.Raw, x.Index, -1, &found)
			if x.Kind != string(audit.KindBatch) {
				continue
			}
			ev, err := audit.ParseEvent(x.Raw)
			if err != nil {
				return fmt.Errorf("entry %d: %w", x.Index, err)
			}
			recs, err := audit.BatchRecords(ctx, o, ev)
			if err != nil {
				return fmt.Errorf("entry %d's batch: %w", x.Index, err)
			}
			for i, r := range recs {
				find(r, x.Index, i, &found)
			}
		}
		return nil
	})
	return found, size, err
}
