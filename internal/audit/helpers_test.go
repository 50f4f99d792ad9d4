package audit

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/transparency-dev/tessera/api"
)

func rel(base, p string) string {
	r, _ := filepath.Rel(base, p)
	return r
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(to, rel(from, p))
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func replaceIn(t *testing.T, path, old, new string, n int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(old)) {
		t.Fatalf("%s does not contain %q", path, old)
	}
	os.WriteFile(path, bytes.Replace(b, []byte(old), []byte(new), n), 0o644)
}

func flip(t *testing.T, path string, off int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 1
	os.WriteFile(path, b, 0o644)
}

// flipInPlace flips the low bit of the byte at off of a file a live process holds (a
// segment, a mapped shadow), in place: rewriting it whole (flip) would cut it for a moment.
func flipInPlace(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var c [1]byte
	if _, err := f.ReadAt(c[:], off); err != nil {
		t.Fatal(err)
	}
	c[0] ^= 1
	if _, err := f.WriteAt(c[:], off); err != nil {
		t.Fatal(err)
	}
}

// rewriteBundle decodes an entry bundle, changes its entries and encodes it again.
func rewriteBundle(t *testing.T, path string, fn func([][]byte) [][]byte) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var b api.EntryBundle
	if err := b.UnmarshalText(raw); err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, e := range fn(b.Entries) {
		out = append(out, byte(len(e)>>8), byte(len(e)))
		out = append(out, e...)
	}
	os.WriteFile(path, out, 0o644)
}

// testEntryKey is the entry MAC key the tests' shared-log replicas hold (EntryKey).
var testEntryKey = EntryKey([]byte("strongroom test audit HMAC key, 32 bytes"))

// untilFIFOHang runs f and returns its result, and whether it was still running after wait
// — blocked, say, opening fifo for reading (os.ReadFile of a FIFO waits for a writer). A
// hung f is released by opening fifo for writing and closing it (its reader sees EOF), so
// the test can end and report the hang.
func untilFIFOHang[T any](fifo string, wait time.Duration, f func() T) (T, bool) {
	done := make(chan T, 1)
	go func() { done <- f() }()
	select {
	case v := <-done:
		return v, false
	case <-time.After(wait):
		if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
		return <-done, true
	}
}
