// Package screening keeps principals checked against the denied-party list: a match at
// creation or on a list reload blocks the principal ("pending") until someone reviews it,
// and every hit and every change of a principal is on the record before it is stored.
package screening

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/store"
)

// Threshold is the name similarity (0..1) at which a list entry matches.
const Threshold = 0.92

// Store is what screening reads and writes.
type Store interface {
	ListPrincipals(ctx context.Context) ([]store.Principal, error)
	PutPrincipal(ctx context.Context, p store.Principal) error
}

// Auditor records an event; an error means it was not recorded.
type Auditor interface {
	Audit(ctx context.Context, ev audit.Event) error
}

// Screener screens principals against the list file at List ("" for none).
type Screener struct {
	List  string
	Store Store
	Audit Auditor
	Now   func() time.Time
}

// load reads the list, or nil when none is configured.
func (s *Screener) load() (*policy.ScreeningList, error) {
	if s.List == "" {
		return nil, nil
	}
	f, err := os.Open(s.List)
	if err != nil {
		return nil, fmt.Errorf("screening list: %w", err)
	}
	defer f.Close()
	return policy.ParseScreeningList(f)
}

// check matches a principal's id and organization against l; a hit blocks the principal
// and is recorded.
func (s *Screener) check(ctx context.Context, l *policy.ScreeningList, p *store.Principal) error {
	if l == nil || p.Screening == store.ScreeningPending || p.Screening == store.ScreeningDenied {
		return nil
	}
	var hits []policy.Hit
	for _, name := range []string{p.ID, p.Org} {
		if name != "" {
			hits = append(hits, l.Screen(name, Threshold)...)
		}
	}
	if len(hits) == 0 {
		return nil
	}
	p.Screening = store.ScreeningPending
	return s.Audit.Audit(ctx, audit.Event{Kind: audit.KindScreeningHit, Decision: audit.Deny,
		Reason:  "denied-party list match; blocked pending review",
		Subject: map[string]string{"principal": p.ID},
		Fields:  map[string]string{"match": hits[0].Name, "source": hits[0].Source, "score": fmt.Sprintf("%.3f", hits[0].Score), "hits": fmt.Sprint(len(hits))}})
}

// Put creates or updates a principal: screened (a list that cannot be read refuses it:
// no screening, no principal), recorded, then stored.
func (s *Screener) Put(ctx context.Context, p store.Principal) error {
	if p.Screening == "" {
		p.Screening = store.ScreeningClear
	}
	if !p.Screening.Valid() {
		return fmt.Errorf("screening %q: clear, pending or denied", p.Screening)
	}
	l, err := s.load()
	if err != nil {
		return err
	}
	if err := s.check(ctx, l, &p); err != nil {
		return err
	}
	if p.CreatedAt.IsZero() {
		p.CreatedAt = s.Now().UTC()
	}
	if err := s.Audit.Audit(ctx, audit.Event{Kind: audit.KindPrincipalPut, Decision: audit.Allow,
		Subject: map[string]string{"principal": p.ID},
		Fields:  map[string]string{"tenant": p.Tenant, "roles": fmt.Sprint(p.Roles), "country": p.Country, "screening": string(p.Screening)}}); err != nil {
		return err
	}
	return s.Store.PutPrincipal(ctx, p)
}

// Rescreen checks every principal against the (reloaded) list; it returns those blocked now.
func (s *Screener) Rescreen(ctx context.Context) ([]string, error) {
	l, err := s.load()
	if err != nil || l == nil {
		return nil, err
	}
	ps, err := s.Store.ListPrincipals(ctx)
	if err != nil {
		return nil, err
	}
	var blocked []string
	for _, p := range ps {
		before := p.Screening
		if err := s.check(ctx, l, &p); err != nil {
			return blocked, err
		}
		if p.Screening != before {
			if err := s.Store.PutPrincipal(ctx, p); err != nil {
				return blocked, err
			}
			blocked = append(blocked, p.ID)
		}
	}
	return blocked, nil
}
