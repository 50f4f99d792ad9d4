package report

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
)

// Source is a log as an outsider reads it: its public resources and whom to trust.
type Source struct {
	Fetch audit.Fetcher
	Opts  audit.VerifyOptions
}

// Entry is one event read from the log: an entry, or a request record inside a batch.
type Entry struct {
	Index uint64 // log index, or audit.RecordIndex(entry, position) for a record
	Event *audit.Event
}

// LogRef names the signed checkpoint a report was computed at.
type LogRef struct {
	Origin     string `json:"origin"`
	Size       uint64 `json:"size"`
	Root       []byte `json:"root"`
	Checkpoint string `json:"checkpoint"`
}

// Checkpoint reads and checks the log's current checkpoint.
func (s Source) Checkpoint(ctx context.Context) (LogRef, *log.Checkpoint, error) {
	raw, err := s.Fetch.ReadCheckpoint(ctx)
	if err != nil {
		return LogRef{}, nil, fmt.Errorf("log checkpoint: %w", err)
	}
	return s.open(raw)
}

func (s Source) open(raw []byte) (LogRef, *log.Checkpoint, error) {
	cp, err := audit.OpenCheckpoint(raw, s.Opts)
	if err != nil {
		return LogRef{}, nil, err
	}
	return LogRef{Origin: cp.Origin, Size: cp.Size, Root: cp.Hash, Checkpoint: string(raw)}, cp, nil
}

var errStop = errors.New("stop")

// Walk passes every event of entries [0, ref.Size) to fn in log order (a batch's records
// right after the batch entry), and then checks that those entries hash to ref.Root: an
// error wrapping audit.ErrSecurity means the log does not hold what the checkpoint
// commits to, and whatever fn computed must be thrown away. geometry is the size of a
// checkpoint at least as large as ref's, whose entry bundles are read (a log keeps full
// bundles; the partial ones of an old size may be gone).
func (s Source) Walk(ctx context.Context, ref LogRef, geometry uint64, fn func(Entry) error) error {
	if geometry < ref.Size {
		return fmt.Errorf("%w: the log (size %d) is smaller than the checkpoint (size %d): rolled back", audit.ErrSecurity, geometry, ref.Size)
	}
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	tree := rf.NewEmptyRange(0)
	next := uint64(0)
	err := audit.ReadEntries(ctx, s.Fetch.ReadEntryBundle, 0, geometry, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			if e.Index >= ref.Size {
				return errStop
			}
			if e.Index != next {
				return fmt.Errorf("%w: entry %d read where %d was expected", audit.ErrSecurity, e.Index, next)
			}
			next++
			if err := tree.Append(rfc6962.DefaultHasher.HashLeaf(e.Raw), nil); err != nil {
				return err
			}
			ev, err := audit.ParseEvent(e.Raw)
			if err != nil {
				return fmt.Errorf("%w: entry %d: %v", audit.ErrSecurity, e.Index, err)
			}
			if err := fn(Entry{Index: e.Index, Event: ev}); err != nil {
				return err
			}
			if ev.Kind != audit.KindBatch {
				continue
			}
			recs, err := audit.BatchRecords(ctx, s.Opts, ev)
			if err != nil {
				return fmt.Errorf("entry %d: %w", e.Index, err)
			}
			for pos, r := range recs {
				rev, err := audit.ParseEvent(r)
				if err != nil {
					return fmt.Errorf("%w: record %d of entry %d: %v", audit.ErrSecurity, pos, e.Index, err)
				}
				if err := fn(Entry{Index: audit.RecordIndex(e.Index, pos), Event: rev}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return err
	}
	if next != ref.Size {
		return fmt.Errorf("%w: read %d entries of %d", audit.ErrSecurity, next, ref.Size)
	}
	root, err := tree.GetRootHash(nil)
	if err != nil {
		return err
	}
	if ref.Size == 0 {
		root = rfc6962.DefaultHasher.EmptyRoot()
	}
	if !bytes.Equal(root, ref.Root) {
		return fmt.Errorf("%w: the log's first %d entries do not hash to the checkpoint's root", audit.ErrSecurity, ref.Size)
	}
	return nil
}
