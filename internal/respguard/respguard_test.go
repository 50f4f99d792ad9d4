package respguard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/strongroom/strongroom/internal/testenv"
)

// scanAll scans stream in chunks of size (0: whole) and returns the bytes taken before an
// error, and the error.
func scanAll(l Limits, stream []byte, size int) (int, error) {
	s := NewScanner(l)
	if size == 0 {
		size = len(stream) + 1
	}
	off := 0
	for off < len(stream) {
		end := min(off+size, len(stream))
		k, err := s.Scan(stream[off:end])
		if err != nil {
			return off + k, err
		}
		off = end
	}
	return off, nil
}

// TestScannerRefuses: each reply past a limit is refused before the client sees the LF that
// ends its header (go-redis parses a header at its LF and allocates what it announces).
func TestScannerRefuses(t *testing.T) {
	l := Limits{MaxLine: 64, MaxBulk: 100, MaxElems: 10, MaxDepth: 3, MaxReply: 400}
	ok := "+OK\r\n"
	for _, tc := range []struct {
		name, stream string
		at           int // offset of the byte refused (-1: at its header's LF)
	}{
		{"a bulk string of a terabyte", ok + "$1099511627776\r\n", -1},
		{"an array of a terabyte", ok + "*1099511627776\r\n", -1},
		{"a map of 6 pairs (12 elements)", ok + "%6\r\n", -1},
		{"a push of a terabyte", ok + ">1099511627776\r\n", -1},
		{"a bulk error too long", ok + "!101\r\n", -1},
		{"a verbatim string too long", ok + "=101\r\n", -1},
		{"arrays nested four deep", ok + "*1\r\n*1\r\n*1\r\n*1\r\n", -1},
		{"elements over the reply's", ok + "*6\r\n*6\r\n", -1},
		{"a line without an end", ok + "+" + strings.Repeat("A", 200), len(ok) + 64},
		{"a length of 20 digits", ok + "$12345678901234567890\r\n", -1},
		{"a streamed string", ok + "$?\r\n", -1},
		{"a negative length", ok + "*-2\r\n", -1},
		{"an unknown type", ok + "X1\r\n", -1},
		{"a reply over its bytes", ok + "*5\r\n" + strings.Repeat("$90\r\n"+strings.Repeat("a", 90)+"\r\n", 5), -2},
	} {
		for _, size := range []int{0, 1, 3} {
			k, err := scanAll(l, []byte(tc.stream), size)
			if !errors.Is(err, ErrLimit) {
				t.Errorf("%s (chunks of %d): %v, want %v", tc.name, size, err, ErrLimit)
				continue
			}
			switch want := tc.at; {
			case want == -1:
				if k != len(tc.stream)-1 || tc.stream[k] != '\n' {
					t.Errorf("%s (chunks of %d): refused at %d of %d, want at the header's LF", tc.name, size, k, len(tc.stream))
				}
			case want >= 0 && k != want:
				t.Errorf("%s (chunks of %d): refused at %d, want %d", tc.name, size, k, want)
			}
			if k <= len(ok)-1 {
				t.Errorf("%s (chunks of %d): the reply before it (+OK) was refused too (at %d)", tc.name, size, k)
			}
		}
	}
}

// TestScannerTakes: replies within the limits pass whole, and a reply's counts start again
// at the next one (many replies, each near a limit).
func TestScannerTakes(t *testing.T) {
	l := Limits{MaxLine: 64, MaxBulk: 100, MaxElems: 10, MaxDepth: 3, MaxReply: 400}
	var b bytes.Buffer
	for range 50 {
		b.WriteString("*2\r\n$100\r\n" + strings.Repeat("x", 100) + "\r\n%2\r\n+a\r\n:1\r\n_\r\n$-1\r\n") // 2+2+4 elements
		b.WriteString("|1\r\n+ttl\r\n:3\r\n*3\r\n#t\r\n,1.5\r\n(12345678901234567890\r\n")                // an attribute, then its value
		b.WriteString(">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n=8\r\ntxt:abcd\r\n")                            // a push
		b.WriteString("*0\r\n*-1\r\n-ERR " + strings.Repeat("e", 50) + "\r\n!3\r\nERR\r\n~1\r\n:7\r\n")
		b.WriteString("*1\r\n*1\r\n*1\r\n+deep\r\n") // three deep
	}
	for _, size := range []int{0, 1, 2, 7, 64} {
		if k, err := scanAll(l, b.Bytes(), size); err != nil || k != b.Len() {
			t.Fatalf("chunks of %d: %d of %d bytes, %v", size, k, b.Len(), err)
		}
	}
}

// TestGuardedClientOnRealRedis: go-redis through Wrap on the real Redis of scripts/test
// (RESP3, its HELLO, scripts, hashes as maps, streams, pub/sub): the same answers.
func TestGuardedClientOnRealRedis(t *testing.T) {
	opt, err := redis.ParseURL(testenv.Get(t, "STRONGROOM_TEST_REDIS"))
	if err != nil {
		t.Fatal(err)
	}
	opt.Dialer = Dialer(redis.NewDialer(opt), Default)
	c := redis.NewClient(opt)
	defer c.Close()
	ctx := context.Background()
	p := fmt.Sprintf("test:respguard:%d:", time.Now().UnixNano())
	defer func() {
		if keys, _ := c.Keys(ctx, p+"*").Result(); len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	}()
	if err := c.HSet(ctx, p+"h", "a", "1", "b", strings.Repeat("v", 1<<20)).Err(); err != nil {
		t.Fatal(err)
	}
	h, err := c.HGetAll(ctx, p+"h").Result()
	if err != nil || h["a"] != "1" || len(h["b"]) != 1<<20 {
		t.Fatalf("HGETALL: %d fields, %v", len(h), err)
	}
	res, err := c.Eval(ctx, "return {1, {2, {'x', KEYS[1]}}, redis.call('HGET', KEYS[1], 'a')}", []string{p + "h"}).Slice()
	if err != nil || len(res) != 3 || res[2] != "1" {
		t.Fatalf("EVAL: %v %v", res, err)
	}
	for i := range 300 {
		c.XAdd(ctx, &redis.XAddArgs{Stream: p + "s", Values: []any{"o", strings.Repeat("r", 900+i)}})
	}
	xs, err := c.XRange(ctx, p+"s", "-", "+").Result()
	if err != nil || len(xs) != 300 {
		t.Fatalf("XRANGE: %d, %v", len(xs), err)
	}
	sub := c.Subscribe(ctx, p+"ch")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, p+"ch", "key-id").Err(); err != nil {
		t.Fatal(err)
	}
	m, err := sub.ReceiveMessage(ctx)
	if err != nil || m.Payload != "key-id" {
		t.Fatalf("pub/sub: %v %v", m, err)
	}
	// Past the limits: a string over MaxBulk is refused, and the client goes on with a new
	// connection.
	if err := c.Set(ctx, p+"big", strings.Repeat("b", int(Default.MaxBulk)+1), 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, p+"big").Result(); !errors.Is(err, ErrLimit) {
		t.Fatalf("GET of a string over MaxBulk: %v, want %v", err, ErrLimit)
	}
	if v, err := c.HGet(ctx, p+"h", "a").Result(); err != nil || v != "1" {
		t.Fatalf("after a refused reply: %q %v", v, err)
	}
}

// FuzzScanner: any stream, in any chunks — no panic; an error is sticky; the same stream in
// other chunks ends alike (the same error offset, or none).
func FuzzScanner(f *testing.F) {
	f.Add([]byte("+OK\r\n*2\r\n$3\r\nabc\r\n:1\r\n"), uint8(1))
	f.Add([]byte("%1\r\n+a\r\n|1\r\n+k\r\n+v\r\n*1\r\n_\r\n"), uint8(3))
	f.Add([]byte("$1099511627776\r\n"), uint8(5))
	f.Add([]byte(">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$-1\r\n"), uint8(2))
	f.Fuzz(func(t *testing.T, stream []byte, size uint8) {
		l := Limits{MaxLine: 32, MaxBulk: 64, MaxElems: 16, MaxDepth: 4, MaxReply: 256}
		k1, err1 := scanAll(l, stream, 0)
		k2, err2 := scanAll(l, stream, int(size%16)+1)
		if (err1 == nil) != (err2 == nil) || k1 != k2 {
			t.Fatalf("whole: %d %v; in chunks of %d: %d %v", k1, err1, size%16+1, k2, err2)
		}
		if err1 == nil && k1 != len(stream) {
			t.Fatalf("took %d of %d without an error", k1, len(stream))
		}
	})
}

// BenchmarkScan: the guard on a detection-bus read (read.lua's answer: 256 entries, each an
// id and a 768-byte sealed record) beside copying the same bytes (the least a reader does
// with them); ns per reply.
func BenchmarkScan(b *testing.B) {
	var r bytes.Buffer
	fmt.Fprintf(&r, "*%d\r\n", 512)
	for i := range 256 {
		id := fmt.Sprintf("1796609975269-%d", i)
		fmt.Fprintf(&r, "$%d\r\n%s\r\n$768\r\n%s\r\n", len(id), id, strings.Repeat("r", 768))
	}
	reply := r.Bytes()
	dst := make([]byte, len(reply))
	b.Run("copy", func(b *testing.B) {
		b.SetBytes(int64(len(reply)))
		for b.Loop() {
			for off := 0; off < len(reply); off += 4096 { // bufio's reads
				copy(dst[off:], reply[off:min(off+4096, len(reply))])
			}
		}
	})
	b.Run("scan+copy", func(b *testing.B) {
		b.SetBytes(int64(len(reply)))
		s := NewScanner(Default)
		for b.Loop() {
			for off := 0; off < len(reply); off += 4096 {
				end := min(off+4096, len(reply))
				copy(dst[off:], reply[off:end])
				if _, err := s.Scan(dst[off:end]); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
