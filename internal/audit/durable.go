package audit

import (
	"cmp"
	"context"
	"slices"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/tessera"
)

// Appended entries stay in the log. Someone with write access to a shared log's database
// can rewrite its unsigned tail consistently — bundles, tiles and tree state agreeing,
// every remaining entry a replica's — leaving out an entry a replica appended and reported
// durable: the signer checks that the tree extends the signed one and that every entry is
// a replica's, not that every replica's entry is there (an outside test did this, with the
// Checkpoint row held so that nothing was signed meanwhile). So each replica keeps the
// entries it appended until a checkpoint it trusts covers them, then looks for them among
// the signed entries; one that is not there raises an ALERT and is appended again, from
// the bytes it kept (same bytes: its MAC, its meaning). Its index is then another than its
// caller was told; what the caller acknowledged is in the log.

// maxMine bounds the entries a replica keeps for the check (a signer refusing for long
// lets them pile up): past it, new ones are not checked, with a warning.
const maxMine = 1 << 17

type mineEntry struct {
	index uint64
	raw   []byte
	// after: the tree this replica trusted when it appended the entry. Nothing below it is
	// ever rewritten; above it a repair may move the entry (to a lower index, too).
	after uint64
}

// rememberMine keeps an entry this process appended to a shared log, for checkMine.
func (l *Log) rememberMine(index uint64, raw []byte) {
	if l.db == nil || l.signer == nil {
		return
	}
	l.mineMu.Lock()
	defer l.mineMu.Unlock()
	if len(l.mine) >= maxMine {
		if !l.mineFull {
			l.log.Warn("audit log: too many of this replica's entries wait for a checkpoint; those past the bound are not checked to stay in the log", "bound", maxMine)
		}
		l.mineFull = true
		return
	}
	after, _ := l.signer.trusted()
	// The future that gives the index may be read after a checkpoint covered the entry:
	// what it was appended above is then its index, at most.
	l.mine = append(l.mine, mineEntry{index, raw, min(after, index)})
}

// checkMine looks for the entries this replica appended that a checkpoint it trusts now
// covers among the signed entries above the trees it trusted when it appended them (a
// repair moves entries, never below those), and appends again, with an ALERT, any that is
// not there.
func (l *Log) checkMine(ctx context.Context) {
	if l.db == nil || l.signer == nil {
		return
	}
	signed, _ := l.signer.trusted()
	l.mineMu.Lock()
	var due, rest []mineEntry
	for _, m := range l.mine {
		if m.index < signed {
			due = append(due, m)
		} else {
			rest = append(rest, m)
		}
	}
	l.mineMu.Unlock()
	if len(due) == 0 {
		return
	}
	from := slices.MinFunc(due, func(a, b mineEntry) int { return cmp.Compare(a.after, b.after) }).after
	present := map[[32]byte]bool{}
	if err := ReadEntries(ctx, l.reader.ReadEntryBundle, from, signed, func(batch []store.AuditEvent) error {
		for _, e := range batch {
			present[store.EntryDigest(e.Raw)] = true
		}
		return nil
	}); err != nil {
		return // read again at the next round; the entries stay due
	}
	var again []mineEntry
	for _, m := range due {
		if present[store.EntryDigest(m.raw)] {
			continue
		}
		l.log.Error("ALERT audit log: an entry this replica appended is not in the signed log (its unsigned tail was rewritten through the database); it is appended again",
			"entry", m.index, "signed_size", signed)
		again = append(again, m)
	}
	l.mineMu.Lock()
	l.mine = append(rest, l.mine[len(due)+len(rest):]...)
	l.mineFull = false
	l.mineMu.Unlock()
	for _, m := range again {
		idx, err := l.add(ctx, tessera.NewEntry(m.raw))()
		if err != nil {
			l.log.Error("ALERT audit log: an entry this replica appended could not be appended again", "entry", m.index, "err", err)
			l.rememberMine(m.index, m.raw) // due again next round
			continue
		}
		l.rememberMine(idx.Index, m.raw)
	}
}
