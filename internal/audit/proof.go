package audit

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/strongroom/strongroom/internal/store"
)

// ProvenEntry is one log entry with its inclusion proof against a signed checkpoint.
type ProvenEntry struct {
	Index    uint64          `json:"index"`
	Event    json.RawMessage `json:"event"`
	TreeSize uint64          `json:"tree_size"`
	Root     []byte          `json:"root"`
	Proof    []string        `json:"proof"`
	// Record, for a request record (an index with bit 62 set, see RecordIndex): the
	// record and its RFC 6962 inclusion proof in the batch the entry above commits to.
	Record *ProvenRecord `json:"record,omitempty"`
}

// ProvenRecord is a request record with its inclusion proof in its batch.
type ProvenRecord struct {
	Index     uint64          `json:"index"`
	Event     json.RawMessage `json:"event"`
	Position  int             `json:"position"`
	Records   int             `json:"records"`
	BatchRoot string          `json:"batch_root"`
	Proof     []string        `json:"proof"`
}

// ReadEntry reads entry index of a log whose checkpoint has the given size.
func ReadEntry(ctx context.Context, f Fetcher, index, size uint64) ([]byte, error) {
	if index >= size {
		return nil, fmt.Errorf("entry %d is not in the signed checkpoint (size %d)", index, size)
	}
	// The bundle is read at the checkpoint's size: a partial bundle exists only for the
	// sizes the log was integrated at, so one at index+1 may never have existed.
	var entry []byte
	err := ReadEntries(ctx, f.ReadEntryBundle, index, size, func(evs []store.AuditEvent) error {
		if len(evs) == 0 || evs[0].Index != index {
			return securityf("entry %d missing from its bundle", index)
		}
		entry = evs[0].Raw
		return errFound
	})
	if errors.Is(err, errFound) {
		err = nil
	}
	return entry, err
}

var errFound = errors.New("found")

// Prove reads entry index (or request record index) and proves it against the checkpoint
// (size, root); every proof made is checked before it is returned.
func Prove(ctx context.Context, f Fetcher, o VerifyOptions, size uint64, root []byte, index uint64) (ProvenEntry, error) {
	entryIndex, pos, isRecord := SplitRecordIndex(index)
	entry, err := ReadEntry(ctx, f, entryIndex, size)
	if err != nil {
		return ProvenEntry{}, err
	}
	pe, err := ProveEntry(ctx, f, size, root, entryIndex, entry)
	if err != nil || !isRecord {
		return pe, err
	}
	pe.Record, err = ProveRecord(ctx, o, entry, index, pos)
	return pe, err
}

// ProveEntry proves that entry is at index in the tree (size, root).
func ProveEntry(ctx context.Context, f Fetcher, size uint64, root []byte, index uint64, entry []byte) (ProvenEntry, error) {
	p, err := InclusionProof(ctx, f, index, size)
	if err != nil {
		return ProvenEntry{}, err
	}
	if err := VerifyInclusion(entry, index, size, p, root); err != nil {
		return ProvenEntry{}, err
	}
	return ProvenEntry{Index: index, Event: entry, TreeSize: size, Root: root, Proof: EncodeProof(p)}, nil
}

// ProveRecord proves record pos of the batch entry: the bundle is checked against the
// entry, then the record's inclusion proof is made and checked against the batch root.
func ProveRecord(ctx context.Context, o VerifyOptions, entry []byte, index uint64, pos int) (*ProvenRecord, error) {
	ev, err := ParseEvent(entry)
	if err != nil || ev.Kind != KindBatch {
		return nil, fmt.Errorf("record %d: entry is not a batch of request records", index)
	}
	recs, err := BatchRecords(ctx, o, ev)
	if err != nil {
		return nil, err
	}
	p, err := BatchInclusion(recs, pos)
	if err != nil {
		return nil, fmt.Errorf("record %d: %w", index, err)
	}
	root, _ := hex.DecodeString(ev.Fields["root"])
	if err := VerifyRecord(recs[pos], uint64(pos), uint64(len(recs)), p, root); err != nil {
		return nil, err
	}
	return &ProvenRecord{Index: index, Event: recs[pos], Position: pos, Records: len(recs), BatchRoot: ev.Fields["root"], Proof: EncodeProof(p)}, nil
}

// BatchRecords reads a batch entry's bundle and returns its records, checked against
// the entry.
func BatchRecords(ctx context.Context, o VerifyOptions, ev *Event) ([][]byte, error) {
	if o.Bundles == nil {
		return nil, errors.New("no way to read request batches' bundles")
	}
	b, err := o.Bundles(ctx, ev.Subject["bundle"])
	if err != nil {
		return nil, err
	}
	return CheckBatch(ev, b)
}
