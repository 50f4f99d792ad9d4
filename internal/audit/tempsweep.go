package audit

import (
	"cmp"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// tessera v1.0.4's POSIX storage writes every file through a temporary one beside it,
// named the target's path followed by a random non-negative int32 in decimal, then links
// or renames it into place. When the write into the temporary file fails (a full disk),
// createTemp returns "" as the name before its own deferred remove runs, so the remove is
// of "" and the partial file stays (tessera logs "Failed to remove temporary file"
// name=""). Every failed tile, checkpoint or state write on a full disk leaves one, and
// each keeps the space that was free when it was written: on a disk that filled, the
// space that comes back is taken by files nothing reads. The log sweeps them: once at
// start, and after storage failures, each time only files older than tempSweepAge (one
// still being written by tessera is younger; removing one in flight costs tessera a
// retried write, never an entry).

// tempSweepAge is how old a temporary file must be before a sweep removes it, and how long
// after a storage failure the sweep runs (Config.tempSweepAge: tests' own).
const tempSweepAge = 30 * time.Second

// tempSweep tracks when the log's POSIX directory is due a sweep.
type tempSweep struct {
	dir     string
	age     time.Duration // tempSweepAge
	dueAt   atomic.Int64  // unix nanoseconds a sweep is due at; 0: none due
	running atomic.Bool
	swept   atomic.Int64 // files removed, over the process's life
}

// failed notes a storage failure at now: a sweep is due tempSweepAge after the last one.
func (s *tempSweep) failed(now time.Time) {
	if s != nil {
		s.dueAt.Store(now.Add(s.age).UnixNano())
	}
}

// poll starts a due sweep (one at a time) through spawn, which runs it in a goroutine the
// log's Close waits for; stop ends a sweep early. The log's probe calls it.
func (s *tempSweep) poll(now time.Time, spawn func(func()), stop <-chan struct{}, log func(n int, bytes int64, err error)) {
	if s == nil {
		return
	}
	due := s.dueAt.Load()
	if due == 0 || now.UnixNano() < due || !s.running.CompareAndSwap(false, true) {
		return
	}
	if !s.dueAt.CompareAndSwap(due, 0) { // a newer failure moved it
		s.running.Store(false)
		return
	}
	spawn(func() {
		defer s.running.Store(false)
		n, size, err := sweepTesseraTemps(s.dir, time.Now().Add(-s.age), stop)
		s.swept.Add(int64(n))
		log(n, size, err)
	})
}

// sweepTesseraTemps removes, under dir (a tessera POSIX log), the temporary files tessera
// left (tesseraTemp) last modified before cutoff. Only tessera's own paths are looked at
// (the checkpoint's, .state and tile): the journal, bundles and index beside them are never
// touched. It returns how many files it removed and their size; a directory it cannot read
// is an error, after the rest is swept. A closed stop ends the walk.
func sweepTesseraTemps(dir string, cutoff time.Time, stop <-chan struct{}) (n int, size int64, err error) {
	werr := filepath.WalkDir(dir, func(path string, d fs.DirEntry, derr error) error {
		if derr != nil { // unreadable: named, the rest swept
			err = cmp.Or(err, derr)
			return nil
		}
		select {
		case <-stop:
			return filepath.SkipAll
		default:
		}
		rel, rerr := filepath.Rel(dir, path)
		rel = filepath.ToSlash(rel)
		switch {
		case rerr != nil:
			return nil
		case d.IsDir():
			if rel != "." && !strings.Contains(rel, "/") && rel != ".state" && rel != "tile" {
				return filepath.SkipDir // the journal, batches, index: not tessera's
			}
			return nil
		case !tesseraTemp(rel):
			return nil
		}
		if info, ierr := d.Info(); ierr == nil && info.Mode().IsRegular() && info.ModTime().Before(cutoff) && os.Remove(path) == nil {
			n++
			size += info.Size()
		}
		return nil
	})
	return n, size, cmp.Or(err, werr)
}

// tesseraTemp says whether rel (a path under a tessera POSIX log, '/'-separated) names
// one of tessera's temporary files: a file's name followed by 1 to 10 decimal digits
// where no file of that layout has such a name.
//   - checkpoint<digits>, and .state/<treeState|gcState|version><digits>;
//   - under tile/, a name of digits only: a tile's is exactly 3 digits ("000"–"999"),
//     a partial tile's (in a "NNN.p" directory) its width, 1–255 without a leading zero.
//     A partial tile's temporary name of three digits or fewer that reads as a width
//     (chance ~1 in 20 million a write) is left: it cannot be told from a tile.
func tesseraTemp(rel string) bool {
	digitsAfter := func(s, prefix string) bool {
		rest, ok := strings.CutPrefix(s, prefix)
		return ok && len(rest) >= 1 && len(rest) <= 10 && allDigits(rest)
	}
	if !strings.Contains(rel, "/") {
		return digitsAfter(rel, "checkpoint")
	}
	if name, ok := strings.CutPrefix(rel, ".state/"); ok {
		return digitsAfter(name, "treeState") || digitsAfter(name, "gcState") || digitsAfter(name, "version")
	}
	if !strings.HasPrefix(rel, "tile/") {
		return false
	}
	dir, name := rel[:strings.LastIndexByte(rel, '/')], rel[strings.LastIndexByte(rel, '/')+1:]
	if !allDigits(name) || len(name) < 2 || len(name) > 13 {
		return false
	}
	if !strings.HasSuffix(dir, ".p") {
		return len(name) > 3
	}
	if len(name) > 3 || name[0] == '0' {
		return true
	}
	w, _ := strconv.Atoi(name)
	return w > 255
}

func allDigits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
