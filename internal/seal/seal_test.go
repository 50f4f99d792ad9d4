package seal

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

// detRand is a deterministic salt source for golden vectors.
type detRand byte

func (d detRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(d) + byte(i)
	}
	return len(p), nil
}

func sealBytes(t testing.TB, pt, dek []byte, opts Options) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := NewWriter(&out, dek, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(pt); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func openBytes(ct, dek []byte, ctx string) (*Reader, error) {
	return Open(bytes.NewReader(ct), int64(len(ct)), dek, OpenOptions{Context: ctx, Name: "f.srs"})
}

// TestSlicerSource: the zero-copy path for in-memory sources decrypts the same bytes and
// catches the same tampering.
func TestSlicerSource(t *testing.T) {
	pt := randBytes(3*MinChunkSize+5, 4)
	ct := sealBytes(t, pt, testKey(1), Options{ChunkSize: MinChunkSize})
	r, err := Open(Bytes(ct), int64(len(ct)), testKey(1), OpenOptions{Name: "f.srs"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := r.WriteTo(&out); err != nil || !bytes.Equal(out.Bytes(), pt) {
		t.Fatalf("slicer round trip: %v", err)
	}
	ct[HeaderSize+MinChunkSize+tagSize+3] ^= 1
	r, _ = Open(Bytes(ct), int64(len(ct)), testKey(1), OpenOptions{Name: "f.srs"})
	_, err = r.WriteTo(io.Discard)
	checkErr(t, err, ErrAuth, "chunk 1")
}

func unsealBytes(ct, dek []byte, ctx string) ([]byte, error) {
	r, err := openBytes(ct, dek, ctx)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	_, err = r.WriteTo(&out)
	return out.Bytes(), err
}

func randBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestRoundTripSizes(t *testing.T) {
	const cs = MinChunkSize
	for _, n := range []int{0, 1, cs - 1, cs, cs + 1, 2 * cs, 3*cs + 17, 10 * cs} {
		pt := randBytes(n, uint64(n))
		for _, workers := range []int{1, 4} {
			ct := sealBytes(t, pt, testKey(1), Options{ChunkSize: cs, Workers: workers, Context: "m@1/a"})
			got, err := unsealBytes(ct, testKey(1), "m@1/a")
			if err != nil {
				t.Fatalf("n=%d: %v", n, err)
			}
			if !bytes.Equal(got, pt) {
				t.Fatalf("n=%d workers=%d: round trip mismatch", n, workers)
			}
			r, _ := openBytes(ct, testKey(1), "m@1/a")
			if r.Size() != int64(n) {
				t.Fatalf("n=%d: Size()=%d", n, r.Size())
			}
		}
	}
}

// TestReadFromMatchesWrite: many small writes and one ReadFrom give the same stream.
func TestSmallWrites(t *testing.T) {
	pt := randBytes(5*MinChunkSize+100, 7)
	opts := Options{ChunkSize: MinChunkSize, Rand: detRand(3)}
	want := sealBytes(t, pt, testKey(2), opts)
	var out bytes.Buffer
	w, err := NewWriter(&out, testKey(2), opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(pt); i += 333 {
		if _, err := w.Write(pt[i:min(i+333, len(pt))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatal("chunking depends on write pattern")
	}
}

func TestReadAtRanges(t *testing.T) {
	pt := randBytes(7*MinChunkSize+123, 9)
	ct := sealBytes(t, pt, testKey(1), Options{ChunkSize: MinChunkSize})
	r, err := openBytes(ct, testKey(1), "")
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		off := rng.IntN(len(pt) + 10)
		n := rng.IntN(3 * MinChunkSize)
		p := make([]byte, n)
		m, err := r.ReadAt(p, int64(off))
		wantN := max(0, min(n, len(pt)-off))
		if m != wantN {
			t.Fatalf("ReadAt(%d, %d) = %d bytes, want %d", n, off, m, wantN)
		}
		if m < n && err != io.EOF {
			t.Fatalf("short ReadAt without EOF: %v", err)
		}
		if m == n && err != nil {
			t.Fatalf("full ReadAt with error %v", err)
		}
		if !bytes.Equal(p[:m], pt[off:off+m]) {
			t.Fatalf("ReadAt(%d, %d) wrong bytes", n, off)
		}
	}
	// io.SectionReader + io.ReadAll uses small sequential reads.
	all, err := io.ReadAll(io.NewSectionReader(r, 0, r.Size()))
	if err != nil || !bytes.Equal(all, pt) {
		t.Fatalf("sequential read: %v", err)
	}
}

// TestTamper covers each attack the format must catch, and checks that the error names the
// file and the right chunk.
func TestTamper(t *testing.T) {
	const cs = MinChunkSize
	pt := randBytes(4*cs+50, 11) // chunks 0..4, last one 50 bytes
	ct := sealBytes(t, pt, testKey(1), Options{ChunkSize: cs, Context: "a"})
	other := sealBytes(t, randBytes(4*cs+50, 12), testKey(1), Options{ChunkSize: cs, Context: "a"})
	full := cs + tagSize
	chunkAt := func(b []byte, i int) []byte { return b[HeaderSize+i*full : HeaderSize+(i+1)*full] }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	cases := []struct {
		name      string
		ct        []byte
		key       []byte
		ctx       string
		wantErr   error
		wantWhere string
	}{
		{"truncated mid chunk", ct[:len(ct)-10], testKey(1), "a", ErrIntegrity, "chunk 4"},
		{"truncated at boundary", ct[:HeaderSize+4*full], testKey(1), "a", ErrTruncated, "chunk 3"},
		{"truncated to header", ct[:HeaderSize], testKey(1), "a", ErrTruncated, "chunk 0"},
		{"truncated header", ct[:HeaderSize-1], testKey(1), "a", ErrFormat, "header"},
		{"chunks reordered", cat(ct[:HeaderSize], chunkAt(ct, 1), chunkAt(ct, 0), ct[HeaderSize+2*full:]), testKey(1), "a", ErrAuth, "chunk 0"},
		{"chunk duplicated", cat(ct[:HeaderSize], chunkAt(ct, 0), chunkAt(ct, 0), ct[HeaderSize+2*full:]), testKey(1), "a", ErrAuth, "chunk 1"},
		// Open authenticates the final chunk first, so a dropped chunk shows where the final chunk
		// no longer sits at its index.
		{"chunk dropped", cat(ct[:HeaderSize], chunkAt(ct, 0), ct[HeaderSize+2*full:]), testKey(1), "a", ErrAuth, "chunk 3"},
		{"wrong key", ct, testKey(2), "a", ErrKey, "header"},
		{"wrong context", ct, testKey(1), "b", ErrKey, "header"},
		{"header from another file", cat(other[:HeaderSize], ct[HeaderSize:]), testKey(1), "a", ErrAuth, "chunk 4"},
		{"chunk from another file", cat(ct[:HeaderSize+full], chunkAt(other, 1), ct[HeaderSize+2*full:]), testKey(1), "a", ErrAuth, "chunk 1"},
		{"appended bytes", cat(ct, []byte("x")), testKey(1), "a", ErrAuth, "chunk 4"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := unsealBytes(tc.ct, tc.key, tc.ctx)
			checkErr(t, err, tc.wantErr, tc.wantWhere)
		})
	}
}

func checkErr(t *testing.T, err, want error, where string) {
	t.Helper()
	if err == nil {
		t.Fatal("tampered file accepted")
	}
	if !errors.Is(err, want) {
		t.Fatalf("error %q does not wrap %q", err, want)
	}
	if !strings.Contains(err.Error(), "f.srs: "+where+":") {
		t.Fatalf("error %q does not name f.srs and %s", err, where)
	}
}

// TestFlipEveryBit flips each bit of a small sealed file; every flip must be caught, in
// the chunk (or header) that holds it.
func TestFlipEveryBit(t *testing.T) {
	const cs = MinChunkSize
	ct := sealBytes(t, randBytes(cs+10, 5), testKey(1), Options{ChunkSize: cs})
	for i := range ct {
		// Every bit of the header and of the last chunk, a sample of the first chunk's body.
		if i >= HeaderSize+64 && i < HeaderSize+cs && i%61 != 0 {
			continue
		}
		for bit := range 8 {
			bad := bytes.Clone(ct)
			bad[i] ^= 1 << bit
			_, err := unsealBytes(bad, testKey(1), "")
			where := "header"
			switch {
			case i >= HeaderSize+cs+tagSize:
				where = "chunk 1"
			case i >= HeaderSize:
				where = "chunk 0"
			}
			want := ErrIntegrity
			if i < 12 {
				want = ErrFormat // magic, version, algorithm, reserved, chunk size caps
				if i >= 8 {
					want = nil
				}
			}
			if want == nil {
				if err == nil {
					t.Fatalf("flip byte %d bit %d accepted", i, bit)
				}
				continue
			}
			checkErr(t, err, want, where)
		}
	}
}

func TestParseHeaderRoundTrip(t *testing.T) {
	ct := sealBytes(t, []byte("x"), testKey(1), Options{})
	h, err := ParseHeader(ct)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ct[:HeaderSize], h.Marshal()); diff != "" {
		t.Fatal(diff)
	}
}

// golden vectors: fixed key, salt, context and plaintext. If the format changes by one byte
// these fail; regenerate only with a new format version.
var goldens = []struct {
	file string
	pt   []byte
	cs   int
	ctx  string
}{
	{"empty.srs", nil, MinChunkSize, ""},
	{"hello.srs", []byte("hello, strongroom\n"), MinChunkSize, "demo@1.0.0/hello.txt"},
	{"three-chunks.srs", bytes.Repeat([]byte("0123456789abcdef"), 3*MinChunkSize/16-1), MinChunkSize, "demo@1.0.0/w.bin"},
}

func TestGolden(t *testing.T) {
	for _, g := range goldens {
		t.Run(g.file, func(t *testing.T) {
			keyID := [16]byte{0xaa, 0xbb}
			ct := sealBytes(t, g.pt, testKey(0x42), Options{KeyID: keyID, ChunkSize: g.cs, Context: g.ctx, Rand: detRand(0x10)})
			path := filepath.Join("testdata", g.file)
			if *update {
				if err := os.WriteFile(path, ct, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ct, want) {
				t.Fatalf("sealing no longer reproduces %s", path)
			}
			got, err := unsealBytes(want, testKey(0x42), g.ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, g.pt) {
				t.Fatalf("%s: plaintext mismatch", path)
			}
			r, _ := openBytes(want, testKey(0x42), g.ctx)
			if r.Header().KeyID != keyID {
				t.Fatal("key id not preserved")
			}
		})
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.after <= 0 {
		return 0, errors.New("disk full")
	}
	f.after--
	return len(p), nil
}

func TestWriteErrorSurfaces(t *testing.T) {
	w, err := NewWriter(&failWriter{after: 2}, testKey(1), Options{ChunkSize: MinChunkSize})
	if err != nil {
		t.Fatal(err)
	}
	_, werr := w.Write(randBytes(20*MinChunkSize, 1))
	cerr := w.Close()
	if werr == nil && cerr == nil {
		t.Fatal("write error lost")
	}
	if e := errors.Join(werr, cerr); !strings.Contains(e.Error(), "disk full") {
		t.Fatalf("error %q does not say why", e)
	}
}

type failReader struct{ n int }

func (f *failReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("file vanished")
	}
	m := min(len(p), f.n)
	f.n -= m
	return m, nil
}

func TestReadErrorWritesNoFinalChunk(t *testing.T) {
	var out bytes.Buffer
	w, _ := NewWriter(&out, testKey(1), Options{ChunkSize: MinChunkSize})
	if _, err := w.ReadFrom(&failReader{n: 3 * MinChunkSize}); err == nil {
		t.Fatal("read error lost")
	}
	if err := w.Close(); err == nil {
		t.Fatal("Close after read error succeeded")
	}
	if _, err := unsealBytes(out.Bytes(), testKey(1), ""); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("partial output opens: %v", err)
	}
}

func FuzzOpen(f *testing.F) {
	for _, g := range goldens {
		if b, err := os.ReadFile(filepath.Join("testdata", g.file)); err == nil {
			f.Add(b, g.ctx)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte, ctx string) {
		h, err := ParseHeader(b)
		if err == nil && !bytes.Equal(h.Marshal(), b[:HeaderSize]) {
			t.Fatal("header does not round-trip")
		}
		r, err := Open(bytes.NewReader(b), int64(len(b)), testKey(0x42), OpenOptions{Context: ctx, Name: "fuzz"})
		if err != nil {
			return
		}
		var out bytes.Buffer
		if _, err := r.WriteTo(&out); err != nil {
			return
		}
		if int64(out.Len()) != r.Size() {
			t.Fatalf("WriteTo wrote %d bytes, Size says %d", out.Len(), r.Size())
		}
		p := make([]byte, 100)
		r.ReadAt(p, r.Size()/2)
	})
}

// TestWriterAtMatchesStream: sealing into a seekable file (workers write at offsets) gives
// the same bytes as sealing into a plain stream, also when the file does not start at 0.
func TestWriterAtMatchesStream(t *testing.T) {
	pt := randBytes(9*MinChunkSize+77, 8)
	opts := Options{ChunkSize: MinChunkSize, Rand: detRand(9), Workers: 3}
	want := sealBytes(t, pt, testKey(1), opts)
	f, err := os.Create(filepath.Join(t.TempDir(), "x.srs"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write([]byte("prefix"))
	w, err := NewWriter(f, testKey(1), opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.ReadFrom(bytes.NewReader(pt)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(f.Name())
	if !bytes.Equal(got, append([]byte("prefix"), want...)) {
		t.Fatal("WriterAt path wrote different bytes")
	}
}

// memAt is an io.WriterAt over a byte slice.
type memAt []byte

func (m memAt) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }

// TestDecryptAt: decrypting at offsets on all cores gives the plaintext, from both kinds of
// source, and reports tampering with the chunk.
func TestDecryptAt(t *testing.T) {
	const cs = MinChunkSize
	for _, n := range []int{0, 1, cs, 3*cs + 17, 10 * cs} {
		pt := randBytes(n, uint64(n)+7)
		ct := sealBytes(t, pt, testKey(1), Options{ChunkSize: cs, Context: "m@1/a"})
		for _, src := range []io.ReaderAt{Bytes(ct), bytes.NewReader(ct)} {
			r, err := Open(src, int64(len(ct)), testKey(1), OpenOptions{Context: "m@1/a", Name: "f.srs", Workers: 3})
			if err != nil {
				t.Fatal(err)
			}
			dst := make(memAt, r.Size())
			if err := r.DecryptAt(dst); err != nil || !bytes.Equal(dst, pt) {
				t.Fatalf("n=%d %T: %v", n, src, err)
			}
		}
		if n > 2*cs {
			bad := bytes.Clone(ct)
			bad[HeaderSize+2*(cs+tagSize)+5] ^= 1
			r, err := Open(bytes.NewReader(bad), int64(len(bad)), testKey(1), OpenOptions{Context: "m@1/a", Name: "f.srs"})
			if err != nil {
				t.Fatal(err)
			}
			checkErr(t, r.DecryptAt(make(memAt, r.Size())), ErrAuth, "chunk 2")
		}
	}
}
