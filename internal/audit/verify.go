package audit

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api"
	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

// ErrSecurity is an integrity failure of the log: a bad signature, a missing cosignature,
// an entry or tile that does not match, a fork or a rollback. It is never transient.
var ErrSecurity = errors.New("security error")

func securityf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrSecurity}, args...)...)
}

// Fetcher reads a log's public resources (client.HTTPFetcher or client.FileFetcher).
type Fetcher interface {
	ReadCheckpoint(ctx context.Context) ([]byte, error)
	ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error)
	ReadEntryBundle(ctx context.Context, index uint64, p uint8) ([]byte, error)
}

// State is what a verifier remembers between runs: the last checkpoint it accepted.
type State struct {
	Origin     string `json:"origin"`
	Size       uint64 `json:"size"`
	Root       []byte `json:"root"`
	Checkpoint []byte `json:"checkpoint"`

	// With VerifyOptions.EntryKey: entries without a replica's MAC that an operator
	// acknowledged (foreign.go), and entries from before entry MACs (no "mac" member, ahead
	// of the log's first sealed entry). Reported, not kept between runs.
	Foreign  []uint64 `json:"-"`
	Unsealed uint64   `json:"-"`
	// Copies are entries whose bytes repeat an earlier entry's (store/auditcopies.go),
	// found by every run: each says nothing new, and the search index counts it once.
	// Reported, not a failure (a batch folded twice after a lost answer is one too).
	Copies []Copy `json:"-"`
}

// Copy is an entry whose bytes are those of an earlier entry, Of.
type Copy struct {
	Index uint64 `json:"entry"`
	Of    uint64 `json:"copy_of"`
}

// VerifyOptions say whom to trust.
type VerifyOptions struct {
	LogKey    note.Verifier   // the log's key; its name is the origin
	Witnesses []note.Verifier // cosignature/v1 verifiers of the witnesses
	Quorum    int             // how many of Witnesses must have cosigned
	Prior     *State          // last accepted state, or nil on first use
	// Bundles reads request batches' bundles (batch.go): every batch entry's records are
	// checked against it. Nil: a log with batch entries fails to verify.
	Bundles func(ctx context.Context, name string) ([]byte, error)
	// EntryKey (EntryKey of the deployment's audit HMAC key: operators only) also checks
	// every entry's MAC: an entry no replica wrote fails verification unless an operator
	// acknowledged it in the log (foreign.go).
	EntryKey []byte
	// LegacyUnsealed (with EntryKey) tolerates entries without a "mac" member ahead of the
	// log's first sealed one, counted in State.Unsealed: a log on local disk started by a
	// version from before entry MACs. Never for a shared log: there, an attacker who empties
	// a new log's first bundle could pass forged entries off as legacy.
	LegacyUnsealed bool
}

// OpenCheckpoint checks a checkpoint's log signature and witness quorum and parses it.
func OpenCheckpoint(raw []byte, o VerifyOptions) (*log.Checkpoint, error) {
	verifiers := append([]note.Verifier{o.LogKey}, o.Witnesses...)
	n, err := note.Open(raw, note.VerifierList(verifiers...))
	if err != nil {
		return nil, securityf("checkpoint signature: %v", err)
	}
	logSigned, cosigned := false, map[string]bool{}
	for _, s := range n.Sigs {
		if s.Name == o.LogKey.Name() && s.Hash == o.LogKey.KeyHash() {
			logSigned = true
			continue
		}
		cosigned[fmt.Sprintf("%s+%08x", s.Name, s.Hash)] = true
	}
	if !logSigned {
		return nil, securityf("checkpoint is not signed by the log key %s", o.LogKey.Name())
	}
	if len(cosigned) < o.Quorum {
		return nil, securityf("checkpoint has %d of the %d witness cosignatures required", len(cosigned), o.Quorum)
	}
	var cp log.Checkpoint
	if _, err := cp.Unmarshal([]byte(n.Text)); err != nil {
		return nil, securityf("checkpoint body: %v", err)
	}
	if cp.Origin != o.LogKey.Name() {
		return nil, securityf("checkpoint origin %q is not the log's %q", cp.Origin, o.LogKey.Name())
	}
	return &cp, nil
}

// Verify fetches the latest checkpoint, checks its signatures, then reads every entry and
// every tile, recomputes the tree and compares: an edited, deleted, reordered or inserted
// entry or tile is reported with its index. With o.Prior it also checks that the log
// still extends what was accepted before (no fork, no rollback). It returns the new state.
func Verify(ctx context.Context, f Fetcher, o VerifyOptions) (State, error) {
	raw, err := f.ReadCheckpoint(ctx)
	if errors.Is(err, os.ErrNotExist) {
		// A new log (or a shared one whose signer has not published yet): say so, rather
		// than "file does not exist" about a URL.
		return State{}, fmt.Errorf("fetch checkpoint: the log has no signed checkpoint yet (%w)", err)
	}
	if err != nil {
		return State{}, fmt.Errorf("fetch checkpoint: %w", err)
	}
	cp, err := OpenCheckpoint(raw, o)
	if err != nil {
		return State{}, err
	}
	if p := o.Prior; p != nil {
		if p.Origin != "" && p.Origin != cp.Origin {
			return State{}, securityf("state file is for log %q, not %q", p.Origin, cp.Origin)
		}
		if cp.Size < p.Size {
			return State{}, securityf("log rolled back: size %d, but %d was accepted before", cp.Size, p.Size)
		}
	}
	nodes := map[compact.NodeID][]byte{}
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	tree := rf.NewEmptyRange(0)
	visit := func(id compact.NodeID, h []byte) {
		if id.Level%8 == 0 {
			nodes[id] = h
		}
	}
	var priorRoot []byte
	next := uint64(0)
	seals := sealCheck{key: o.EntryKey, origin: cp.Origin, legacy: o.LegacyUnsealed}
	seen := map[[32]byte]uint64{} // leaf hash → first entry with it
	var copies []Copy
	for bundle := uint64(0); next < cp.Size; bundle++ {
		p := layout.PartialTileSize(0, bundle, cp.Size)
		rawBundle, err := f.ReadEntryBundle(ctx, bundle, p)
		if err != nil {
			return State{}, securityf("entry %d: entry bundle %d unreadable (deleted?): %v", next, bundle, err)
		}
		var b api.EntryBundle
		if err := b.UnmarshalText(rawBundle); err != nil {
			return State{}, securityf("entry %d: entry bundle %d malformed: %v", next, bundle, err)
		}
		want := uint64(layout.EntryBundleWidth)
		if p != 0 {
			want = uint64(p)
		}
		if p != 0 && uint64(len(b.Entries)) > want {
			b.Entries = b.Entries[:want] // the full bundle replaced the partial one since this checkpoint
		}
		if uint64(len(b.Entries)) != want {
			return State{}, securityf("entry %d: entry bundle %d holds %d entries, want %d (entries deleted or inserted)", next+min(want, uint64(len(b.Entries))), bundle, len(b.Entries), want)
		}
		for _, e := range b.Entries {
			if o.Prior != nil && next == o.Prior.Size {
				if priorRoot, err = tree.GetRootHash(nil); err != nil {
					return State{}, err
				}
			}
			leaf := rfc6962.DefaultHasher.HashLeaf(e)
			if err := tree.Append(leaf, visit); err != nil {
				return State{}, err
			}
			if first, ok := seen[[32]byte(leaf)]; ok {
				copies = append(copies, Copy{Index: next, Of: first})
			} else {
				seen[[32]byte(leaf)] = next
			}
			if err := checkBatchEntry(ctx, e, next, o); err != nil {
				return State{}, err
			}
			if o.EntryKey != nil {
				seals.add(next, e)
			}
			next++
		}
	}
	if o.Prior != nil && o.Prior.Size == cp.Size {
		priorRoot, _ = tree.GetRootHash(nil)
	}
	root, err := tree.GetRootHash(nil)
	if err != nil {
		return State{}, err
	}
	if cp.Size == 0 {
		root = rfc6962.DefaultHasher.EmptyRoot() // an empty range has no hash of its own
	}
	// Compare every tile with the tree recomputed from the entries; the first difference
	// names the first entry (level 0) or subtree whose record was altered.
	if err := checkTiles(ctx, f, cp.Size, nodes); err != nil {
		return State{}, err
	}
	if !bytes.Equal(root, cp.Hash) {
		return State{}, securityf("entries and tiles agree but not with the signed checkpoint root (size %d): checkpoint altered", cp.Size)
	}
	if o.Prior != nil && o.Prior.Size > 0 && !bytes.Equal(priorRoot, o.Prior.Root) {
		return State{}, securityf("fork: the first %d entries no longer hash to the root accepted before", o.Prior.Size)
	}
	foreign, err := seals.unacknowledged()
	if err != nil {
		return State{}, err
	}
	return State{Origin: cp.Origin, Size: cp.Size, Root: cp.Hash, Checkpoint: raw, Foreign: foreign, Unsealed: uint64(len(seals.old)), Copies: copies}, nil
}

// batchKind marks a batch entry in its canonical bytes (ParseEvent confirms).
var batchKind = []byte(`"kind":"` + KindBatch + `"`)

// checkBatchEntry checks a request batch's records against the entry committing to them.
func checkBatchEntry(ctx context.Context, entry []byte, index uint64, o VerifyOptions) error {
	if !bytes.Contains(entry, batchKind) {
		return nil
	}
	ev, err := ParseEvent(entry)
	if err != nil || ev.Kind != KindBatch {
		return nil
	}
	if o.Bundles == nil {
		return fmt.Errorf("entry %d is a batch of request records, and no source of batch bundles was given", index)
	}
	b, err := o.Bundles(ctx, ev.Subject["bundle"])
	if err != nil {
		return securityf("entry %d: batch bundle %s unreadable (deleted?): %v", index, ev.Subject["bundle"], err)
	}
	if _, err := CheckBatch(ev, b); err != nil {
		return fmt.Errorf("entry %d: %w", index, err)
	}
	return nil
}

func checkTiles(ctx context.Context, f Fetcher, size uint64, nodes map[compact.NodeID][]byte) error {
	for level := uint64(0); size>>(8*level) > 0; level++ {
		width := size >> (8 * level) // complete nodes at this tile level
		for idx := uint64(0); idx*layout.TileWidth < width; idx++ {
			p := layout.PartialTileSize(level, idx, size)
			raw, err := f.ReadTile(ctx, level, idx, p)
			if err != nil {
				return securityf("tile %d/%d unreadable (deleted?): %v", level, idx, err)
			}
			var t api.HashTile
			if err := t.UnmarshalText(raw); err != nil {
				return securityf("tile %d/%d malformed: %v", level, idx, err)
			}
			n := min(uint64(layout.TileWidth), width-idx*layout.TileWidth)
			if uint64(len(t.Nodes)) > n && p != 0 {
				t.Nodes = t.Nodes[:n] // the full tile replaced the partial one since this checkpoint
			}
			if uint64(len(t.Nodes)) != n {
				return securityf("tile %d/%d holds %d hashes, want %d", level, idx, len(t.Nodes), n)
			}
			for j, h := range t.Nodes {
				at := idx*layout.TileWidth + uint64(j)
				want := nodes[compact.NewNodeID(uint(8*level), at)]
				if !bytes.Equal(h, want) {
					if level == 0 {
						return securityf("entry %d does not match its leaf hash in tile 0/%d (entry edited, deleted or reordered, or the tile altered)", at, idx)
					}
					return securityf("tile %d/%d: hash %d does not match the entries below it (entries %d..%d, or the tile, altered)", level, idx, j, at<<(8*level), ((at+1)<<(8*level))-1)
				}
			}
		}
	}
	return nil
}

// InclusionProof returns the proof that entry index is in the tree of the given size,
// built from the log's tiles.
func InclusionProof(ctx context.Context, f Fetcher, index, size uint64) ([][]byte, error) {
	pb, err := client.NewProofBuilder(ctx, size, f.ReadTile)
	if err != nil {
		return nil, err
	}
	return pb.InclusionProof(ctx, index)
}

// VerifyInclusion checks that entry (raw bytes) is at index in the tree with root.
func VerifyInclusion(entry []byte, index, size uint64, p [][]byte, root []byte) error {
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, index, size, rfc6962.DefaultHasher.HashLeaf(entry), p, root); err != nil {
		return securityf("entry %d: inclusion proof: %v", index, err)
	}
	return nil
}

// EncodeProof writes proof hashes as base64 lines, as tlog-tiles clients exchange them.
func EncodeProof(p [][]byte) []string {
	out := make([]string, len(p))
	for i, h := range p {
		out[i] = base64.StdEncoding.EncodeToString(h)
	}
	return out
}
