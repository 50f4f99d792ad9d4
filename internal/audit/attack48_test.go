package audit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strongroom/strongroom/internal/store"
)

// Outside round 48: the thirtieth session's acceptance of a dead journal's segment that is
// present but ends short of what the next segment's link names, when the batch holding the
// link's last record is in the log (checkLinks → linkedInLog). It broke: a batch entry
// was taken as whole by its place's name alone, so a batch folded from an older, shorter
// copy of a segment hid the rest of that place's records (TestAttack48RestoredCopy…).
// Fixed the same session: a logged batch counts its records (loggedBatches), a link is
// taken only when its batches' counts reach it, and a refold folds what a short batch
// of the same place lacks.

// a48Journal writes, as a killed process leaves them, keyed segments of the given batch
// size holding the given groups (one segment per element of segs), and returns their paths.
func a48Journal(t *testing.T, jdir string, batch int, segs ...[][]store.AuditEvent) []string {
	t.Helper()
	j, err := openJournal(jdir, batch, a17Key)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for i, groups := range segs {
		if i > 0 {
			if _, err := j.rotate(); err != nil {
				t.Fatal(err)
			}
		}
		for _, g := range groups {
			if err := j.append(g); err != nil {
				t.Fatal(err)
			}
		}
		paths = append(paths, j.f.Name())
	}
	j.close()
	return paths
}

// a48KeepFrames cuts the keyed segment at path to its first n frames (a crash's or an
// older copy's state: segments are append-only, so a prefix of frames is what it held).
func a48KeepFrames(t *testing.T, path string, n int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	frames := a17Frames(b, true)
	if n >= len(frames) {
		t.Fatalf("%s: %d frames, keep %d", path, len(frames), n)
	}
	if err := os.Truncate(path, int64(frames[n])); err != nil {
		t.Fatal(err)
	}
}

// a48Judge holds the promise after a start: refused loudly (Healthy names the journal
// directory, which is left with its segments), or every one of the want records logged
// exactly once, in order.
func a48Judge(t *testing.T, tl *testLog, healthy error, dir string, want int) {
	t.Helper()
	got := loggedRecords(t, tl.dir, tl.vkey)
	if healthy != nil {
		if !strings.Contains(healthy.Error(), filepath.Base(dir)) && !strings.Contains(healthy.Error(), dir) {
			t.Fatalf("refused without naming the directory %s: %v", filepath.Base(dir), healthy)
		}
		if !fileExists(dir) {
			t.Fatalf("the refused directory was removed (healthy: %v)", healthy)
		}
		return
	}
	if len(got) != want {
		t.Fatalf("the journal was taken silently, %d records in the log, want all %d (exactly once)", len(got), want)
	}
	wantInOrder(t, got, want)
}

// TestAttack48RestoredCopyAfterPartialLastBatch: the link's last batch in the log is taken
// as proof that every record the link names is in the log. It is not, when that batch was
// folded from an older (shorter) copy of the same segment: its entry holds fewer records.
//
// A dead process left D/1 (groups 0..10, 10..20, 20..25, 25..30; batch 10) and D/2
// (30..40, linking D/1 at 30 records) — all 40 acknowledged. Someone puts back an older
// copy of D taken while the process ran (D/1 of its first three frames, no D/2: as a
// kill -9 then would leave it); the next start folds it (D/1@0, @10, @20 = records 20..25).
// Then the directory as the process left it is put back (the copy taken at its death):
//   - "short": D/1 as in the older copy (25 records), D/2 linking 30. Before the thirtieth
//     session this was refused ("does not end as"); now the link's last batch, D/1@20, is
//     in the log, so it is taken.
//   - "whole": D/1 with all 30 records; its link holds, and the refold skips D/1@20 by
//     name though the chunk holds 10 records and the entry 5.
//
// Either way the start must refuse loudly or log records 25..30; it must not log 30..40
// after a silent hole.
func TestAttack48RestoredCopyAfterPartialLastBatch(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"short", "whole"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			tl := openTestLog(t)
			tl.record(t, 1) // an empty log has no checkpoint to verify
			jdir := filepath.Join(tl.dir, "journal")
			paths := a48Journal(t, jdir, 10,
				[][]store.AuditEvent{rawRecs(0, 10), rawRecs(10, 20), rawRecs(20, 25), rawRecs(25, 30)},
				[][]store.AuditEvent{rawRecs(30, 40)})
			atDeath := t.TempDir()
			copyDir(t, jdir, atDeath)
			// The older copy: D/1 of three frames, no D/2.
			a48KeepFrames(t, paths[0], 3)
			if err := os.Remove(paths[1]); err != nil {
				t.Fatal(err)
			}
			if err := a17NextStart(tl, jdir, a17Key); err != nil {
				t.Fatalf("the older copy (a crash's state) was refused: %v", err)
			}
			if fileExists(paths[0]) {
				t.Fatal("the older copy's segment was not folded")
			}
			// The directory as the process left it.
			copyDir(t, atDeath, jdir)
			if mode == "short" {
				a48KeepFrames(t, paths[0], 3)
			}
			healthy := a17NextStart(tl, jdir, a17Key)
			tl.close(t)
			got := loggedRecords(t, tl.dir, tl.vkey)
			if healthy == nil {
				if len(got) != 40 {
					t.Fatalf("%s D/1 with D/2 taken silently: %d records in the log, want 40 (records 25..30 acknowledged, missing while 30..40 are logged after them)", mode, len(got))
				}
				wantInOrder(t, got, 40)
				return
			}
			if !fileExists(filepath.Dir(paths[0])) {
				t.Fatalf("refused (%v) but the directory was removed", healthy)
			}
		})
	}
}

// TestAttack48ShortSegmentBoundaries: a dead journal's short segments (cut to a prefix of
// frames) after an earlier fold of it stopped (killed) with a prefix of its batches in the
// log. Taken only when every record a link names is in the log; otherwise refused naming
// the directory. Batch sizes 1, 10, 20 (batches spanning frames), link counts exactly at
// a batch boundary and one past it, several short segments in a row.
func TestAttack48ShortSegmentBoundaries(t *testing.T) {
	t.Parallel()
	type src struct{ seg, first int } // a batch the stopped fold logged
	g := func(b ...int) [][]store.AuditEvent {
		var out [][]store.AuditEvent
		for i := 0; i+1 < len(b); i++ {
			out = append(out, rawRecs(b[i], b[i+1]))
		}
		return out
	}
	for _, c := range []struct {
		name   string
		batch  int
		segs   [][][]store.AuditEvent
		logged []src // in order (a fold goes in order)
		keep   []int // frames kept of each segment; -1 whole
		total  int
	}{
		// link 20 = a batch boundary: its last record is in @10, which is not logged.
		{"boundary-last-batch-missing", 10, [][][]store.AuditEvent{g(0, 10, 20), g(20, 30)}, []src{{0, 0}}, []int{1, -1}, 30},
		{"boundary-all-logged", 10, [][][]store.AuditEvent{g(0, 10, 20), g(20, 30)}, []src{{0, 0}, {0, 10}}, []int{1, -1}, 30},
		// link 21: one past the boundary; @20 holds one record.
		{"one-past-boundary-missing", 10, [][][]store.AuditEvent{g(0, 10, 20, 21), g(21, 30)}, []src{{0, 0}, {0, 10}}, []int{2, -1}, 30},
		{"one-past-boundary-logged", 10, [][][]store.AuditEvent{g(0, 10, 20, 21), g(21, 30)}, []src{{0, 0}, {0, 10}, {0, 20}}, []int{2, -1}, 30},
		// batch 1: each record its batch.
		{"batch1-one-missing", 1, [][][]store.AuditEvent{g(0, 3, 6), g(6, 8)}, []src{{0, 0}, {0, 1}, {0, 2}, {0, 3}, {0, 4}}, []int{1, -1}, 8},
		{"batch1-all-logged", 1, [][][]store.AuditEvent{g(0, 3, 6), g(6, 8)}, []src{{0, 0}, {0, 1}, {0, 2}, {0, 3}, {0, 4}, {0, 5}}, []int{1, -1}, 8},
		// batch 20 over frames of 10: the short segment's kept frames are within @0.
		{"batch20-second-missing", 20, [][][]store.AuditEvent{g(0, 10, 20, 30), g(30, 35)}, []src{{0, 0}}, []int{1, -1}, 35},
		{"batch20-all-logged", 20, [][][]store.AuditEvent{g(0, 10, 20, 30), g(30, 35)}, []src{{0, 0}, {0, 20}}, []int{1, -1}, 35},
		// two short segments in a row: the first's batches logged, the second's last not.
		{"two-short-second-missing", 10, [][][]store.AuditEvent{g(0, 10, 20), g(20, 30, 40), g(40, 50)}, []src{{0, 0}, {0, 10}, {1, 0}}, []int{1, 1, -1}, 50},
		{"two-short-all-logged", 10, [][][]store.AuditEvent{g(0, 10, 20), g(20, 30, 40), g(40, 50)}, []src{{0, 0}, {0, 10}, {1, 0}, {1, 10}}, []int{1, 1, -1}, 50},
		// the first short, its last batch logged; the second short, not logged at all.
		{"two-short-second-unfolded", 10, [][][]store.AuditEvent{g(0, 10, 20), g(20, 30, 40), g(40, 50)}, []src{{0, 0}, {0, 10}}, []int{1, 1, -1}, 50},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tl := openTestLog(t)
			tl.record(t, 1) // an empty log has no checkpoint to verify
			jdir := filepath.Join(tl.dir, "journal")
			paths := a48Journal(t, jdir, c.batch, c.segs...)
			// Records of each segment, in order, to cut the stopped fold's batches from.
			folder := &Batcher{log: tl.log, bundles: DirBundles{Dir: tl.dir}, maxRecords: 100}
			for _, s := range c.logged {
				var recs []store.AuditEvent
				for _, grp := range c.segs[s.seg] {
					recs = append(recs, grp...)
				}
				chunk := recs[s.first:min(len(recs), s.first+c.batch)]
				if _, err := folder.commitRecords(chunk, journalSource(paths[s.seg], s.first), nil, nil, nil); err != nil {
					t.Fatal(err)
				}
			}
			for i, k := range c.keep {
				if k >= 0 {
					a48KeepFrames(t, paths[i], k)
				}
			}
			healthy := a17NextStart(tl, jdir, a17Key)
			tl.close(t)
			// All of a link's records logged: taking it is right (exactly once, in order);
			// otherwise it must be refused.
			allLogged := strings.HasSuffix(c.name, "-logged")
			if !allLogged && healthy == nil {
				t.Fatalf("a short segment whose linked records are not all in the log was taken: %d records logged of %d", len(loggedRecords(t, tl.dir, tl.vkey)), c.total)
			}
			if allLogged && healthy != nil {
				t.Fatalf("refused though every record is in the log: %v", healthy)
			}
			a48Judge(t, tl, healthy, filepath.Dir(paths[0]), c.total)
		})
	}
}
