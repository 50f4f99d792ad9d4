package audit

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/client"
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

// They are also kept on the replica's own disk (<log_dir>/.state/shared-log-mine), written
// before the append is acknowledged, so that a replica killed before the check (kill -9,
// an OOM) makes it when it comes back: an attacker who can crash a replica and write the
// database cannot erase what it acknowledged. Each is one write(2) to the page cache, no
// fsync (the database's commit is the durability; this copy is for the attacker's rewrite,
// and survives the process, not a power cut of its host); the file is rewritten with what
// is left after each check.
//
//	frame = u32le(len(payload)) || u32le(CRC-32C(payload)) || payload
//	payload = uvarint(index) || uvarint(after) || entry       a torn last frame is dropped

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
	m := mineEntry{index, raw, min(after, index)}
	l.mine = append(l.mine, m)
	if l.mineF != nil {
		if _, err := l.mineF.Write(appendMineFrame(nil, m)); err != nil {
			l.mineFileFailed(err)
		}
	}
}

func appendMineFrame(b []byte, m mineEntry) []byte {
	start := len(b)
	b = append(b, make([]byte, 8)...)
	b = binary.AppendUvarint(b, m.index)
	b = binary.AppendUvarint(b, m.after)
	b = append(b, m.raw...)
	payload := b[start+8:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(payload, castagnoli))
	return b
}

// parseMine reads the kept entries; a short or damaged frame ends them (a write the
// process's death cut off: that entry was not acknowledged).
func parseMine(b []byte) []mineEntry {
	var ms []mineEntry
	for len(b) >= 8 {
		n := uint64(binary.LittleEndian.Uint32(b))
		if n > uint64(len(b)-8) || n > MaxEventSize+2*binary.MaxVarintLen64 {
			break
		}
		payload := b[8 : 8+n]
		if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(b[4:]) {
			break
		}
		index, k := binary.Uvarint(payload)
		after, k2 := binary.Uvarint(payload[max(k, 0):])
		if k <= 0 || k2 <= 0 || len(payload) == k+k2 {
			break
		}
		ms = append(ms, mineEntry{index: index, after: min(after, index), raw: bytes.Clone(payload[k+k2:])})
		b = b[8+n:]
	}
	return ms
}

// openMine takes up the entries a previous run of this replica kept at path (checked like
// its own) and opens the file for this run's.
func (l *Log) openMine(path string) {
	l.minePath = path
	b, err := readRegular(path, 1<<30) // not a FIFO, a link or a huge file (round 33's class)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		l.log.Error("ALERT audit log: this replica's kept entries cannot be read; they are not checked to be in the signed log", "path", path, "err", err)
	}
	if err == nil {
		if ms := parseMine(b); len(ms) > 0 {
			l.mine = ms
			l.log.Warn("audit log: entries this replica appended before it stopped are checked to be in the signed log", "entries", len(ms))
		}
	}
	l.mineMu.Lock()
	defer l.mineMu.Unlock()
	l.rewriteMine()
}

// rewriteMine replaces the kept file with the entries still waiting (l.mineMu held).
func (l *Log) rewriteMine() {
	if l.minePath == "" {
		return
	}
	if l.mineF != nil {
		l.mineF.Close()
		l.mineF = nil
	}
	var b []byte
	for _, m := range l.mine {
		b = appendMineFrame(b, m)
	}
	tmp := l.minePath + ".tmp"
	err := os.MkdirAll(filepath.Dir(l.minePath), 0o700)
	if err == nil {
		err = os.WriteFile(tmp, b, 0o600)
	}
	if err == nil {
		err = os.Rename(tmp, l.minePath)
	}
	if err == nil {
		l.mineF, err = os.OpenFile(l.minePath, os.O_WRONLY|os.O_APPEND|syscall.O_CLOEXEC, 0o600)
	}
	if err != nil {
		os.Remove(tmp) // a full disk: what did fit is not left taking the room
		l.mineFileFailed(err)
		return
	}
	if l.mineDiskFailed {
		l.mineDiskFailed = false
		l.log.Warn("audit log: this replica's appended entries are kept on its disk again", "entries", len(l.mine))
	}
}

// mineFileFailed: the kept entries are in memory only until a rewrite succeeds — each
// watch round tries one (checkMine) — (l.mineMu held). The ALERT is once per failure.
func (l *Log) mineFileFailed(err error) {
	if l.mineF != nil {
		l.mineF.Close()
		l.mineF = nil
	}
	if !l.mineDiskFailed {
		l.mineDiskFailed = true
		l.log.Error("ALERT audit log: cannot keep this replica's appended entries on its disk; until it can, a replica killed before a checkpoint covers them cannot restore one erased from the database", "err", err)
	}
}

// checkMine looks for the entries this replica appended that the published checkpoint
// covers among the leaves of its tree above the trees this replica trusted when it appended
// them (a repair moves entries, never below those), and appends again, with an ALERT, any
// that is not there. The published checkpoint — the database's row, signed by the log key —
// not this replica's own signature: a checkpoint it signed whose publication failed is
// one no outsider holds, and another replica may sign a tree without the entry (an outside
// round lost an entry so). And the tree's leaves, proven against that checkpoint's root —
// not the entry bundles' bytes, which the database's writer can change for the moment of
// the check: a copy of the entry put elsewhere made it look present (and lost it), the
// entry's bytes replaced made it look missing (and appended it twice).
//
// cp is the published checkpoint as the watch read it this round, signed by the log key
// (nil: none, or unreadable — the entries stay due).
func (l *Log) checkMine(ctx context.Context, cp []byte) {
	if l.db == nil || l.signer == nil {
		return
	}
	l.mineMu.Lock()
	if l.mineF == nil && l.minePath != "" {
		l.rewriteMine() // the disk failed (full, read-only): keep what waits there again
	}
	unsure := l.mineUnsure
	l.mineUnsure = nil
	l.mineMu.Unlock()
	for _, u := range unsure {
		l.resolveReappend(u.raw, u.after)
	}
	if cp == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second) // the tiles' reads; a locked table waits for the next round
	defer cancel()
	var c log.Checkpoint
	if _, err := c.Unmarshal(cp); err != nil {
		return
	}
	signed := c.Size
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
	present, err := l.provenLeaves(rctx, from, c)
	if err != nil {
		return // read again at the next round; the entries stay due (the scrubber names damage)
	}
	var again []mineEntry
	for _, m := range due {
		if len(present[[32]byte(rfc6962.DefaultHasher.HashLeaf(m.raw))]) > 0 {
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
		after, _ := l.signer.trusted()
		idx, err := l.add(ctx, tessera.NewEntry(m.raw))()
		if err != nil && mayHideCommit(err) {
			// Appended or not: appending once more on a guess made two copies (round 37).
			l.resolveReappend(m.raw, after)
			continue
		}
		if err != nil {
			l.log.Error("ALERT audit log: an entry this replica appended could not be appended again", "entry", m.index, "err", err)
			l.rememberMine(m.index, m.raw) // due again next round
			continue
		}
		l.rememberMine(idx.Index, m.raw)
	}
	l.mineMu.Lock()
	l.rewriteMine() // what is found goes; until now the file kept it (and those appended again)
	l.mineMu.Unlock()
}

// resolveReappend settles a re-append whose failure may hide a commit (lostcommit.go):
// found, the entry is kept at its new index; proven absent, it is due again (appended at
// the next round if the signed tree still lacks it); not resolved, it is resolved again at
// the next round, never appended on a guess.
func (l *Log) resolveReappend(raw []byte, after uint64) {
	index, _, found, err := l.resolveLost(time.Now(), raw, after)
	switch {
	case err != nil:
		l.log.Error("ALERT audit log: an entry appended again may or may not be in the log (the answer to its commit was lost); looked for again", "err", err)
		l.mineMu.Lock()
		l.mineUnsure = append(l.mineUnsure, lostEntry{raw: raw, after: after})
		l.mineMu.Unlock()
	case found:
		l.rememberMine(index, raw)
	default:
		l.rememberMine(after, raw)
	}
}

// provenLeaves is the leaf hashes of c's tree from entry from on, each with the indices it
// is at, read from the tiles and proven by recomputing c's root with the tiles' nodes of
// the tree before from.
func (l *Log) provenLeaves(ctx context.Context, from uint64, c log.Checkpoint) (map[[32]byte][]uint64, error) {
	nodes, err := client.FetchRangeNodes(ctx, from, l.reader.ReadTile)
	if err != nil {
		return nil, err
	}
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	tree, err := rf.NewRange(0, from, slices.Clone(nodes))
	if err != nil {
		return nil, err
	}
	leaves, err := client.FetchLeafHashes(ctx, l.reader.ReadTile, from, c.Size-from, c.Size)
	if err != nil {
		return nil, err
	}
	set := make(map[[32]byte][]uint64, len(leaves))
	for i, h := range leaves {
		if len(h) != sha256.Size {
			return nil, errors.New("a leaf hash of another size")
		}
		if err := tree.Append(h, nil); err != nil {
			return nil, err
		}
		set[[32]byte(h)] = append(set[[32]byte(h)], from+uint64(i))
	}
	if root, err := tree.GetRootHash(nil); err != nil || !bytes.Equal(root, c.Hash) {
		return nil, errors.New("the tiles do not give the published checkpoint's root")
	}
	return set, nil
}
