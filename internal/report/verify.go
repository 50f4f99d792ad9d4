package report

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/strongroom/strongroom/internal/audit"

	jsonv2 "github.com/go-json-experiment/json"
)

// ErrMismatch is a report whose figures differ from those the log gives.
var ErrMismatch = fmt.Errorf("%w: report does not match the log", audit.ErrSecurity)

// Verify recomputes a compliance report from the log (see the package doc): nil means the
// report's checkpoint is signed by the log (and its witnesses, as src.Opts asks), the log
// still holds the entries it commits to, and every figure is what those entries give.
func Verify(ctx context.Context, src Source, r *ComplianceReport) error {
	if r.Format != ComplianceFormat {
		return fmt.Errorf("not a %s report (format %q)", ComplianceFormat, r.Format)
	}
	ref, _, err := src.open([]byte(r.Log.Checkpoint))
	if err != nil {
		return err
	}
	if ref.Size != r.Log.Size || !bytes.Equal(ref.Root, r.Log.Root) || ref.Origin != r.Log.Origin {
		return fmt.Errorf("%w: the report's log size, root or origin differ from its signed checkpoint", ErrMismatch)
	}
	cur, _, err := src.Checkpoint(ctx)
	if err != nil {
		return err
	}
	f, err := figures(ctx, src, ref, cur.Size, r.Period)
	if err != nil {
		return err
	}
	if err := sameJSON("figures", *f, r.Figures); err != nil {
		return err
	}
	return nil
}

// sameJSON compares two values by their canonical JSON; the error names the first
// differing field of a struct.
func sameJSON(what string, want, got any) error {
	wb, _ := json.Marshal(want)
	gb, _ := json.Marshal(got)
	if bytes.Equal(wb, gb) {
		return nil
	}
	var wm, gm map[string]json.RawMessage
	if json.Unmarshal(wb, &wm) == nil && json.Unmarshal(gb, &gm) == nil {
		for k, v := range wm {
			if !bytes.Equal(v, gm[k]) {
				return fmt.Errorf("%w: %s.%s: the log gives %s, the report says %s", ErrMismatch, what, k, clip(v), clip(gm[k]))
			}
		}
	}
	return fmt.Errorf("%w: %s differ", ErrMismatch, what)
}

func clip(b []byte) string {
	if len(b) > 120 {
		return string(b[:120]) + "…"
	}
	return string(b)
}

// ParseCompliance reads a JSON compliance report strictly: unknown members, duplicate
// names and invalid UTF-8 are refused, so that the figures verified are the ones any other
// JSON reader of the file sees (a duplicate key could show a person one number and the
// verifier another).
func ParseCompliance(b []byte) (*ComplianceReport, error) {
	var r ComplianceReport
	if err := jsonv2.Unmarshal(b, &r, jsonv2.RejectUnknownMembers(true)); err != nil {
		return nil, err
	}
	return &r, nil
}
