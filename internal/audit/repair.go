package audit

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/sqlutil"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api"
	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/client"
)

// Repair of a poisoned tail: the remedy when the shared log's database was written so that
// an unsigned entry's bytes are not its leaf.
//
// Someone with write access to the database can append an entry through tessera's driver
// and then overwrite its bytes in the entry bundle: the tree (tiles, tree state) commits to
// a leaf whose bytes only they held. No checkpoint can cover it — every verifier recomputes
// the tree from the bytes — and no acknowledgement can name bytes that are gone, so the
// signer refuses every tree from then on (TestAttack5UnknownLeafDoS). Entries after it,
// the fleet's records among them, are durable but never covered.
//
// Repair cuts the tree back to the poisoned entry P and appends again, in the order the
// database holds them, the entries from P on that a replica sealed (their MAC says a
// replica wrote those bytes, whatever leaf the tiles show), then a sealed entry of kind
// KindLogRepair saying what was done. It refuses unless P is above every checkpoint
// the log key signed that this replica knows (its floor and the database's row): signed
// history is never rewritten, only the unsigned tail, which no outsider holds a proof of.
// It runs in one transaction that holds the tree state's row, as tessera's own appends do,
// so replicas appending meanwhile wait for it and go on from the repaired tree; nothing a
// replica sealed is lost, and a crash leaves the tree as it was. Entries dropped — those no
// replica wrote, P's bytes among them unless they are a sealed entry's — are returned with
// the bytes the database held, for the incident's evidence; the repair entry names them
// (the first 100, and how many).
//
// What moves: a re-appended entry's index, so the search index forgets everything from P
// on and reads it again from the log; a request record's index (RecordIndex) moves with its
// batch entry. Replicas must be stopped while it runs: a replica's memory of the entries
// it appended and has not indexed yet would otherwise be indexed at their old places.

// maxRepairNamed is how many dropped entries a repair entry lists one by one.
const maxRepairNamed = 100

// RepairReport says what Repair did.
type RepairReport struct {
	Entry   uint64    // the poisoned entry the tree was cut back to
	OldSize uint64    // the tree's size before
	Moved   int       // sealed entries appended again, in their order
	Dropped []Dropped // entries not appended again, P first
	At      uint64    // the repair entry's index
	Size    uint64    // the tree's size after
}

// Dropped is an entry Repair did not append again, with the bytes the database held.
type Dropped struct {
	Index    uint64 `json:"index"`
	LeafHash string `json:"leaf_hash"` // the tree's leaf, hex
	Why      string `json:"why"`
	Bytes    []byte `json:"bytes"` // what the entry bundle held
}

// Repair cuts the shared log's tree back to entry (whose bytes are not its leaf) and
// appends again what replicas sealed after it; see above. actor is the repair entry's.
// keep, when set, is given the report before the repair commits (the dropped entries'
// bytes exist nowhere else afterwards): an error from it undoes the repair. This process
// must hold the checkpoint signer's lock — no other replica signs meanwhile — which it
// has when no other replica of the log is running.
func (l *Log) Repair(ctx context.Context, entry uint64, reason string, actor map[string]string, keep func(RepairReport) error) (RepairReport, error) {
	if l.db == nil || l.entryKey == nil || l.signer == nil {
		return RepairReport{}, errors.New("audit: repair is for a shared log opened with the entry key")
	}
	if strings.TrimSpace(reason) == "" {
		return RepairReport{}, errors.New("audit: a repair needs a reason")
	}
	if err := l.leader.check(ctx); err != nil {
		return RepairReport{}, fmt.Errorf("audit: repair: another replica holds the checkpoint signer's lock (%w): stop every replica of this log first", err)
	}
	var rep RepairReport
	err := sqlutil.InTx(ctx, l.db, func(tx *sql.Tx) error {
		var err error
		if rep, err = l.repairTx(ctx, tx, entry, reason, actor); err != nil || keep == nil {
			return err
		}
		return keep(rep)
	})
	if err != nil {
		return RepairReport{}, err
	}
	// This process's memory of entries not yet indexed is of their old places.
	l.recentMu.Lock()
	clear(l.recent)
	l.recentMu.Unlock()
	if l.idx != nil {
		if err := l.idx.ForgetAudit(ctx, entry); err != nil {
			return rep, fmt.Errorf("audit: the log is repaired; the search index still holds entries %d and after at their old places: %w", entry, err)
		}
	}
	l.log.Warn("audit log: repaired: the tree was cut back to the poisoned entry and the sealed entries after it appended again",
		"entry", entry, "old_size", rep.OldSize, "moved", rep.Moved, "dropped", len(rep.Dropped), "repair_entry", rep.At)
	return rep, nil
}

// txFetcher reads tiles and entry bundles inside the repair's transaction.
type txFetcher struct{ tx *sql.Tx }

func (f txFetcher) ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error) {
	var nodes []byte
	if err := f.tx.QueryRowContext(ctx, "SELECT `nodes` FROM `Subtree` WHERE `level` = ? AND `index` = ?", level, index).Scan(&nodes); err != nil {
		return nil, fmt.Errorf("tile %d/%d: %w", level, index, err)
	}
	want := int(p)
	if want == 0 {
		want = layout.TileWidth
	}
	if len(nodes)%32 != 0 || len(nodes)/32 < want {
		return nil, securityf("tile %d/%d holds %d bytes, want %d hashes", level, index, len(nodes), want)
	}
	return nodes[:32*want], nil
}

func (f txFetcher) bundle(ctx context.Context, index uint64, want int) ([][]byte, error) {
	var size int
	var data []byte
	if err := f.tx.QueryRowContext(ctx, "SELECT `size`, `data` FROM `TiledLeaves` WHERE `tile_index` = ? FOR UPDATE", index).Scan(&size, &data); err != nil {
		return nil, fmt.Errorf("entry bundle %d: %w", index, err)
	}
	var b api.EntryBundle
	if err := b.UnmarshalText(data); err != nil || size != want || len(b.Entries) != want {
		return nil, securityf("entry bundle %d: %d entries (row says %d), want %d: repair it by hand", index, len(b.Entries), size, want)
	}
	return b.Entries, nil
}

func (l *Log) repairTx(ctx context.Context, tx *sql.Tx, p uint64, reason string, actor map[string]string) (RepairReport, error) {
	rep := RepairReport{Entry: p}
	var oldRoot []byte
	if err := tx.QueryRowContext(ctx, "SELECT `size`, `root` FROM `TreeState` WHERE `id` = 0 FOR UPDATE").Scan(&rep.OldSize, &oldRoot); err != nil {
		return rep, fmt.Errorf("audit: repair: tree state: %w", err)
	}
	n := rep.OldSize
	if p >= n {
		return rep, fmt.Errorf("audit: repair: entry %d: the log holds %d entries", p, n)
	}
	floor, _ := l.signer.trusted()
	var note []byte
	if err := tx.QueryRowContext(ctx, "SELECT `note` FROM `Checkpoint` WHERE `id` = 0").Scan(&note); err == nil && signedBy(l.signer.Signer, note) {
		if c, ok := checkpointSize(note); ok {
			floor = max(floor, c)
		}
	}
	if p < floor {
		return rep, securityf("repair: entry %d is covered by a checkpoint the log key signed (size %d): signed history is never rewritten", p, floor)
	}
	f := txFetcher{tx}
	// Every entry from the first bundle that holds the floor, with its leaf from the tiles.
	first := floor / layout.EntryBundleWidth * layout.EntryBundleWidth
	leaves, err := client.FetchLeafHashes(ctx, f.ReadTile, first, n-first, n)
	if err != nil {
		return rep, fmt.Errorf("audit: repair: leaves %d–%d: %w", first, n, err)
	}
	var entries [][]byte
	for b := first / layout.EntryBundleWidth; b*layout.EntryBundleWidth < n; b++ {
		want := int(min(n-b*layout.EntryBundleWidth, layout.EntryBundleWidth))
		es, err := f.bundle(ctx, b, want)
		if err != nil {
			return rep, fmt.Errorf("audit: repair: %w", err)
		}
		entries = append(entries, es...)
	}
	matches := func(i uint64) bool {
		return bytes.Equal(rfc6962.DefaultHasher.HashLeaf(entries[i-first]), leaves[i-first])
	}
	for i := floor; i < p; i++ {
		if !matches(i) {
			return rep, securityf("repair: entry %d's bytes are not its leaf either: repair from the first such entry, %d", i, i)
		}
	}
	if matches(p) {
		return rep, fmt.Errorf("audit: repair: entry %d's bytes are its leaf: nothing to repair (an entry no replica wrote is acknowledged: audit acknowledge)", p)
	}
	// What stays: every entry from p on that a replica sealed, whether or not the tree's
	// leaf is its hash (the MAC says a replica wrote these bytes; a leaf altered in the
	// tiles must not cost the fleet a record). What goes: what no replica wrote.
	var kept [][]byte
	for i := p; i < n; i++ {
		e := entries[i-first]
		if checkEntry(l.entryKey, l.origin, e) == nil {
			kept = append(kept, e)
			continue
		}
		why := "not written by a replica (no valid entry MAC)"
		if !matches(i) {
			why = "its bytes are not its leaf, and no replica wrote them"
		}
		rep.Dropped = append(rep.Dropped, Dropped{Index: i, LeafHash: hex.EncodeToString(leaves[i-first]), Why: why, Bytes: bytes.Clone(e)})
	}
	rep.Moved = len(kept)
	ev := Event{V: 1, TS: time.Now().UTC(), Kind: KindLogRepair, Actor: actor, Decision: Allow, Reason: reason,
		Subject: map[string]string{"entry": strconv.FormatUint(p, 10), "leaf_hash": rep.Dropped[0].LeafHash},
		Fields: map[string]string{"old_size": strconv.FormatUint(n, 10), "moved": strconv.Itoa(len(kept)),
			"dropped": strconv.Itoa(len(rep.Dropped))}}
	var named []string
	for _, d := range rep.Dropped[:min(len(rep.Dropped), maxRepairNamed)] {
		named = append(named, strconv.FormatUint(d.Index, 10)+":"+d.LeafHash)
	}
	ev.Fields["dropped_entries"] = strings.Join(named, " ")
	body, err := ev.Marshal()
	if err != nil {
		return rep, err
	}
	kept = append(kept, sealEntry(l.entryKey, l.origin, body))

	// The tree over [0, p) from its tiles, and the new leaves appended to it.
	nodes, err := client.FetchRangeNodes(ctx, p, f.ReadTile)
	if err != nil {
		return rep, fmt.Errorf("audit: repair: the tree at %d: %w", p, err)
	}
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	tree, err := rf.NewRange(0, p, nodes)
	if err != nil {
		return rep, err
	}
	newLeaves := make([][]byte, len(kept))
	for i, e := range kept {
		if len(e) > MaxEventSize {
			return rep, fmt.Errorf("audit: repair: an entry of %d bytes", len(e))
		}
		newLeaves[i] = rfc6962.DefaultHasher.HashLeaf(e)
		if err := tree.Append(newLeaves[i], nil); err != nil {
			return rep, err
		}
	}
	root, err := tree.GetRootHash(nil)
	if err != nil {
		return rep, err
	}
	size := p + uint64(len(kept))
	if err := writeTiles(ctx, tx, f, p, n, size, newLeaves); err != nil {
		return rep, fmt.Errorf("audit: repair: tiles: %w", err)
	}
	if err := writeBundles(ctx, tx, entries[p/layout.EntryBundleWidth*layout.EntryBundleWidth-first:p-first], p, kept); err != nil {
		return rep, fmt.Errorf("audit: repair: entry bundles: %w", err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE `TreeState` SET `size` = ?, `root` = ? WHERE `id` = 0", size, root); err != nil {
		return rep, fmt.Errorf("audit: repair: tree state: %w", err)
	}
	rep.At, rep.Size = size-1, size
	return rep, nil
}

// writeTiles rewrites every tile that holds a node over entries p and after: a tree of
// size oldSize cut back to p, with leaves appended (size in all). A tile at level L holds
// the hashes of the complete nodes of height 8L, 256 a tile; the nodes wholly before p
// stay as they are.
func writeTiles(ctx context.Context, tx *sql.Tx, f txFetcher, p, oldSize, size uint64, leaves [][]byte) error {
	var below []byte // the level below's nodes, from its first rewritten tile's start
	var belowStart uint64
	for level := uint64(0); oldSize>>(8*level) > 0 || size>>(8*level) > 0; level++ {
		keep := p >> (8 * level)                            // nodes of this height wholly before p
		start := keep / layout.TileWidth * layout.TileWidth // the first rewritten tile's first node
		var nodes []byte
		if keep > start { // the kept part of that tile
			t, err := f.ReadTile(ctx, level, start/layout.TileWidth, uint8(keep-start))
			if err != nil {
				return err
			}
			nodes = append(nodes, t...)
		}
		for j := keep; j < size>>(8*level); j++ {
			if level == 0 {
				nodes = append(nodes, leaves[j-p]...)
				continue
			}
			nodes = append(nodes, subtreeRoot(below[32*(256*j-belowStart):32*(256*j-belowStart+256)])...)
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM `Subtree` WHERE `level` = ? AND `index` >= ?", level, start/layout.TileWidth); err != nil {
			return err
		}
		for off := 0; off < len(nodes); off += 32 * layout.TileWidth {
			t := nodes[off:min(len(nodes), off+32*layout.TileWidth)]
			if _, err := tx.ExecContext(ctx, "INSERT INTO `Subtree` (`level`, `index`, `nodes`) VALUES (?, ?, ?)",
				level, start/layout.TileWidth+uint64(off/(32*layout.TileWidth)), t); err != nil {
				return err
			}
		}
		below, belowStart = nodes, start
	}
	return nil
}

// subtreeRoot is the root of the perfect tree over 256 node hashes (concatenated).
func subtreeRoot(hashes []byte) []byte {
	level := make([][]byte, len(hashes)/32)
	for i := range level {
		level[i] = hashes[32*i : 32*i+32]
	}
	for len(level) > 1 {
		next := make([][]byte, len(level)/2)
		for i := range next {
			next[i] = rfc6962.DefaultHasher.HashChildren(level[2*i], level[2*i+1])
		}
		level = next
	}
	return level[0]
}

// writeBundles rewrites the entry bundles from the one holding p: the entries before p in
// it (head), then entries.
func writeBundles(ctx context.Context, tx *sql.Tx, head [][]byte, p uint64, entries [][]byte) error {
	b := p / layout.EntryBundleWidth
	if _, err := tx.ExecContext(ctx, "DELETE FROM `TiledLeaves` WHERE `tile_index` >= ?", b); err != nil {
		return err
	}
	all := append(append([][]byte{}, head...), entries...)
	for off := 0; off < len(all); off += layout.EntryBundleWidth {
		chunk := all[off:min(len(all), off+layout.EntryBundleWidth)]
		var data []byte
		for _, e := range chunk {
			data = binary.BigEndian.AppendUint16(data, uint16(len(e)))
			data = append(data, e...)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO `TiledLeaves` (`tile_index`, `size`, `data`) VALUES (?, ?, ?)",
			b+uint64(off/layout.EntryBundleWidth), len(chunk), data); err != nil {
			return err
		}
	}
	return nil
}
