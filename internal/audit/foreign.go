package audit

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/strongroom/strongroom/internal/store"
)

// Foreign entries: the incident workflow after someone wrote to the shared log's database.
//
// An entry without a replica's MAC (entrymac.go) stops the signer: no checkpoint covers it
// or anything after it, and the fleet's records stop being provable to outsiders. The
// entry cannot be taken out — the log is append-only, and its tree is what every verifier
// recomputes. What an operator who has looked at it can do is say so in the log itself:
// `strongroom audit acknowledge --entry N` appends an entry of kind KindForeignEntry,
// sealed like any other, naming N and the leaf hash of N's bytes. The signer then signs a
// tree holding N only if a sealed acknowledgement of N, with that hash, comes after it in
// the same tree; a verifier that holds the key (`audit verify --hmac-key`) reports N as
// foreign and acknowledged, and fails on any foreign entry that is not. Readers of the log
// see the forged entry and, after it, the fleet's word that it is forged.

var foreignKind = []byte(`"kind":"` + KindForeignEntry + `"`)

// ForeignEntryEvent is the acknowledgement that entry index, whose bytes are entry, was
// not written by a replica.
func ForeignEntryEvent(index uint64, entry []byte, reason string) Event {
	h := rfc6962.DefaultHasher.HashLeaf(entry)
	return Event{V: 1, TS: time.Now().UTC(), Kind: KindForeignEntry, Decision: Allow, Reason: reason,
		Subject: map[string]string{"entry": strconv.FormatUint(index, 10), "leaf_hash": hex.EncodeToString(h)}}
}

// ErrNotForeign: the entry to acknowledge carries a valid MAC; a replica wrote it.
var ErrNotForeign = errors.New("the entry carries a valid entry MAC (a replica wrote it): nothing to acknowledge")

// ForeignEntry reads entry index from the log and returns the event acknowledging it as
// foreign, for the caller to record (with its actor). It refuses an entry a replica wrote,
// one past the log's end, and a log opened without the entry key.
func (l *Log) ForeignEntry(ctx context.Context, index uint64, reason string) (Event, error) {
	if l.entryKey == nil {
		return Event{}, errors.New("audit: the log was opened without the entry key")
	}
	size, err := l.reader.IntegratedSize(ctx)
	if err != nil {
		return Event{}, err
	}
	if index >= size {
		return Event{}, fmt.Errorf("audit: entry %d: the log holds %d entries", index, size)
	}
	var raw []byte
	err = ReadEntries(ctx, l.reader.ReadEntryBundle, index, index+1, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			if e.Index == index {
				raw = bytes.Clone(e.Raw)
			}
		}
		return nil
	})
	if err != nil {
		return Event{}, err
	}
	if raw == nil {
		return Event{}, fmt.Errorf("audit: entry %d not found in its bundle", index)
	}
	if checkEntry(l.entryKey, l.origin, raw) == nil {
		return Event{}, fmt.Errorf("audit: entry %d: %w", index, ErrNotForeign)
	}
	return ForeignEntryEvent(index, raw, reason), nil
}

// sealCheck checks the entry MACs of consecutive entries and tracks foreign ones and their
// acknowledgements (both the signer and Verify use it).
type sealCheck struct {
	key    []byte
	origin string
	legacy bool // entries without a "mac" member are from before entry MACs while no sealed one came yet

	sealed  bool              // a sealed entry was seen
	old     uint64            // unsealed entries before the first sealed one (legacy)
	foreign map[uint64][]byte // index → leaf hash of entries without a valid MAC
	acks    map[uint64][][]byte
}

// add checks entry index (its bytes raw).
func (c *sealCheck) add(index uint64, raw []byte) {
	if err := checkEntry(c.key, c.origin, raw); err != nil {
		if c.legacy && !c.sealed && !bytes.Contains(raw, []byte(`"mac":`)) {
			c.old++
			return
		}
		if c.foreign == nil {
			c.foreign = map[uint64][]byte{}
		}
		c.foreign[index] = rfc6962.DefaultHasher.HashLeaf(raw)
		return
	}
	c.sealed = true
	if !bytes.Contains(raw, foreignKind) {
		return
	}
	ev, err := ParseEvent(raw)
	if err != nil || ev.Kind != KindForeignEntry {
		return
	}
	n, err := strconv.ParseUint(ev.Subject["entry"], 10, 64)
	h, herr := hex.DecodeString(ev.Subject["leaf_hash"])
	if err != nil || herr != nil || n >= index {
		return // an acknowledgement names an entry before it
	}
	if c.acks == nil {
		c.acks = map[uint64][][]byte{}
	}
	c.acks[n] = append(c.acks[n], h)
}

// unacknowledged returns the first foreign entry without a later acknowledgement of its
// bytes, as an error (nil if there is none), and the acknowledged ones, in order.
func (c *sealCheck) unacknowledged() (acked []uint64, err error) {
	for i := range c.foreign {
		acked = append(acked, i)
	}
	slices.Sort(acked)
	for _, i := range acked {
		ok := false
		for _, h := range c.acks[i] {
			if subtle.ConstantTimeCompare(h, c.foreign[i]) == 1 {
				ok = true
			}
		}
		if !ok {
			return nil, securityf("entry %d: %v", i, ErrEntryMAC)
		}
	}
	return acked, nil
}
