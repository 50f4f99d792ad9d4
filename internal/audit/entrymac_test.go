package audit

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/client"
)

// TestEntryMAC: a sealed entry checks under its key and origin, parses as the event it
// was (with its MAC), and any change — a byte of the body, of the MAC, another origin or
// key, the MAC removed — is refused.
func TestEntryMAC(t *testing.T) {
	ev := event(7)
	ev.Fields = map[string]string{"note": `ends with "}`, "mac": "a field named mac"}
	body, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	e := sealEntry(testEntryKey, "strongroom.test/log", body)
	if len(e) != len(body)+macSuffix {
		t.Fatalf("sealed %d bytes from %d; want +%d", len(e), len(body), macSuffix)
	}
	if err := checkEntry(testEntryKey, "strongroom.test/log", e); err != nil {
		t.Fatal(err)
	}
	p, err := ParseEvent(e)
	if err != nil {
		t.Fatalf("a sealed entry does not parse: %v", err)
	}
	if len(p.MAC) != 64 || p.Fields["mac"] != "a field named mac" {
		t.Fatalf("parsed: %+v", p)
	}
	again, _ := p.Marshal()
	if !bytes.Equal(again, e) {
		t.Fatal("a sealed entry does not marshal back to itself")
	}
	for i := range e {
		x := bytes.Clone(e)
		x[i] ^= 0x01
		if checkEntry(testEntryKey, "strongroom.test/log", x) == nil {
			t.Fatalf("byte %d changed (%q), still accepted", i, x[max(0, i-5):min(len(x), i+5)])
		}
	}
	for name, bad := range map[string]error{
		"other origin": checkEntry(testEntryKey, "strongroom.test/other", e),
		"other key":    checkEntry(EntryKey([]byte("another audit key")), "strongroom.test/log", e),
		"unsealed":     checkEntry(testEntryKey, "strongroom.test/log", body),
		"upper-case":   checkEntry(testEntryKey, "strongroom.test/log", []byte(strings.ToUpper(string(e[:len(e)-66]))+strings.ToUpper(string(e[len(e)-66:])))),
		"empty":        checkEntry(testEntryKey, "strongroom.test/log", nil),
	} {
		if !errors.Is(bad, ErrEntryMAC) {
			t.Errorf("%s: %v; want ErrEntryMAC", name, bad)
		}
	}
}

// TestLogSealsEntries: a log with an entry key writes every entry sealed — one at the size
// limit too (truncated so that it fits with its MAC) — and what callers put in Event.MAC is
// not what is written.
func TestLogSealsEntries(t *testing.T) {
	tl := openTestLog(t)
	ctx := context.Background()
	big := event(1)
	big.Reason = strings.Repeat("r", MaxEventSize-200) // fits unsealed, not sealed
	if b, err := big.Marshal(); err != nil || len(b)+macSuffix <= MaxEventSize {
		t.Fatalf("the test event is %d bytes (%v): want it to fit only without its MAC", len(b), err)
	}
	forged := event(2)
	forged.MAC = strings.Repeat("0", 64)
	var idx []uint64
	for _, ev := range []Event{event(0), big, forged} {
		i, err := tl.log.Record(ctx, ev)
		if err != nil {
			t.Fatal(err)
		}
		idx = append(idx, i)
	}
	entries := map[uint64][]byte{}
	if err := ReadEntries(ctx, tl.log.Reader().ReadEntryBundle, 0, idx[2]+1, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			entries[e.Index] = e.Raw
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, i := range idx {
		e := entries[i]
		if len(e) > MaxEventSize {
			t.Errorf("entry %d is %d bytes", i, len(e))
		}
		if err := checkEntry(testEntryKey, tl.log.Origin(), e); err != nil {
			t.Errorf("entry %d: %v", i, err)
		}
	}
	if p, err := ParseEvent(entries[idx[1]]); err != nil || p.Fields["truncated"] != "true" {
		t.Fatalf("the large event: %v %+v", err, p.Fields)
	}
}

// FuzzCheckEntry: entries come from a database others can write; checking never panics and
// accepts nothing but what sealEntry wrote.
func FuzzCheckEntry(f *testing.F) {
	body, _ := (&Event{V: 1, TS: ts0, Kind: "model.unseal", Decision: Allow}).Marshal()
	f.Add(sealEntry(testEntryKey, "o", body))
	f.Add(body)
	f.Add([]byte(`,"mac":"` + strings.Repeat("0", 64) + `"}`))
	f.Fuzz(func(t *testing.T, e []byte) {
		if checkEntry(testEntryKey, "o", e) != nil {
			return
		}
		n := len(e) - macSuffix
		if n < 1 || !bytes.Equal(sealEntry(testEntryKey, "o", append(bytes.Clone(e[:n-1]), '}')), e) {
			t.Fatalf("accepted %q, which sealEntry does not write", e)
		}
	})
}

// TestSignerChecksTree: before it signs, the shared log's signer proves that the root it is
// asked to sign commits to exactly the entries it checked, extending the tree it signed
// before: a root over other leaves (tiles or tree state written by someone else), a tree
// smaller than one signed, or another root at a signed size is refused as a security error.
// (On a real log on local disk: the proofs are built from its tiles, as from the database's.)
func TestSignerChecksTree(t *testing.T) {
	tl := openTestLog(t)
	tl.record(t, 300) // two entry bundles, a partial tile
	tl.close(t)
	ctx := context.Background()
	f := client.FileFetcher{Root: tl.dir}
	var r tessera.LogReader = fileReader{f}
	signed, _ := f.ReadCheckpoint(ctx)
	var cp log.Checkpoint
	if _, err := cp.Unmarshal(signed); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	s := &leaderSigner{Signer: tl.signer, key: testEntryKey, log: newTextLogger(&logs)}
	if err := s.extends(ctx, r, cp); err != nil {
		t.Fatalf("the real tree: %v", err)
	}
	s.checked, s.root = 100, nil
	var mid log.Checkpoint
	mid.Size = 100
	if mid.Hash, _ = treeRoot(t, ctx, f, 100); mid.Hash == nil {
		t.Fatal("no root at 100")
	}
	s.root = mid.Hash
	if err := s.extends(ctx, r, cp); err != nil {
		t.Fatalf("from size 100 to %d: %v", cp.Size, err)
	}
	other := cp
	other.Hash = bytes.Clone(cp.Hash)
	other.Hash[0] ^= 1
	for name, c := range map[string]struct {
		checked uint64
		root    []byte
		cand    log.Checkpoint
	}{
		"a root over other leaves":           {0, nil, other},
		"a root over other leaves, from 100": {100, mid.Hash, other},
		"rolled back":                        {cp.Size, cp.Hash, mid},
		"forked":                             {cp.Size, other.Hash, cp},
	} {
		s.checked, s.root = c.checked, c.root
		if err := s.extends(ctx, r, c.cand); !errors.Is(err, ErrSecurity) {
			t.Errorf("%s: %v; want a security error", name, err)
		}
	}
}

// fileReader is a tessera.LogReader over a log's files (what extends reads).
type fileReader struct{ client.FileFetcher }

func (fileReader) NextIndex(context.Context) (uint64, error)      { return 0, errors.New("unused") }
func (fileReader) IntegratedSize(context.Context) (uint64, error) { return 0, errors.New("unused") }

// treeRoot is the root of the log's first size entries, from its tiles.
func treeRoot(t *testing.T, ctx context.Context, f client.FileFetcher, size uint64) ([]byte, error) {
	t.Helper()
	var leaves [][]byte
	if err := ReadEntries(ctx, f.ReadEntryBundle, 0, size, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			leaves = append(leaves, rfc6962.DefaultHasher.HashLeaf(e.Raw))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return mth(leaves), nil
}

// TestDigestsNeverHandOutDerivedKeys (outside round 63): the records' digests of values a
// client chooses — a prompt, a watermark question — are public (the log), and every key
// Strongroom derives is DeriveKey(audit key, label); a digest of a label must not be that
// key.
func TestDigestsNeverHandOutDerivedKeys(t *testing.T) {
	hk := bytes.Repeat([]byte{0x5a}, 32)
	r, err := NewRedactor(hk)
	if err != nil {
		t.Fatal(err)
	}
	for _, label := range []string{"strongroom/log-entry/v1", "strongroom/request-journal/v2", "strongroom/detect-bus/v1",
		"strongroom/limit-scopes/v1", "strongroom/key-revocations/v1", DigestLabel, ""} {
		k := hex.EncodeToString(DeriveKey(hk, label))
		for _, d := range []string{r.Digest(label), r.DigestBytes([]byte(label))} {
			if strings.Contains(d, k) {
				t.Errorf("the digest of %q is the key derived for it", label)
			}
		}
	}
}
