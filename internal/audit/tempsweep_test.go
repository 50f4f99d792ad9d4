package audit

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTesseraTempNames(t *testing.T) {
	for rel, want := range map[string]bool{
		"checkpoint":                         false,
		"checkpoint1":                        true,
		"checkpoint2147483647":               true,
		"checkpoint21474836470":              false, // 11 digits: no int32
		"checkpointx1":                       false,
		".state/treeState":                   false,
		".state/treeState.lock":              false,
		".state/treeState93":                 true,
		".state/gcState12345":                true,
		".state/version7":                    true,
		".state/strongroom.probe":            false,
		".state/shared-log-mine":             false,
		"tile/0/000":                         false,
		"tile/0/x001/234":                    false,
		"tile/0/x001/2341":                   true,
		"tile/0/0001234567":                  true,
		"tile/entries/x001/234.p/56":         false,
		"tile/entries/x001/234.p/255":        false,
		"tile/entries/x001/234.p/256":        true,
		"tile/entries/x001/234.p/5612":       true,
		"tile/entries/x001/234.p/07":         true,
		"tile/entries/000.p/18346658850":     true,  // the flake of the thirty-first session: width 18
		"tile/entries/000.p/183466588501234": false, // more digits than a width and an int32
		"tile/0/x001/23a4":                   false,
		"batches/ab/ab12345":                 false,
		"journal/1234567":                    false,
		"db12345":                            false,
	} {
		if got := tesseraTemp(rel); got != want {
			t.Errorf("tesseraTemp(%q) = %v, want %v", rel, got, want)
		}
	}
}

// TestTesseraTempNamesSparesTheLayout: no file a real log writes (tiles full and partial at
// two levels, entry bundles, the checkpoint and tessera's state, the batches beside them)
// is taken for a temporary one.
func TestTesseraTempNamesSparesTheLayout(t *testing.T) {
	tl := openTestLog(t)
	tl.record(t, 300) // a full tile at level 0, a partial one past it
	tl.close(t)
	n := 0
	filepath.WalkDir(tl.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(tl.dir, path)
		n++
		if tesseraTemp(filepath.ToSlash(rel)) {
			t.Errorf("a log's own file %s taken for a temporary file", rel)
		}
		return nil
	})
	if n < 5 {
		t.Fatalf("only %d files in the log", n)
	}
}

// tesseraTemps lists dir's files that tesseraTemp takes for temporary ones.
func tesseraTemps(t *testing.T, dir string) []string {
	t.Helper()
	var temps []string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, path)
			if tesseraTemp(filepath.ToSlash(rel)) {
				temps = append(temps, rel)
			}
		}
		return nil
	})
	return temps
}

// TestLogSweepsTemporaryFilesAfterAFullDisk: tessera v1.0.4's POSIX storage leaves the
// temporary file of every write that fails (tempsweep.go); on a disk that filled, they
// keep the space that comes back. A log on a full disk, recording until refused, then
// given the room back: it records again, and the files its failed writes left are gone
// a sweep later — the log's own files, written before the disk filled and after, intact.
func TestLogSweepsTemporaryFilesAfterAFullDisk(t *testing.T) {
	fsDir := tmpfsDir(t, "4m")
	tl := openTestLog(t)
	tl.close(t)
	tl.dir = filepath.Join(fsDir, "log")
	l, err := Open(context.Background(), Config{Dir: tl.dir, Signer: tl.signer, Index: tl.st, CheckpointInterval: 100 * time.Millisecond,
		EntryKey: testEntryKey, tempSweepAge: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	tl.log = l
	tl.record(t, 300)
	// Planted as an earlier process would leave them, and old: swept at start.
	old := time.Now().Add(-time.Hour)
	for _, rel := range []string{"checkpoint123", ".state/treeState4567", "tile/0/0009876"} {
		p := filepath.Join(tl.dir, rel)
		if err := os.WriteFile(p, []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, old, old)
	}
	fill := fillDisk(t, fsDir)
	refused := 0
	for i := 0; refused < 10 && i < 2000; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := l.Record(ctx, event(1000+i))
		cancel()
		if err != nil {
			if !errors.Is(err, ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
				t.Logf("refused: %v", err)
			}
			refused++
		}
	}
	if refused < 10 {
		t.Fatalf("a full disk refused %d records", refused)
	}
	left := tesseraTemps(t, tl.dir)
	t.Logf("temporary files on the full disk: %d %v", len(left), left)
	os.Remove(fill)
	waitFor(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := l.Record(ctx, event(5000))
		return err == nil
	})
	waitFor(t, func() bool { return len(tesseraTemps(t, tl.dir)) == 0 })
	if got := l.temps.swept.Load(); got < 3 {
		t.Fatalf("swept %d files, want the 3 planted at least", got)
	}
	t.Logf("swept %d files", l.temps.swept.Load())
	tl.record(t, 10)
	tl.close(t)
	tl.reopen(t)
	if strings.Contains(strings.Join(tesseraTemps(t, tl.dir), ","), "tile") {
		t.Fatal("temporary tiles back")
	}
	if st, err := tl.verify(nil); err != nil || st.Size < 311 {
		t.Fatalf("log after the sweep: %+v, %v", st, err)
	}
}
