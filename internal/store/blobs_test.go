package store

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestFSBlobs(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := NewFSBlobs(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.Create(ctx, "k1/0.srs")
	if err != nil {
		t.Fatal(err)
	}
	p.Write([]byte("sealed"))
	// Not visible before Commit.
	if _, err := b.Open(ctx, "k1/0.srs"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("uncommitted blob visible: %v", err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	p.Abort() // no effect after Commit
	r, err := b.Open(ctx, "k1/0.srs")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(io.NewSectionReader(r, 0, r.Size()))
	r.Close()
	if string(got) != "sealed" {
		t.Fatalf("blob = %q", got)
	}
	if _, err := b.Create(ctx, "k1/0.srs"); !errors.Is(err, ErrExists) {
		t.Fatalf("overwrite allowed: %v", err)
	}
	// Aborted blobs leave nothing; names cannot escape the directory.
	p2, _ := b.Create(ctx, "k1/1.srs")
	p2.Abort()
	if left, _ := os.ReadDir(filepath.Join(dir, ".tmp")); len(left) != 0 {
		t.Fatalf("abort left %d temp files", len(left))
	}
	for _, bad := range []string{"../x", "/etc/passwd", "a/../../x", ".tmp/x", ""} {
		if _, err := b.Create(ctx, bad); err == nil {
			t.Fatalf("bad name %q accepted", bad)
		}
	}
	names, err := b.List(ctx)
	if err != nil || len(names) != 1 || names[0] != "k1/0.srs" {
		t.Fatalf("List = %v, %v", names, err)
	}
	if err := b.Delete(ctx, "k1/0.srs"); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "k1/0.srs"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "k1")); !os.IsNotExist(err) {
		t.Fatal("empty blob directory left")
	}
	// A crashed writer's temp file is cleaned up on the next start.
	os.WriteFile(filepath.Join(dir, ".tmp", "stale"), []byte("x"), 0o600)
	if _, err := NewFSBlobs(dir); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, ".tmp")); len(left) != 0 {
		t.Fatal("stale temp file left")
	}
}
