package audit

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// tmpfsDir mounts a tmpfs of the given size (e.g. "16m") on a temporary directory for the
// test (skipped where mounting is not allowed).
func tmpfsDir(t *testing.T, size string) string {
	t.Helper()
	fs := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", fs).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root with mount rights): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", fs).Run() })
	return fs
}

// fillDisk writes a file in dir until its file system is full, and returns it (remove it
// to give the room back).
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	fill, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	defer fill.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := fill.Write(chunk); err != nil {
			break
		}
	}
	for { // the last pages
		if _, err := fill.Write(chunk[:512]); err != nil {
			break
		}
	}
	return fill.Name()
}

// TestMineDiskFull: a replica of a shared log whose own disk fills keeps appending (the
// database's commit is the durability), says once that its appended entries are kept in
// memory only, and — once there is room again, without a restart — keeps them on its disk
// again, every entry still waiting for a checkpoint included (the first version stopped
// keeping them until a restart, and left a partly written file taking the room).
func TestMineDiskFull(t *testing.T) {
	dsn, s, _, db := sharedTestLog(t, "strongroom.test/mine-disk-full")
	fs := tmpfsDir(t, "1m")
	l, logs := a3OpenIn(t, dsn, s, filepath.Join(fs, "log"), &syncBuffer{})
	waitFor(t, func() bool { return l.leader.check(t.Context()) == nil })
	a7Record(t, l, 0, 3)
	// No checkpoint is published from here on: the entries stay due, so the file must hold
	// every one appended since.
	holdCheckpointRow(t, db)
	before := a7Record(t, l, 3, 3)
	fill := fillDisk(t, fs)
	// Appends go on (the database has them); enough of them to need a page the disk has not.
	during := a7Record(t, l, 6, 40)
	const alert = "cannot keep this replica's appended entries on its disk"
	waitFor(t, func() bool { return strings.Contains(logs.String(), alert) })
	if n := strings.Count(logs.String(), alert); n != 1 {
		t.Fatalf("the ALERT %d times, want once:\n%s", n, logs.String())
	}
	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(logs.String(), "kept on its disk again") })
	after := a7Record(t, l, 46, 2)
	kept, err := os.ReadFile(filepath.Join(fs, "log", ".state", "shared-log-mine"))
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, m := range parseMine(kept) {
		got = append(got, m.index)
	}
	for _, idx := range slices.Concat(before, during, after) {
		if !slices.Contains(got, idx) {
			t.Fatalf("entry %d (appended after the last checkpoint) is not kept on the replica's disk: %v", idx, got)
		}
	}
	if _, err := os.Stat(filepath.Join(fs, "log", ".state", "shared-log-mine.tmp")); !os.IsNotExist(err) {
		t.Fatalf("a partly written rewrite is left behind: %v", err)
	}
}
