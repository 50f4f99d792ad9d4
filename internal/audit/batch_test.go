package audit

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/tessera/client"
)

func requestEvent(i int) Event {
	return Event{V: 1, TS: ts0.Add(time.Duration(i) * time.Millisecond), Kind: "gateway.request",
		Actor: map[string]string{"principal": fmt.Sprintf("p%d", i%4)}, Subject: map[string]string{"model": "m"}, Decision: Allow,
		Fields: map[string]string{"status": "200"}}
}

func (tl *testLog) verifyBatches() (State, error) {
	return Verify(context.Background(), client.FileFetcher{Root: tl.dir},
		VerifyOptions{LogKey: tl.vkey, Bundles: DirBundles{Dir: tl.dir}.Bundle})
}

// TestBatches: request records committed in batches (one log entry each) are durable when
// their futures resolve, indexed for search one by one, provable one by one (record in
// batch, batch in checkpoint), and verification catches an altered, dropped or reordered
// record, or a deleted bundle.
func TestBatches(t *testing.T) {
	tl := openTestLog(t)
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, MaxDelay: 20 * time.Millisecond})
	tl.record(t, 3) // security events, one entry each, around the batches
	var fs []Future
	for i := range 250 {
		fs = append(fs, b.Submit(context.Background(), requestEvent(i)))
	}
	idx := make([]uint64, len(fs))
	for i, f := range fs {
		var err error
		if idx[i], err = f(); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	tl.record(t, 1)
	if _, err := b.Submit(context.Background(), requestEvent(0))(); err == nil {
		t.Fatal("a closed batcher accepted a record")
	}
	tl.close(t)
	st, err := tl.verifyBatches()
	if err != nil {
		t.Fatal(err)
	}
	// 3 + 250/100 → 3 batches + 1 entries: far fewer entries than records.
	if st.Size != 7 {
		t.Fatalf("log size %d, want 7 (4 security events, 3 batches)", st.Size)
	}
	// Without a bundle source a log with batches does not verify.
	if _, err := tl.verify(nil); err == nil || !strings.Contains(err.Error(), "batch") {
		t.Fatalf("verified without the batches: %v", err)
	}

	// Record 137, proved on its own: its event in its batch, its batch in the checkpoint.
	entry, pos, ok := SplitRecordIndex(idx[137])
	if !ok || pos != 37 {
		t.Fatalf("record 137: entry %d pos %d ok %v", entry, pos, ok)
	}
	f := client.FileFetcher{Root: tl.dir}
	cp, _ := OpenCheckpoint(st.Checkpoint, VerifyOptions{LogKey: tl.vkey})
	var batchEntry []byte
	ReadEntries(context.Background(), f.ReadEntryBundle, entry, entry+1, func(evs []store.AuditEvent) error {
		batchEntry = evs[0].Raw
		return nil
	})
	p, err := InclusionProof(context.Background(), f, entry, cp.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyInclusion(batchEntry, entry, cp.Size, p, cp.Hash); err != nil {
		t.Fatal(err)
	}
	bev, _ := ParseEvent(batchEntry)
	bundle, err := DirBundles{Dir: tl.dir}.Bundle(context.Background(), bev.Subject["bundle"])
	if err != nil {
		t.Fatal(err)
	}
	recs, err := CheckBatch(bev, bundle)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := BatchInclusion(recs, pos)
	if err != nil {
		t.Fatal(err)
	}
	ev137 := requestEvent(137)
	want, _ := ev137.Marshal()
	root, _ := hex.DecodeString(bev.Fields["root"])
	if err := VerifyRecord(want, uint64(pos), uint64(len(recs)), rp, root); err != nil {
		t.Fatalf("record 137 does not prove: %v", err)
	}
	ev138 := requestEvent(138)
	other, _ := ev138.Marshal()
	if err := VerifyRecord(other, uint64(pos), uint64(len(recs)), rp, root); err == nil {
		t.Fatal("another record proved at 137's place")
	}

	// The search index has every record (principal, kind), under its record number.
	got, err := tl.st.SearchAudit(context.Background(), store.AuditQuery{Principal: "p1", Kind: "gateway.request"})
	if err != nil || len(got) != 250/4+1 {
		t.Fatalf("search: %d records, %v", len(got), err)
	}
	if n, _ := tl.st.AuditIndexed(context.Background()); n != st.Size {
		t.Fatalf("index reached %d of %d entries", n, st.Size)
	}

	// Tampering: every change to a bundle is caught, and names the batch.
	path, _ := DirBundles{Dir: tl.dir}.path(bev.Subject["bundle"])
	orig, _ := os.ReadFile(path)
	for name, mutate := range map[string]func([][]byte) [][]byte{
		"altered": func(r [][]byte) [][]byte {
			r[5] = bytes.Replace(r[5], []byte(`"allow"`), []byte(`"deny"`), 1)
			return r
		},
		"dropped":   func(r [][]byte) [][]byte { return append(r[:5], r[6:]...) },
		"reordered": func(r [][]byte) [][]byte { r[5], r[6] = r[6], r[5]; return r },
		"inserted":  func(r [][]byte) [][]byte { return append(r, r[0]) },
	} {
		rs, _ := DecodeBundle(orig)
		tampered, _ := EncodeBundle(mutate(append([][]byte(nil), rs...)))
		os.WriteFile(path, tampered, 0o644)
		if _, err := tl.verifyBatches(); !errors.Is(err, ErrSecurity) {
			t.Errorf("%s record: verify says %v", name, err)
		}
	}
	// A bundle re-encoded under its new name does not help: the entry names the old one.
	os.Remove(path)
	if _, err := tl.verifyBatches(); !errors.Is(err, ErrSecurity) || !strings.Contains(err.Error(), "unreadable") {
		t.Errorf("deleted bundle: verify says %v", err)
	}
	os.WriteFile(path, orig, 0o644)
	if _, err := tl.verifyBatches(); err != nil {
		t.Fatalf("restored: %v", err)
	}
}

// TestBatchIndexFromDisk: a process that did not commit the batches (a restart, another
// replica) indexes their records from the bundles.
func TestBatchIndexFromDisk(t *testing.T) {
	tl := openTestLog(t)
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 10, MaxDelay: 10 * time.Millisecond})
	var fs []Future
	for i := range 25 {
		fs = append(fs, b.Submit(context.Background(), requestEvent(i)))
	}
	for _, f := range fs {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	tl.close(t)
	st2, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	l, err := Open(context.Background(), Config{Dir: tl.dir, Signer: tl.signer, Index: st2})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(context.Background())
	// The index keeps no record bytes: a search reads them from the bundles, checked against
	// their batch entries. An altered bundle fails the search; a restored one answers.
	files, _ := filepath.Glob(filepath.Join(tl.dir, "batches", "*", "*"))
	if len(files) != 3 {
		t.Fatalf("%d bundles, want 3", len(files))
	}
	orig, _ := os.ReadFile(files[1])
	altered := bytes.Replace(orig, []byte(`"p1"`), []byte(`"p9"`), 1)
	if bytes.Equal(altered, orig) {
		t.Fatal("nothing to alter in the bundle")
	}
	os.WriteFile(files[1], altered, 0o644)
	if _, err := st2.SearchAudit(context.Background(), store.AuditQuery{Kind: "gateway.request"}); err == nil {
		t.Fatal("a search over an altered bundle succeeded")
	}
	os.WriteFile(files[1], orig, 0o644)
	got, err := st2.SearchAudit(context.Background(), store.AuditQuery{Kind: "gateway.request"})
	if err != nil || len(got) != 25 {
		t.Fatalf("%d records indexed from disk, want 25 (%v)", len(got), err)
	}
	// Every record read back is one that was submitted (batches may commit in any order),
	// each once, under the principal its bytes name.
	want := map[string]string{}
	for i := range 25 {
		ev := requestEvent(i)
		b, _ := ev.Marshal()
		want[string(b)] = fmt.Sprintf("p%d", i%4)
	}
	for _, e := range got {
		p, ok := want[string(e.Raw)]
		if !ok || e.Principal != p {
			t.Fatalf("record %x: %s (principal %s): not a submitted record, or another's principal", e.Index, e.Raw, e.Principal)
		}
		delete(want, string(e.Raw))
	}
}

func FuzzDecodeBundle(f *testing.F) {
	b, _ := EncodeBundle([][]byte{[]byte(`{"a":1}`), nil, []byte("x")})
	f.Add(b)
	f.Add([]byte(bundleMagic + "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"))
	dir := f.TempDir()
	for i, key := range [][]byte{nil, bytes.Repeat([]byte{3}, 32)} {
		j, err := openJournal(filepath.Join(dir, strconv.Itoa(i)), 7, key)
		if err != nil {
			f.Fatal(err)
		}
		j.append(rawRecs(0, 2))
		j.append(nil)
		j.append(rawRecs(2, 3))
		seg, _ := j.rotate()
		j.close()
		b, _ := os.ReadFile(seg.path)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		recs, err := DecodeBundle(in)
		if err != nil {
			return
		}
		if bytes.HasPrefix(in, []byte(journalMagic)) || bytes.HasPrefix(in, []byte(journalMagicV2)) {
			// A journal segment (v2): accepted only whole — not with a byte less or more.
			if _, err := DecodeBundle(in[:len(in)-1]); err == nil {
				t.Fatalf("a segment bundle cut by a byte still decodes")
			}
			if _, err := DecodeBundle(append(bytes.Clone(in), 0)); err == nil {
				t.Fatalf("a segment bundle with a byte after it still decodes")
			}
			if len(recs) > MaxBatch {
				t.Fatalf("%d records", len(recs))
			}
			return
		}
		again, _ := EncodeBundle(recs)
		if !bytes.Equal(again, in) {
			t.Fatalf("decode/encode not the identity")
		}
	})
}

// TestBarrier: Barrier commits waiting records at once (not after MaxDelay) and names the
// entry that covers them.
func TestBarrier(t *testing.T) {
	tl := openTestLog(t)
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 1000, MaxDelay: time.Hour})
	defer b.Close()
	if _, ok, err := b.Barrier(context.Background()); ok || err != nil {
		t.Fatalf("empty batcher: ok %v err %v", ok, err)
	}
	f := b.Submit(context.Background(), requestEvent(1))
	idx, ok, err := b.Barrier(context.Background())
	if err != nil || !ok {
		t.Fatalf("barrier: %v %v", ok, err)
	}
	rec, err := f()
	if err != nil {
		t.Fatal(err)
	}
	if entry, _, _ := SplitRecordIndex(rec); entry != idx {
		t.Fatalf("record in entry %d, barrier says %d", entry, idx)
	}
}

// TestReadEntry: every entry of a checkpoint can be read and proven, also those integrated
// together (no partial bundle was ever written at their index+1).
func TestReadEntry(t *testing.T) {
	tl := openTestLog(t)
	tl.record(t, 40) // submitted together: few integrations
	tl.close(t)
	f := client.FileFetcher{Root: tl.dir}
	raw, err := f.ReadCheckpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cp, err := OpenCheckpoint(raw, VerifyOptions{LogKey: tl.vkey})
	if err != nil {
		t.Fatal(err)
	}
	for i := range cp.Size {
		pe, err := Prove(context.Background(), f, VerifyOptions{LogKey: tl.vkey}, cp.Size, cp.Hash, i)
		if err != nil {
			t.Fatalf("entry %d of %d: %v", i, cp.Size, err)
		}
		e := event(int(i))
		want, _ := e.Marshal()
		if want = sealEntry(testEntryKey, tl.signer.Name(), want); !bytes.Equal(pe.Event, want) {
			t.Fatalf("entry %d: %s", i, pe.Event)
		}
	}
}

// TestAppendBundleReuse: a bundle written into the last one's storage is byte for byte
// EncodeBundle's, whether the buffer was larger (no tail of the last) or too small.
func TestAppendBundleReuse(t *testing.T) {
	big := [][]byte{[]byte(strings.Repeat("a", 3000)), []byte("b")}
	small := [][]byte{[]byte("c"), []byte("dd")}
	var buf []byte
	for _, recs := range [][][]byte{big, small, big} {
		want, wantName := EncodeBundle(recs)
		got, name := AppendBundle(buf, recs)
		if !bytes.Equal(got, want) || name != wantName {
			t.Fatalf("reused buffer: %d bytes %s, want %d bytes %s", len(got), name, len(want), wantName)
		}
		if dec, err := DecodeBundle(got); err != nil || len(dec) != len(recs) {
			t.Fatalf("decode: %d records, %v", len(dec), err)
		}
		buf = got
	}
}
