package audit

import (
	"crypto/rand"
	"strings"
	"testing"
	"time"

	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/tessera"
	"golang.org/x/mod/sumdb/note"
)

// TestPolicyDigest: one digest for one policy whatever the order it was written in, and
// another for any change of what it requires (a witness's key or URL, a threshold, a
// witness more, a nesting).
func TestPolicyDigest(t *testing.T) {
	w := func(name, url string) tessera.Witness {
		_, vkey, err := note.GenerateKey(rand.Reader, name)
		if err != nil {
			t.Fatal(err)
		}
		v, err := f_note.NewVerifierForCosignatureV1(vkey)
		if err != nil {
			t.Fatal(err)
		}
		return tessera.Witness{Key: v, URL: url}
	}
	a, b, c := w("w.test/a", "https://a.test/add"), w("w.test/b", "https://b.test/add"), w("w.test/c", "https://c.test/add")
	aOtherKey := w("w.test/a", "https://a.test/add")
	aOtherURL := tessera.Witness{Key: a.Key, URL: "https://a.test/other"}
	g := func(n int, cs ...any) *tessera.WitnessGroup {
		x := tessera.WitnessGroup{N: n}
		for _, m := range cs {
			switch m := m.(type) {
			case tessera.Witness:
				x.Components = append(x.Components, m)
			case *tessera.WitnessGroup:
				x.Components = append(x.Components, *m)
			}
		}
		return &x
	}
	base := policyDigest(g(2, a, b, c))
	if got := policyDigest(g(2, c, a, b)); got != base {
		t.Errorf("the same policy written in another order: digest %s, want %s", got, base)
	}
	if got := policyDigest(g(1, g(2, a, b), c)); got != policyDigest(g(1, c, g(2, b, a))) {
		t.Errorf("nested groups in another order differ")
	}
	if policyDigest(nil) != noPolicy {
		t.Errorf("no policy: %q", policyDigest(nil))
	}
	for what, p := range map[string]*tessera.WitnessGroup{
		"another threshold":          g(3, a, b, c),
		"a witness fewer":            g(2, a, b),
		"a witness's other key":      g(2, aOtherKey, b, c),
		"a witness's other URL":      g(2, aOtherURL, b, c),
		"the same witnesses, nested": g(2, g(1, a), b, c),
	} {
		if d := policyDigest(p); d == base || d == noPolicy {
			t.Errorf("%s: digest %s, the same as the base policy's (or none)", what, d)
		}
	}
}

// policyAlert is the start of the ALERT a replica raises while the live replicas run
// different witness policies; policyAgain the WARN once they agree again.
const (
	policyAlert = "ALERT audit log: replicas of this log run different witness policies"
	policyAgain = "the log's replicas run one witness policy again"
)

// requirePolicies fails t unless, within 8 s (a few policyEvery rounds), every replica in
// ls says that the live replicas' witness policies differ (differ), or that they agree.
func requirePolicies(t *testing.T, what string, differ bool, ls ...*Log) {
	t.Helper()
	for i, l := range ls {
		if !a36WaitFor(8*time.Second, func() bool {
			err := l.WitnessPoliciesDiffer()
			return (err != nil) == differ && l.policies.count.Load() > 0
		}) {
			t.Errorf("%s: replica %d: WitnessPoliciesDiffer()=%v after 8 s, policies counted %d; want differ=%v",
				what, i, l.WitnessPoliciesDiffer(), l.policies.count.Load(), differ)
		}
	}
}

// requirePolicyAlerts fails t unless each log holds the policy ALERT exactly once.
func requirePolicyAlerts(t *testing.T, what string, bufs ...*syncBuffer) {
	t.Helper()
	for i, b := range bufs {
		if n := strings.Count(b.String(), policyAlert); n != 1 {
			t.Errorf("%s: replica %d raised the different-policies ALERT %d times, want once; log tail:\n%s", what, i, n, a41Tail(b, 5))
		}
	}
}
