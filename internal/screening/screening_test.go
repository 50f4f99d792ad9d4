package screening

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/store"
)

// fakes of our own interfaces: the real store and log are exercised end to end in
// cmd/strongroom/testdata/access.txt.
type principals struct{ m map[string]store.Principal }

func (p *principals) ListPrincipals(context.Context) ([]store.Principal, error) {
	var out []store.Principal
	for _, x := range p.m {
		out = append(out, x)
	}
	return out, nil
}

func (p *principals) PutPrincipal(_ context.Context, x store.Principal) error {
	p.m[x.ID] = x
	return nil
}

type log struct {
	kinds []string
	fail  bool
}

func (l *log) Audit(_ context.Context, ev audit.Event) error {
	if l.fail {
		return errors.New("log down")
	}
	l.kinds = append(l.kinds, string(ev.Kind)+" "+ev.Subject["principal"])
	return nil
}

func screener(t *testing.T, list string) (*Screener, *principals, *log) {
	path := ""
	if list != "" {
		path = filepath.Join(t.TempDir(), "list.csv")
		os.WriteFile(path, []byte(list), 0o600)
	}
	st, l := &principals{m: map[string]store.Principal{}}, &log{}
	return &Screener{List: path, Store: st, Audit: l, Now: func() time.Time { return time.Unix(0, 0) }}, st, l
}

func TestPut(t *testing.T) {
	ctx := context.Background()
	s, st, l := screener(t, "name,aliases,country,source\nRosoboronexport,Rosoboron Export,RU,OFAC SDN\n")
	if err := s.Put(ctx, store.Principal{ID: "alice", Tenant: "t", Org: "Acme"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, store.Principal{ID: "carol", Tenant: "t", Org: "Rosoboron Export"}); err != nil {
		t.Fatal(err)
	}
	if st.m["alice"].Screening != store.ScreeningClear || st.m["carol"].Screening != store.ScreeningPending {
		t.Fatalf("screening: alice %q, carol %q", st.m["alice"].Screening, st.m["carol"].Screening)
	}
	want := []string{"principal.put alice", "principal.screening_hit carol", "principal.put carol"}
	if d := cmp.Diff(want, l.kinds); d != "" {
		t.Fatal(d)
	}
	if err := s.Put(ctx, store.Principal{ID: "dave", Tenant: "t", Screening: "cleared"}); err == nil || !strings.Contains(err.Error(), "clear, pending or denied") {
		t.Fatalf("an unknown screening state: %v", err)
	}
	// Not recorded, not stored.
	l.fail = true
	if err := s.Put(ctx, store.Principal{ID: "erin", Tenant: "t"}); err == nil {
		t.Fatal("a principal was added with the log down")
	}
	if _, ok := st.m["erin"]; ok {
		t.Fatal("a principal not on the record was stored")
	}
	// A list that cannot be read refuses principals (no screening, no principal).
	l.fail = false
	os.Remove(s.List)
	if err := s.Put(ctx, store.Principal{ID: "frank", Tenant: "t"}); err == nil {
		t.Fatal("a principal was added without its screening")
	}
}

func TestRescreen(t *testing.T) {
	ctx := context.Background()
	s, st, l := screener(t, "name,aliases,country,source\n")
	for _, id := range []string{"alice", "ivan-sidorow"} {
		if err := s.Put(ctx, store.Principal{ID: id, Tenant: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(s.List, []byte("name,aliases,country,source\nIvan Sidorow,,RU,EU list\n"), 0o600)
	blocked, err := s.Rescreen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"ivan-sidorow"}, blocked); d != "" {
		t.Fatal(d)
	}
	if st.m["ivan-sidorow"].Screening != store.ScreeningPending || l.kinds[len(l.kinds)-1] != "principal.screening_hit ivan-sidorow" {
		t.Fatalf("after rescreen: %q, %v", st.m["ivan-sidorow"].Screening, l.kinds)
	}
	// Again: nothing new.
	if blocked, _ := s.Rescreen(ctx); len(blocked) != 0 {
		t.Fatalf("blocked twice: %v", blocked)
	}
	// No list configured: nothing to do.
	s.List = ""
	if blocked, err := s.Rescreen(ctx); err != nil || blocked != nil {
		t.Fatal(blocked, err)
	}
}
