package limits

import (
	"context"
	"testing"
	"time"
)

// TestAdmitAllocations: an admission and its release cost two allocations (the admission
// and its release func), whatever the number of scopes up to four — not a slice of
// states, a sync.Once, a closure and a formatted day each (4 before the twentieth session).
func TestAdmitAllocations(t *testing.T) {
	l := NewLocal(time.Now)
	sc := []Scope{{Name: "key:a", Limits: Limits{RPM: 1e9, TPM: 1e12}}, {Name: "tenant:t", Limits: Limits{RPM: 1e9}}}
	n := testing.AllocsPerRun(1000, func() {
		release, d, err := l.Admit(context.Background(), sc, 10)
		if d != nil || err != nil {
			t.Fatal(d, err)
		}
		release(5)
	})
	if n > 2 {
		t.Fatalf("%v allocations an admission, want at most 2", n)
	}
}
