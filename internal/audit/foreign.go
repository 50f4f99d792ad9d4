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
	"github.com/transparency-dev/tessera/api"
	"github.com/transparency-dev/tessera/api/layout"
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
// foreign, for the caller to record (with its actor). It refuses: a log opened without the
// entry key; an index past the log's end; an entry a signed checkpoint of this replica's
// already covers (the signer checked its MAC before signing it: bytes that differ now were
// altered after, which the scrubber reports, and acknowledging them would put a false
// statement in the log); bytes that are not what the log's tree holds at that index (an
// entry bundle rewritten after the append: acknowledging them could not clear the signer,
// DESIGN.md says what can); and an entry a replica wrote.
func (l *Log) ForeignEntry(ctx context.Context, index uint64, reason string) (Event, error) {
	if l.entryKey == nil {
		return Event{}, errors.New("audit: the log was opened without the entry key")
	}
	if l.signer != nil {
		if signed, _ := l.signer.trusted(); index < signed {
			return Event{}, fmt.Errorf("audit: entry %d is covered by a checkpoint signed of size %d; its MAC was checked before signing: %w", index, signed, ErrNotForeign)
		}
	}
	size, err := l.reader.IntegratedSize(ctx)
	if err != nil {
		return Event{}, err
	}
	if index >= size {
		return Event{}, fmt.Errorf("audit: entry %d: the log holds %d entries", index, size)
	}
	raw, err := ReadEntry(ctx, l.reader, index, size)
	if err != nil {
		return Event{}, err
	}
	if err := leafInTiles(ctx, l.reader, index, size, raw); err != nil {
		return Event{}, err
	}
	if checkEntry(l.entryKey, l.origin, raw) == nil {
		return Event{}, fmt.Errorf("audit: entry %d: %w", index, ErrNotForeign)
	}
	return ForeignEntryEvent(index, raw, reason), nil
}

// leafInTiles checks that entry's leaf hash is the one the log's level-0 tile holds at
// index (in the tree of the given size).
func leafInTiles(ctx context.Context, f Fetcher, index, size uint64, entry []byte) error {
	tileIdx := index / layout.TileWidth
	raw, err := f.ReadTile(ctx, 0, tileIdx, layout.PartialTileSize(0, tileIdx, size))
	if err != nil {
		return fmt.Errorf("audit: entry %d: tile 0/%d: %w", index, tileIdx, err)
	}
	var t api.HashTile
	if err := t.UnmarshalText(raw); err != nil {
		return securityf("entry %d: tile 0/%d malformed: %v", index, tileIdx, err)
	}
	pos := index % layout.TileWidth
	if uint64(len(t.Nodes)) <= pos || !bytes.Equal(t.Nodes[pos], rfc6962.DefaultHasher.HashLeaf(entry)) {
		return securityf("entry %d: the bytes its bundle holds are not the leaf the log's tree holds at that index (the bundle was rewritten after the append); an acknowledgement of them cannot clear the signer: the database must be repaired (strongroom audit repair --entry %d)", index, index)
	}
	return nil
}

// sealCheck checks the entry MACs of consecutive entries and tracks foreign ones and their
// acknowledgements (both the signer and Verify use it).
type sealCheck struct {
	key    []byte
	origin string
	legacy bool // entries without a "mac" member are from before entry MACs while no sealed one came yet

	sealed  bool              // a sealed entry was seen
	old     map[uint64][]byte // unsealed entries before the first sealed one (legacy), index → leaf hash
	foreign map[uint64][]byte // index → leaf hash of entries without a valid MAC
	acks    map[uint64][][]byte
}

// add checks entry index (its bytes raw).
func (c *sealCheck) add(index uint64, raw []byte) {
	if err := checkEntry(c.key, c.origin, raw); err != nil {
		h := rfc6962.DefaultHasher.HashLeaf(raw)
		if c.legacy && !c.sealed && !bytes.Contains(raw, []byte(`"mac":`)) {
			if c.old == nil {
				c.old = map[uint64][]byte{}
			}
			c.old[index] = h
			return
		}
		if c.foreign == nil {
			c.foreign = map[uint64][]byte{}
		}
		c.foreign[index] = h
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
// bytes, as an error (nil if there is none), and the acknowledged ones, in order. A legacy
// entry that an operator acknowledged as foreign is foreign.
func (c *sealCheck) unacknowledged() (acked []uint64, err error) {
	for i, h := range c.old {
		if c.acked(i, h) {
			delete(c.old, i)
			if c.foreign == nil {
				c.foreign = map[uint64][]byte{}
			}
			c.foreign[i] = h
		}
	}
	for i := range c.foreign {
		acked = append(acked, i)
	}
	slices.Sort(acked)
	for _, i := range acked {
		if !c.acked(i, c.foreign[i]) {
			return nil, securityf("entry %d: %v", i, ErrEntryMAC)
		}
	}
	return acked, nil
}

// acked reports whether a sealed acknowledgement after entry i names its leaf hash h.
func (c *sealCheck) acked(i uint64, h []byte) bool {
	for _, a := range c.acks[i] {
		if subtle.ConstantTimeCompare(a, h) == 1 {
			return true
		}
	}
	return false
}
