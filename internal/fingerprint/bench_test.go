package fingerprint

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/testenv"
)

// BenchmarkScanThroughput measures, in one run over the same files (BF16 safetensors,
// page cache warm): the raw read rate, reading and decoding (Load), and the scanner's
// comparison against a protected model of other shapes (rejected on shape: the common
// case in the wild) and of the same shapes (full alignment: the worst case).
//
//	go test -run '^$' -bench ScanThroughput -benchtime 1x ./internal/fingerprint
func BenchmarkScanThroughput(b *testing.B) {
	sh := shape{4, 512, 1408, 4096, 8, 4}
	dir := b.TempDir()
	var files []string
	var total int64
	for i := range 4 {
		m := synthModel(uint64(500+i), sh.layers, sh.d, sh.ff, sh.vocab, sh.heads, sh.kv)
		p := filepath.Join(dir, "m"+itoa(int64(i))+".safetensors")
		if err := os.WriteFile(p, toSafetensors(b, m, "BF16"), 0o644); err != nil {
			b.Fatal(err)
		}
		fi, _ := os.Stat(p)
		files, total = append(files, p), total+fi.Size()
	}
	same := synthModel(1, sh.layers, sh.d, sh.ff, sh.vocab, sh.heads, sh.kv)
	other := synthModel(2, 2, 256, 512, 1000, 4, 4)
	mbs := func(d time.Duration) float64 { return float64(total) / 1e6 / d.Seconds() }
	for _, f := range files { // warm the page cache for both measurements
		os.ReadFile(f)
	}
	// CPU time per MB alongside: on a machine shared with other work, the wall-clock
	// rates swing with the load; the CPU spent per MB much less so.
	cpu := testenv.CPUTime
	cpums := func(d time.Duration) float64 { return d.Seconds() * 1e3 / (float64(total) / 1e6) }
	var raw, load, reject, full, loadCPU, fullCPU time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		for _, f := range files {
			if _, err := os.ReadFile(f); err != nil {
				b.Fatal(err)
			}
		}
		raw += time.Since(t0)
		t0, c0 := time.Now(), cpu()
		var ms []*Model
		for _, f := range files {
			m, err := Load(f)
			if err != nil {
				b.Fatal(err)
			}
			ms = append(ms, m)
		}
		l, lc := time.Since(t0), cpu()-c0
		load, loadCPU = load+l, loadCPU+lc
		t0 = time.Now()
		for _, m := range ms {
			if Comparable(other, m) {
				Compare(other, m)
			}
		}
		reject += l + time.Since(t0)
		t0, c0 = time.Now(), cpu()
		for _, m := range ms {
			Compare(same, m)
		}
		full += l + time.Since(t0)
		fullCPU += lc + cpu() - c0
	}
	n := time.Duration(b.N)
	b.ReportMetric(mbs(raw/n), "raw-MB/s")
	b.ReportMetric(mbs(load/n), "load-MB/s")
	b.ReportMetric(mbs(reject/n), "scan-other-shapes-MB/s")
	b.ReportMetric(mbs(full/n), "scan-same-shapes-MB/s")
	b.ReportMetric(cpums(loadCPU/n), "load-cpu-ms/MB")
	b.ReportMetric(cpums(fullCPU/n), "scan-same-shapes-cpu-ms/MB")
	b.ReportMetric(float64(total)/1e6, "MB")
}

// BenchmarkTrace measures tracing one copy against 1,000 candidate licensees on a
// 16M-parameter model (4M marked weights): the cost grows as candidates × marked weights.
//
//	go test -run '^$' -bench Trace -benchtime 1x ./internal/fingerprint
func BenchmarkTrace(b *testing.B) {
	sh := shape{4, 512, 1408, 4096, 8, 4}
	const model = "m:1"
	orig := synthModel(100, sh.layers, sh.d, sh.ff, sh.vocab, sh.heads, sh.kv)
	mk, _ := ModelKey(testSecret, model)
	a := markedCopy(b, orig, model, "lic-007")
	cands := candidates(b, model, 1000)
	b.ResetTimer()
	var tr *TraceResult
	for range b.N {
		tr = Trace(orig, a, mk, cands, 1e-6)
	}
	b.StopTimer()
	per := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(per, "s/trace")
	b.ReportMetric(per/float64(len(cands))/float64(tr.Elements)*1e9, "ns/candidate-weight")
	if tr.Verdict != VerdictLicensee || tr.Named[0] != "lic-007" {
		b.Fatalf("trace: %s %v", tr.Verdict, tr.Named)
	}
}
