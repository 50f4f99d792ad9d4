package inventory

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/strongroom/strongroom/internal/refmodel"
)

// benchModel is a model directory whose model.safetensors is 1 GiB, made once per run and
// read once before timing so that it sits in the page cache.
func benchModel(b *testing.B) string {
	dir := filepath.Join(b.TempDir(), "model")
	o := refmodel.DefaultSynth()
	o.MinBytes = 1 << 30
	if err := refmodel.Synthesize(dir, o); err != nil {
		b.Fatal(err)
	}
	hashFile(b, filepath.Join(dir, "model.safetensors"))
	return dir
}

func hashFile(b *testing.B, path string) int64 {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

func dirSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func reportGBps(b *testing.B, n int64) {
	b.SetBytes(n)
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
}

// BenchmarkImport1GiB: the baseline is single-core SHA-256 of the same cached file (the
// floor, since import must hash every byte); import is read + hash + seal + write + fsync.
// "tmpfs" puts the blob store in /dev/shm, so the figure is the pipeline's; "disk" adds the
// fsync of 1 GiB to this machine's disk.
func BenchmarkImport1GiB(b *testing.B) {
	model := benchModel(b)
	size := dirSize(model)
	b.Run("sha256-baseline", func(b *testing.B) {
		for b.Loop() {
			hashFile(b, filepath.Join(model, "model.safetensors"))
		}
		reportGBps(b, size)
	})
	targets := map[string]string{"disk": b.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		shm, err := os.MkdirTemp("/dev/shm", "strongroom-bench-")
		if err == nil {
			defer os.RemoveAll(shm)
			targets["tmpfs"] = shm
		}
	}
	for _, name := range []string{"tmpfs", "disk"} {
		dir, ok := targets[name]
		if !ok {
			continue
		}
		b.Run("import-"+name, func(b *testing.B) {
			dir, err := os.MkdirTemp(dir, "run-")
			if err != nil {
				b.Fatal(err)
			}
			e := newEnvAt(b, dir, model)
			i := 0
			for b.Loop() {
				m := meta
				m.Version = fmt.Sprint(i)
				i++
				if _, err := e.inv.Import(context.Background(), model, m); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				os.RemoveAll(filepath.Join(dir, "blobs"))
				os.MkdirAll(filepath.Join(dir, "blobs", ".tmp"), 0o700)
				b.StartTimer()
			}
			reportGBps(b, size)
		})
	}
}
