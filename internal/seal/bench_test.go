package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"fmt"
	"io"
	"runtime"
	"sync"
	"testing"
)

// benchSize is the plaintext size the issue names: 1 GiB.
const benchSize = 1 << 30

var benchInput = sync.OnceValue(func() []byte { return randBytes(benchSize, 1) })

func reportGBps(b *testing.B, n int64) {
	b.SetBytes(n)
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
}

func workerCases() []int {
	return []int{1, runtime.GOMAXPROCS(0)}
}

// BenchmarkRawAESGCMOpen is the baseline: crypto/cipher AES-256-GCM opening 1 MiB chunks
// of 1 GiB on one core, nothing else.
func BenchmarkRawAESGCMOpen(b *testing.B) {
	block, _ := aes.NewCipher(testKey(1))
	aead, _ := cipher.NewGCM(block)
	pt := benchInput()
	cs := DefaultChunkSize
	ct := make([]byte, 0, len(pt)+len(pt)/cs*tagSize)
	for i := 0; i < len(pt); i += cs {
		ct = aead.Seal(ct, nonce(uint64(i/cs), false), pt[i:i+cs], nil)
	}
	buf := make([]byte, cs)
	b.ResetTimer()
	for b.Loop() {
		for i, j := 0, 0; i < len(ct); i, j = i+cs+tagSize, j+1 {
			if _, err := aead.Open(buf[:0], nonce(uint64(j), false), ct[i:i+cs+tagSize], nil); err != nil {
				b.Fatal(err)
			}
		}
	}
	reportGBps(b, benchSize)
}

// BenchmarkSHA256 is the import floor: single-core SHA-256 over 1 GiB.
func BenchmarkSHA256(b *testing.B) {
	pt := benchInput()
	b.ResetTimer()
	for b.Loop() {
		h := sha256.New()
		h.Write(pt)
		h.Sum(nil)
	}
	reportGBps(b, benchSize)
}

func BenchmarkSeal(b *testing.B) {
	pt := benchInput()
	for _, workers := range workerCases() {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			for b.Loop() {
				w, err := NewWriter(io.Discard, testKey(1), Options{Workers: workers})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := w.ReadFrom(bytes.NewReader(pt)); err != nil {
					b.Fatal(err)
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
			reportGBps(b, benchSize)
		})
	}
}

// BenchmarkSealHashed is what import does: SHA-256 of the plaintext on the reading
// goroutine while the workers encrypt.
func BenchmarkSealHashed(b *testing.B) {
	pt := benchInput()
	for b.Loop() {
		w, err := NewWriter(io.Discard, testKey(1), Options{})
		if err != nil {
			b.Fatal(err)
		}
		h := sha256.New()
		if _, err := w.ReadFrom(io.TeeReader(bytes.NewReader(pt), h)); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
	reportGBps(b, benchSize)
}

var benchSealed = sync.OnceValue(func() []byte {
	var out bytes.Buffer
	out.Grow(benchSize + benchSize/DefaultChunkSize*tagSize + HeaderSize)
	w, _ := NewWriter(&out, testKey(1), Options{})
	w.ReadFrom(bytes.NewReader(benchInput()))
	w.Close()
	return out.Bytes()
})

func BenchmarkUnseal(b *testing.B) {
	ct := benchSealed()
	for _, workers := range workerCases() {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			for b.Loop() {
				r, err := Open(Bytes(ct), int64(len(ct)), testKey(1), OpenOptions{Workers: workers})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := r.WriteTo(io.Discard); err != nil {
					b.Fatal(err)
				}
			}
			reportGBps(b, benchSize)
		})
	}
}
