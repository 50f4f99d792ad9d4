package audit

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/sqlutil"
	"github.com/transparency-dev/formats/log"
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
// Repair rebuilds the unsigned part of the tree from the bytes the database holds. It starts
// from the largest tree the log key signed that this replica knows (its floor, or the
// database's Checkpoint row), whose root the tiles must still give (else it refuses:
// restore them first); signed history is never rewritten. Entries from the floor to P stay
// where they are, their leaves now their bytes' hashes (an unsealed one among them is then
// acknowledged as usual). From P on, every entry a replica sealed is appended again — its
// MAC says a replica wrote those bytes, whatever leaf the tiles show — in the tree's order
// where its leaf is still in the tree and the database's where it is not (an attacker who
// swaps two entries' bytes does not choose their order); entries no replica sealed are
// dropped. Last comes a sealed entry of kind KindLogRepair naming P, P's leaf in the old
// tree, and every leaf the old tree held from the floor on that the new one does not, with
// why (the first 100, and how many). The entry bundles are read as rows, whatever size the
// tree state claims (an attacker can lower it), and tiles at every level are rewritten
// from the floor on, then read back: they must give the root computed, or nothing is
// changed. A repair that would rebuild the tree there is is refused (nothing to repair).
//
// It runs in one transaction that holds the tree state's row, as tessera's own appends do,
// so replicas appending meanwhile wait for it and go on from the repaired tree; nothing a
// replica sealed is lost, and a crash (or a panic: sqlutil.InTx rolls back) leaves the
// tree as it was. The report, with the bytes the database held at every position named,
// goes to the caller's keep before the commit.
//
// What moves: a re-appended entry's index, so the search index forgets everything from P
// on and reads it again from the log; a request record's index (RecordIndex) moves with its
// batch entry. Replicas must be stopped while it runs: a replica's memory of the entries
// it appended and has not indexed yet would otherwise be indexed at their old places, and
// only the repairing process's index forgets (this process holding the signer's lock is
// all that is checked).

// maxEvidence bounds the bytes of dropped entries a repair keeps for the evidence.
const maxEvidence = 64 << 20

// maxRepairNamed is how many dropped entries a repair entry lists one by one.
const maxRepairNamed = 100

// RepairReport says what Repair did.
type RepairReport struct {
	Entry   uint64    // P: entries from here on that a replica sealed were appended again
	OldSize uint64    // the entries the database held before (or the tree state's size, if larger)
	Moved   int       // sealed entries appended again, in their order
	Dropped []Dropped // positions whose old leaf, or entry, the new tree does not hold
	At      uint64    // the repair entry's index
	Size    uint64    // the tree's size after
	// Witnesses: what the witnesses said of the floor (repairwitness.go).
	Witnesses WitnessCheck
}

// Dropped is a position whose leaf in the old tree the new tree does not hold, or whose
// entry (no replica's) it does not append again, with the bytes the database held there.
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
		// The lock dropped a moment ago (a ping slower than its 2 s under load) and still
		// free is taken now, not at the next poll: the operator's remedy is not refused
		// for a tick (seen with the package's tests six at a time under -race).
		// The server frees a dropped connection's lock once it has seen the connection
		// end: tried for up to 3 s (seen taking over one try under the suite's load).
		err = retakeLock(ctx, l.leader, 3*time.Second)
		if err != nil {
			return RepairReport{}, fmt.Errorf("audit: repair: another replica holds the checkpoint signer's lock (%w): stop every replica of this log first", err)
		}
	}
	// The witnesses are asked before the transaction (it holds the tree state, which every
	// replica's appends wait on, and a witness can be slow); the transaction then checks
	// that the floor is still the one they were asked about.
	floor, floorRoot := l.floorTree(ctx, l.db)
	if entry < floor {
		return RepairReport{Entry: entry}, signedHistory(entry, floor)
	}
	wc, err := l.checkFloorWitnessed(ctx, floor, floorRoot, func(from uint64) ([][]byte, error) {
		pb, err := client.NewProofBuilder(ctx, floor, l.reader.ReadTile)
		if err != nil {
			return nil, err
		}
		return pb.ConsistencyProof(ctx, from, floor)
	})
	if err != nil {
		return RepairReport{Entry: entry, Witnesses: wc}, err
	}
	l.indexMu.Lock() // no catch-up reads the log before the repair and indexes after it
	defer l.indexMu.Unlock()
	var rep RepairReport
	err = sqlutil.InTx(ctx, l.db, func(tx *sql.Tx) error {
		var err error
		rep, err = l.repairTx(ctx, tx, entry, reason, actor, floor, floorRoot, wc)
		if err != nil || keep == nil {
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

// entriesFrom reads every entry bundle row from bundle b on, whatever the tree state says
// the log's size is (an attacker can lower it), as one run of entries: rows must follow
// each other, and every row but the last must be full.
func (f txFetcher) entriesFrom(ctx context.Context, b uint64, retain func(i uint64, e []byte) bool) ([][]byte, error) {
	rows, err := f.tx.QueryContext(ctx, "SELECT `tile_index`, `data` FROM `TiledLeaves` WHERE `tile_index` >= ? ORDER BY `tile_index` FOR UPDATE", b)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]byte
	next := b
	for rows.Next() {
		var idx uint64
		var data []byte
		if err := rows.Scan(&idx, &data); err != nil {
			return nil, err
		}
		var eb api.EntryBundle
		if err := eb.UnmarshalText(data); err != nil {
			return nil, securityf("entry bundle %d malformed: %v: restore it, or remove it by hand", idx, err)
		}
		if idx != next || (len(out) > 0 && len(out)%layout.EntryBundleWidth != 0) || len(eb.Entries) > layout.EntryBundleWidth {
			return nil, securityf("entry bundles from %d: bundle %d follows %d entries, holding %d: bundles are missing, short or overfull; restore them, or remove the stray rows by hand", b, idx, len(out), len(eb.Entries))
		}
		for _, e := range eb.Entries {
			if retain != nil && !retain(b*layout.EntryBundleWidth+uint64(len(out)), e) {
				e = nil // not kept: the caller knows it is there, not what it holds
			}
			out = append(out, e)
		}
		next++
	}
	return out, rows.Err()
}

// level0From reads the level-0 tiles from the one holding entry first on, as rows, and
// returns their leaves from first on, up to the first tile that is missing or partial.
func (f txFetcher) level0From(ctx context.Context, first uint64) ([][]byte, error) {
	rows, err := f.tx.QueryContext(ctx, "SELECT `index`, `nodes` FROM `Subtree` WHERE `level` = 0 AND `index` >= ? ORDER BY `index`", first/layout.TileWidth)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]byte
	next := first / layout.TileWidth
	for rows.Next() {
		var idx uint64
		var nodes []byte
		if err := rows.Scan(&idx, &nodes); err != nil {
			return nil, err
		}
		if idx != next || len(nodes)%32 != 0 || len(nodes) > 32*layout.TileWidth {
			break
		}
		for j := 0; j < len(nodes); j += 32 {
			out = append(out, nodes[j:j+32])
		}
		if len(nodes) < 32*layout.TileWidth {
			break
		}
		next++
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	skip := int(first % layout.TileWidth)
	if len(out) < skip {
		return nil, nil
	}
	return out[skip:], nil
}

// checkTilesBack reads back the tiles the rebuilt tree of size holds from the floor on and
// compares them with the tree computed: the root, every leaf from the floor on, and every
// complete node above them against its children.
func checkTilesBack(ctx context.Context, f txFetcher, floor, size uint64, leaves [][]byte, root []byte) error {
	nodes, err := client.FetchRangeNodes(ctx, size, f.ReadTile)
	if err != nil {
		return fmt.Errorf("audit: repair: the rebuilt tree: %w", err)
	}
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r, err := rf.NewRange(0, size, nodes)
	if err != nil {
		return err
	}
	if got, err := r.GetRootHash(nil); err != nil || !bytes.Equal(got, root) {
		return securityf("repair: the rebuilt tiles do not give the rebuilt root (a trigger, or a bug): nothing was changed")
	}
	got, err := client.FetchLeafHashes(ctx, f.ReadTile, floor, size-floor, size)
	if err != nil {
		return fmt.Errorf("audit: repair: the rebuilt leaves: %w", err)
	}
	for i := range leaves {
		if !bytes.Equal(got[i], leaves[i]) {
			return securityf("repair: the rebuilt tile's leaf at %d is not the entry's (a trigger?): nothing was changed", floor+uint64(i))
		}
	}
	for level := uint64(1); size>>(8*level) > 0; level++ {
		for j := floor >> (8 * level); j < size>>(8*level); j++ {
			ti := j / layout.TileWidth
			t, err := f.ReadTile(ctx, level, ti, uint8(min(size>>(8*level)-ti*layout.TileWidth, layout.TileWidth)%layout.TileWidth))
			if err != nil {
				return fmt.Errorf("audit: repair: tile %d/%d read back: %w", level, ti, err)
			}
			kids, err := f.ReadTile(ctx, level-1, j, 0)
			if err != nil {
				return fmt.Errorf("audit: repair: tile %d/%d read back: %w", level-1, j, err)
			}
			pos := j % layout.TileWidth
			if !bytes.Equal(t[32*pos:32*pos+32], subtreeRoot(kids)) {
				return securityf("repair: the rebuilt tile %d/%d's node %d is not its children's root (a trigger?): nothing was changed", level, ti, pos)
			}
		}
	}
	return nil
}

// floorTree is the largest tree the log key signed that this replica knows: the tree its
// signer trusts, or the database's Checkpoint row when that is larger and signed.
func (l *Log) floorTree(ctx context.Context, tx interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (uint64, []byte) {
	size, root := l.signer.trusted()
	var note []byte
	if err := tx.QueryRowContext(ctx, "SELECT `note` FROM `Checkpoint` WHERE `id` = 0").Scan(&note); err == nil && signedBy(l.signer.Signer, note) {
		var c log.Checkpoint
		if _, err := c.Unmarshal(note); err == nil && c.Size > size {
			size, root = c.Size, c.Hash
		}
	}
	return size, root
}

// signedHistory is the refusal of a repair at p below the floor.
func signedHistory(p, floor uint64) error {
	return securityf("repair: entry %d is covered by a checkpoint the log key signed (size %d): signed history is never rewritten", p, floor)
}

func (l *Log) repairTx(ctx context.Context, tx *sql.Tx, p uint64, reason string, actor map[string]string, asked uint64, askedRoot []byte, wc WitnessCheck) (RepairReport, error) {
	rep := RepairReport{Entry: p, Witnesses: wc}
	var treeSize uint64
	var treeRoot []byte
	if err := tx.QueryRowContext(ctx, "SELECT `size`, `root` FROM `TreeState` WHERE `id` = 0 FOR UPDATE").Scan(&treeSize, &treeRoot); err != nil {
		return rep, fmt.Errorf("audit: repair: tree state: %w", err)
	}
	floor, floorRoot := l.floorTree(ctx, tx)
	if p < floor {
		return rep, signedHistory(p, floor)
	}
	if floor != asked || !bytes.Equal(floorRoot, askedRoot) {
		return rep, fmt.Errorf("%w: repair: the signed tree moved from size %d to %d while the witnesses were asked (a checkpoint was published): run the repair again", ErrUnavailable, asked, floor)
	}
	f := txFetcher{tx}
	first := floor / layout.EntryBundleWidth * layout.EntryBundleWidth
	// Every entry is read; kept in memory are those before p and those a replica sealed, and
	// the others only up to maxEvidence bytes (an attacker can insert any amount: an outside
	// test's 400 MB of junk rows took 2.5 times that in memory).
	evidence := 0
	entries, err := f.entriesFrom(ctx, first/layout.EntryBundleWidth, func(i uint64, e []byte) bool {
		if i < p || checkEntry(l.entryKey, l.origin, e) == nil {
			return true
		}
		evidence += len(e)
		return evidence <= maxEvidence
	})
	if err != nil {
		return rep, fmt.Errorf("audit: repair: %w", err)
	}
	n := first + uint64(len(entries)) // what the database holds, whatever TreeState says
	rep.OldSize = max(n, treeSize)
	if p >= n {
		return rep, fmt.Errorf("audit: repair: entry %d: the database holds %d entries", p, n)
	}
	// The signed tree from its tiles: what the rebuilt tree starts from.
	nodes, err := client.FetchRangeNodes(ctx, floor, f.ReadTile)
	if err != nil {
		return rep, fmt.Errorf("audit: repair: the signed tree at %d: %w", floor, err)
	}
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	tree, err := rf.NewRange(0, floor, slices.Clone(nodes))
	if err != nil {
		return rep, err
	}
	if floor > 0 {
		if r, err := tree.GetRootHash(nil); err != nil || !bytes.Equal(r, floorRoot) {
			return rep, securityf("repair: the tiles under the signed tree (size %d) do not hash to its root: they were altered (the scrubber names where); restore them first", floor)
		}
	}
	// The leaves the tiles hold from the floor on, read as rows whatever size the tree state
	// claims (an attacker can lower it): for the order and the evidence. And the signed
	// entries before the floor in its bundle, which are written back, must be the leaves
	// the signed tree holds.
	tileLeaves, err := f.level0From(ctx, first)
	if err != nil {
		return rep, fmt.Errorf("audit: repair: %w", err)
	}
	leafAt := func(i uint64) []byte { // the tiles' leaf at i (i ≥ first), nil where they hold none
		if i-first < uint64(len(tileLeaves)) {
			return tileLeaves[i-first]
		}
		return nil
	}
	for i := first; i < floor; i++ {
		if !bytes.Equal(leafAt(i), rfc6962.DefaultHasher.HashLeaf(entries[i-first])) {
			return rep, securityf("repair: signed entry %d's bytes are not the leaf its signed tree holds (altered after signing; the scrubber names it): restore them first", i)
		}
	}
	oldEnd := max(first+uint64(len(tileLeaves)), floor)
	// The new tree: the entries from the floor on — before p all of them (an unsealed one
	// there is acknowledged as usual), from p on those a replica sealed — in the tree's order
	// where their leaf is still in the tree, the database's where it is not (an attacker who
	// swaps two entries' bytes, before p or after, does not choose their order).
	type keptEntry struct {
		key uint64
		e   []byte
	}
	byLeaf := map[string][]uint64{} // the tree's positions from the floor on, by leaf
	for i := floor; i < oldEnd; i++ {
		byLeaf[string(leafAt(i))] = append(byLeaf[string(leafAt(i))], i)
	}
	var kept []keptEntry
	for i := floor; i < n; i++ {
		e := entries[i-first]
		if i >= p && checkEntry(l.entryKey, l.origin, e) != nil {
			continue
		}
		if i >= p {
			rep.Moved++
		}
		key := i
		h := string(rfc6962.DefaultHasher.HashLeaf(e))
		if at := byLeaf[h]; len(at) > 0 {
			key, byLeaf[h] = at[0], at[1:]
		}
		kept = append(kept, keptEntry{key, e})
	}
	slices.SortStableFunc(kept, func(a, b keptEntry) int { return cmp.Compare(a.key, b.key) })
	var newEntries [][]byte
	for _, k := range kept {
		newEntries = append(newEntries, k.e)
	}
	// What the repair takes out: every leaf of the tree from the floor on that the new tree
	// does not hold, and every entry from p on that no replica sealed.
	inNew := map[string]bool{}
	for _, e := range newEntries {
		inNew[string(rfc6962.DefaultHasher.HashLeaf(e))] = true
	}
	for i := floor; i < max(n, oldEnd); i++ {
		var e []byte
		if i < n {
			e = entries[i-first]
		}
		leaf := leafAt(i)
		var why string
		switch {
		case i >= n:
			if inNew[string(leaf)] {
				continue
			}
			why = "the tree holds a leaf here and the database no entry"
		case i >= p && checkEntry(l.entryKey, l.origin, e) != nil:
			why = "not written by a replica (no valid entry MAC)"
			if e == nil {
				why += "; its bytes are not kept (the evidence is over its bound)"
			} else if leaf != nil && !bytes.Equal(leaf, rfc6962.DefaultHasher.HashLeaf(e)) {
				why += "; the tree's leaf here is not its bytes' hash"
			}
		case leaf != nil && !inNew[string(leaf)]:
			why = "the tree's leaf here is not the hash of any entry kept (the bytes it committed to are gone)"
		default:
			continue
		}
		if leaf == nil && e != nil {
			leaf = rfc6962.DefaultHasher.HashLeaf(e)
		}
		rep.Dropped = append(rep.Dropped, Dropped{Index: i, LeafHash: hex.EncodeToString(leaf), Why: why, Bytes: e})
	}
	// Nothing to repair: the tree rebuilt is the tree there is.
	check := tree
	for _, e := range newEntries {
		if err := check.Append(rfc6962.DefaultHasher.HashLeaf(e), nil); err != nil {
			return rep, err
		}
	}
	if r, err := check.GetRootHash(nil); err == nil && bytes.Equal(r, treeRoot) && floor+uint64(len(newEntries)) == treeSize && len(rep.Dropped) == 0 {
		return rep, fmt.Errorf("audit: repair: the tree from entry %d on is what the database's entries hash to, and a replica wrote each: nothing to repair (an entry no replica wrote before it is acknowledged: audit acknowledge)", p)
	}
	if tree, err = rf.NewRange(0, floor, slices.Clone(nodes)); err != nil {
		return rep, err
	}

	pLeaf := leafAt(p)
	if pLeaf == nil {
		pLeaf = rfc6962.DefaultHasher.HashLeaf(entries[p-first])
	}
	ev := Event{V: 1, TS: time.Now().UTC(), Kind: KindLogRepair, Actor: actor, Decision: Allow, Reason: reason,
		Subject: map[string]string{"entry": strconv.FormatUint(p, 10), "leaf_hash": hex.EncodeToString(pLeaf)},
		Fields: map[string]string{"old_size": strconv.FormatUint(rep.OldSize, 10), "floor": strconv.FormatUint(floor, 10),
			"moved": strconv.Itoa(rep.Moved), "dropped": strconv.Itoa(len(rep.Dropped)), "witnesses": rep.Witnesses.String()}}
	if len(rep.Witnesses.Unanswered) > 0 {
		ev.Fields["witnesses_unanswered"] = strings.Join(rep.Witnesses.Unanswered, "; ")
	}
	var named []string
	for _, d := range rep.Dropped[:min(len(rep.Dropped), maxRepairNamed)] {
		named = append(named, strconv.FormatUint(d.Index, 10)+":"+d.LeafHash)
	}
	ev.Fields["dropped_entries"] = strings.Join(named, " ")
	body, err := ev.Marshal()
	if errors.Is(err, ErrTooLarge) || err == nil && len(body)+macSuffix > MaxEventSize {
		ev = ev.Truncated() // a long reason: the evidence file keeps what is cut
		body, err = ev.Marshal()
	}
	if err != nil {
		return rep, err
	}
	newEntries = append(newEntries, sealEntry(l.entryKey, l.origin, body))

	newLeaves := make([][]byte, len(newEntries))
	for i, e := range newEntries {
		if len(e) > MaxEventSize {
			return rep, fmt.Errorf("audit: repair: entry %d (in the new tree) has %d bytes, more than an entry may", floor+uint64(i), len(e))
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
	size := floor + uint64(len(newEntries))
	if err := writeTiles(ctx, tx, f, floor, max(rep.OldSize, oldEnd), size, newLeaves); err != nil {
		return rep, fmt.Errorf("audit: repair: tiles: %w", err)
	}
	if err := writeBundles(ctx, tx, entries[:floor-first], floor, newEntries); err != nil {
		return rep, fmt.Errorf("audit: repair: entry bundles: %w", err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE `TreeState` SET `size` = ?, `root` = ? WHERE `id` = 0", size, root); err != nil {
		return rep, fmt.Errorf("audit: repair: tree state: %w", err)
	}
	// Read back everything written (a trigger may have changed it within this transaction):
	// the entries, every tile from the floor on, the tree state.
	back, err := f.entriesFrom(ctx, first/layout.EntryBundleWidth, nil)
	if err != nil {
		return rep, fmt.Errorf("audit: repair: reading the rebuilt entries back: %w", err)
	}
	want := append(slices.Clone(entries[:floor-first]), newEntries...)
	if len(back) != len(want) {
		return rep, securityf("repair: the entry bundles read back hold %d entries, not the %d written (a trigger?): nothing was changed", len(back), len(want))
	}
	for i := range want {
		if !bytes.Equal(back[i], want[i]) {
			return rep, securityf("repair: entry %d read back is not what was written (a trigger?): nothing was changed", first+uint64(i))
		}
	}
	if err := checkTilesBack(ctx, f, floor, size, newLeaves, root); err != nil {
		return rep, err
	}
	var gotSize uint64
	var gotRoot []byte
	if err := tx.QueryRowContext(ctx, "SELECT `size`, `root` FROM `TreeState` WHERE `id` = 0").Scan(&gotSize, &gotRoot); err != nil || gotSize != size || !bytes.Equal(gotRoot, root) {
		return rep, securityf("repair: the tree state read back is not what was written (a trigger?): nothing was changed")
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
	level := uint64(0)
	for ; oldSize>>(8*level) > 0 || size>>(8*level) > 0; level++ {
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
	// No tile above the tree's height (a stray row would be read as part of the tree).
	_, err := tx.ExecContext(ctx, "DELETE FROM `Subtree` WHERE `level` >= ?", level)
	return err
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

// retakeLock tries to take the signer's lock (leader.tick) until it holds it or within
// wait; the last check's error if it does not.
func retakeLock(ctx context.Context, ld *leader, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		ld.tick(ctx)
		err := ld.check(ctx)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}
