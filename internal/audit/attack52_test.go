package audit

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Outside round 52 (helper-52): the written journal's shadows against the product's notion
// of "the same journal" — a shadow root named by the hash of the journal root's resolved
// path, a "journal" marker naming that path, and a process directory's random name — when
// paths change between a process's death and the refold: a data directory moved, a bind
// mount gone, a journal root that is a symlink retargeted, the shadow base replaced, a
// copy (backup) refolded meanwhile.
//
// Promise under attack: with request durability "written", every acknowledged record is in
// the log exactly once, in order, after any process crash (kill -9) and restart — and no
// process ever removes, takes or double-folds records that are not its own.
//
// Findings (as run by helper-52):
//   - BROKEN …CopyRefoldedAfterOriginalMoved (moved, moved/open, away and back, bind gone):
//     a copy's refold takes a shadow root whose journal is "gone" for its own (mine) — but
//     "gone from that path" is not "dead": the original moved, unmounted for a while, or
//     run via a bind mount that went. The copy folds the original's 30 shadow-only records
//     into the copy's log and removes them; the original's restart logs 220 of 250, healthy.
//   - BROKEN …ShadowBaseReplaced/fresh tmpfs: a new tmpfs at the shadow base between
//     lifetimes (a container's private /dev/shm) — 220 of 250, healthy, no ALERT.
//   - Held: …JournalLinkRetargeted (moved, copied then rolled back, fresh then back) and
//     …TwoPathsOneJournal (bind mount, dotted path). With the bind mount, A's shadow is
//     left on /dev/shm after its directory was folded via the other path (tmpfs held, not
//     records).

// a52Dead is a50Dead on the journal root root (which may be a link or a bind mount): a
// written process writes 250 records (segments of 100: S0, S1 closed; S2 open with 20
// synced and 30 only in its shadow) and is killed. It checks that premise — S2 on the disk
// holds 20 records, its shadow 50 — and returns the process directory and S2's shadow.
func a52Dead(t *testing.T, root string) (dir, shadow string) {
	t.Helper()
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	sroot := shadowRootFor(root)
	t.Cleanup(func() { os.RemoveAll(sroot) })
	j, err := openJournalWith(&journal{root: root, batch: 100, key: a17Key, packed: true}, 0)
	if err != nil {
		t.Fatal(err)
	}
	a51WriteSyncedAt220(t, j)
	dir, shadow = j.dir, j.shadowPath
	writtenKill(j)
	a52Premise(t, dir, shadow)
	return dir, shadow
}

// a52Premise: the dead directory's last segment holds 20 records on the disk and 50 in its
// shadow (30 acknowledged records exist only on tmpfs).
func a52Premise(t *testing.T, dir, shadow string) {
	t.Helper()
	segs := a33Segments(t, dir)
	if len(segs) != 3 || shadow == "" {
		t.Fatalf("premise: %d segments, shadow %q", len(segs), shadow)
	}
	count := func(p, as string) int {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("premise: %v", err)
		}
		sc, err := scanSegment(b, as, a17Key, false)
		if err != nil {
			t.Fatalf("premise: %s: %v", p, err)
		}
		return len(sc.recs)
	}
	disk, shad := count(segs[2], segs[2]), count(shadow, segs[2])
	if disk != 20 || shad != 50 {
		t.Fatalf("premise: the open segment holds %d records on the disk and %d in its shadow, want 20 and 50", disk, shad)
	}
}

// a52Judge is a50Judge saying CLAIM BROKEN: refused naming the directory (left on disk),
// or requestEvent(0..want-1) each logged exactly once, in order. The log is closed.
func a52Judge(t *testing.T, tl *testLog, healthy error, dir string, want int, claim string) {
	t.Helper()
	tl.close(t)
	if healthy != nil {
		if !strings.Contains(healthy.Error(), filepath.Base(dir)) || !fileExists(dir) {
			t.Fatalf("CLAIM BROKEN: %s: refused without naming or keeping the directory %s: %v", claim, filepath.Base(dir), healthy)
		}
		t.Logf("refused, operator told: %.300v", healthy)
		return
	}
	got := loggedRecords(t, tl.dir, tl.vkey)
	if len(got) != want {
		t.Fatalf("CLAIM BROKEN: %s: the log holds %d of the %d acknowledged records (taken silently, healthy)", claim, len(got), want)
	}
	for i, r := range got {
		if !bytes.Equal(r, mustMarshal(t, requestEvent(i))) {
			t.Fatalf("CLAIM BROKEN: %s: record %d of the log is not the %d-th acknowledged (out of order or twice)", claim, i, i)
		}
	}
}

// a52Bind bind-mounts from at a new directory and returns it (unmounted at cleanup).
func a52Bind(t *testing.T, from string) string {
	t.Helper()
	at := filepath.Join(t.TempDir(), "bind")
	if err := os.Mkdir(at, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "--bind", from, at).CombinedOutput(); err != nil {
		t.Skipf("cannot bind-mount (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", at).Run() })
	return at
}

// TestAttack52CopyRefoldedAfterOriginalMoved: a written process is killed (30 acknowledged
// records only in S2's shadow). A backup copy of its data directory exists elsewhere on
// the host (cp -a before a migration; a restore drill). Then the original's journal root
// stops existing at the path its process used — and the copy is refolded (a start, or any
// CLI command on the copy) before the original restarts:
//   - moved: the data directory moved to another disk/path (mv), started there later;
//   - away and back: its journal root absent while the copy's refold runs (a disk not yet
//     mounted, a directory moved aside and back), then restarted at the same path;
//   - bind gone: the process ran via a bind mount of the data directory (a container's
//     volume) that is gone (unmounted, the mount point removed); restarted via the real
//     path.
//
// The refold of the copy reads the original's shadow root's directory of the same name,
// sees that root's journal "gone" (shadowJournalGone), takes it for its own (mine) and
// removes it after folding it into the *copy's* log. Claim: the original's next start logs
// all 250 once, in order (or refuses, naming the directory). Control "moved/original
// first": the moved original restarts before the copy is refolded.
func TestAttack52CopyRefoldedAfterOriginalMoved(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"moved", "moved/open", "away and back", "bind gone", "moved/original first"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			tl := openTestLog(t)
			tl.record(t, 1) // an empty log has no checkpoint to verify
			jdir := filepath.Join(tl.dir, "journal")
			if err := os.MkdirAll(jdir, 0o700); err != nil {
				t.Fatal(err)
			}
			root := jdir
			var bind string
			if how == "bind gone" {
				bind = a52Bind(t, tl.dir)
				root = filepath.Join(bind, "journal")
			}
			dir, shadow := a52Dead(t, root)
			dir = filepath.Join(jdir, filepath.Base(dir)) // where it is on the disk, by the real path
			tl2, jdir2 := a51Copy(t, dir)                 // the backup copy (another data directory)
			restart := jdir
			switch how {
			case "moved", "moved/open", "moved/original first":
				moved := filepath.Join(tl.dir, "journal-moved")
				t.Cleanup(func() { os.RemoveAll(shadowRootFor(moved)) })
				if err := os.Rename(jdir, moved); err != nil {
					t.Fatal(err)
				}
				restart = moved
			case "away and back":
				aside := filepath.Join(tl.dir, "journal-aside")
				if err := os.Rename(jdir, aside); err != nil {
					t.Fatal(err)
				}
			case "bind gone":
				if out, err := exec.Command("umount", bind).CombinedOutput(); err != nil {
					t.Fatalf("umount: %v %s", err, out)
				}
				if err := os.Remove(bind); err != nil {
					t.Fatal(err)
				}
			}
			if how == "moved/original first" {
				healthy := a50Start(tl, restart)
				a50Refold(t, tl2, jdir2, false)
				a52Judge(t, tl, healthy, filepath.Join(restart, filepath.Base(dir)), 250, "the moved original started first")
				return
			}
			h2 := a50Refold(t, tl2, jdir2, how == "moved/open")
			left := fileExists(shadow)
			t.Logf("the copy's refold: healthy %v; the original's shadow (30 records only there) still on /dev/shm after it: %v", h2, left)
			if how == "away and back" {
				if err := os.Rename(filepath.Join(tl.dir, "journal-aside"), jdir); err != nil {
					t.Fatal(err)
				}
			}
			healthy := a50Start(tl, restart)
			a52Judge(t, tl, healthy, filepath.Join(restart, filepath.Base(dir)), 250,
				"a backup copy's refold took the original's shadow (original's journal root "+how+")")
		})
	}
}

// TestAttack52ShadowBaseReplaced: a written process is killed (30 acknowledged records only
// in S2's shadow) and, before its restart, the shadow base is a fresh tmpfs — a container
// restarted after its process died gets a new private /dev/shm (docker's default), a
// tmpfs mounted over /dev/shm, a service manager's RemoveIPC. The host did not crash.
// Claim: the restart logs all 250 once, or refuses / says (an ALERT) that records
// acknowledged may be lost — not 220 silently. Control "same tmpfs": 250.
//
// Serial: sets the package's ShadowBase (a tmpfs of its own, so /dev/shm is left alone).
func TestAttack52ShadowBaseReplaced(t *testing.T) {
	for _, how := range []string{"fresh tmpfs", "same tmpfs"} {
		t.Run(how, func(t *testing.T) {
			base := tmpfsDir(t, "64m")
			defer func(b string) { ShadowBase = b }(ShadowBase)
			ShadowBase = base
			tl := openTestLog(t)
			tl.record(t, 1)
			jdir := filepath.Join(tl.dir, "journal")
			dir, _ := a52Dead(t, jdir)
			if how == "fresh tmpfs" {
				if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", base).CombinedOutput(); err != nil {
					t.Fatalf("mount: %v %s", err, out)
				}
				t.Cleanup(func() { exec.Command("umount", "-l", base).Run() }) // before tmpfsDir's: LIFO
			}
			logs := a50Logs(t, tl)
			healthy := a50Start(tl, jdir)
			said := logs.String()
			t.Logf("the restart: healthy %v; ALERT said: %v", healthy, strings.Contains(said, "ALERT"))
			if healthy == nil && strings.Contains(said, "ALERT") {
				t.Logf("operator told: %.400s", said)
				return
			}
			a52Judge(t, tl, healthy, dir, 250, "the shadow base was replaced between lifetimes (no host crash), nothing said")
		})
	}
}

// TestAttack52JournalLinkRetargeted: the journal root is a symlink L → X (DATA/log/journal
// on another disk). A written process writes via L and is killed (30 records only in its
// shadow, under the shadow root of X, whose marker names X). Between lifetimes L is
// retargeted:
//   - moved: X moved to Y, L → Y (a migration by mv): the restart via L resolves Y;
//   - copied, rolled back: X copied to Y, L → Y, restarted (the copy's A folded, X's
//     shadow root read but kept — X still exists); then rolled back (L → X) and restarted:
//     X still holds A's directory and its shadow — folded again into the same log?
//   - fresh, then back: L → a fresh empty Y, restarted (nothing of A), then L → X again.
//
// Claim: the log holds the 250 once, in order, after the last restart.
func TestAttack52JournalLinkRetargeted(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"moved", "copied, rolled back", "fresh, then back"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			tl := openTestLog(t)
			tl.record(t, 1)
			disks := t.TempDir()
			x, y := filepath.Join(disks, "x", "journal"), filepath.Join(disks, "y", "journal")
			for _, d := range []string{filepath.Dir(x), filepath.Dir(y)} {
				if err := os.Mkdir(d, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Mkdir(x, 0o700); err != nil {
				t.Fatal(err)
			}
			link := filepath.Join(tl.dir, "journal")
			if err := os.Symlink(x, link); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				os.RemoveAll(shadowRootAt(x))
				os.RemoveAll(shadowRootAt(y))
			})
			retarget := func(to string) {
				tmp := link + ".new"
				if err := os.Symlink(to, tmp); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, link); err != nil { // ln -sfn
					t.Fatal(err)
				}
			}
			dir, shadow := a52Dead(t, link)
			name := filepath.Base(dir)
			var healthy error
			switch how {
			case "moved":
				if err := os.Rename(x, y); err != nil {
					t.Fatal(err)
				}
				retarget(y)
				healthy = a50Start(tl, link)
				if healthy == nil && fileExists(shadow) {
					t.Logf("folded, yet the dead directory's shadow is left on /dev/shm: %s", shadow)
				}
			case "copied, rolled back":
				copyDir(t, x, y)
				retarget(y)
				if h := a50Start(tl, link); h != nil {
					t.Logf("the migrated copy's start refused: %v", h)
				}
				t.Logf("after the start on the copy: X's shadow still there: %v; A still in X: %v", fileExists(shadow), fileExists(filepath.Join(x, name)))
				retarget(x)
				healthy = a50Start(tl, link)
			case "fresh, then back":
				if err := os.Mkdir(y, 0o700); err != nil {
					t.Fatal(err)
				}
				retarget(y)
				if h := a50Start(tl, link); h != nil {
					t.Fatal(h)
				}
				retarget(x)
				healthy = a50Start(tl, link)
			}
			a52Judge(t, tl, healthy, filepath.Join(link, name), 250, "journal root link retargeted ("+how+")")
		})
	}
}

// TestAttack52TwoPathsOneJournal: one data directory reached by two paths — a bind mount
// (two containers mounting the host's data directory at different paths and sharing its
// /dev/shm), or the same path spelled with "..", "//" and a trailing slash. Process A
// writes via path 1 and is killed (30 records only in its shadow, under path 1's shadow
// root); process B starts via path 2 (its refold folds A's directory), then A restarts via
// path 1. Claim: 250 once, in order; A's shadow read exactly once.
func TestAttack52TwoPathsOneJournal(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"bind mount", "dotted path"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			tl := openTestLog(t)
			tl.record(t, 1)
			jdir := filepath.Join(tl.dir, "journal")
			if err := os.MkdirAll(jdir, 0o700); err != nil {
				t.Fatal(err)
			}
			var p1 string
			switch how {
			case "bind mount":
				p1 = filepath.Join(a52Bind(t, tl.dir), "journal")
			case "dotted path":
				p1 = tl.dir + "//nothing/../journal/"
			}
			dir, shadow := a52Dead(t, p1)
			name := filepath.Base(dir)
			h := a50Start(tl, jdir) // B, via the real path
			t.Logf("B's start via the other path: healthy %v; A's shadow left on /dev/shm after A's directory was folded: %v", h, fileExists(shadow))
			if h != nil {
				t.Fatalf("CLAIM BROKEN: an honest dead journal refused when folded via another path to it: %v", h)
			}
			healthy := a50Start(tl, p1) // A again, via its path
			a52Judge(t, tl, healthy, filepath.Join(jdir, name), 250, "one journal reached by two paths ("+how+")")
		})
	}
}
