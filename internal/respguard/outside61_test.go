package respguard

// Outside round 61: a parser differential between respguard's Scanner and go-redis's own
// RESP reader (github.com/redis/go-redis/v9 internal/proto, v9.23.0). The attacker is the
// Redis server (or a man in the middle of redis://): it sends any bytes as replies. The
// client is the real go-redis client wired as the gateway wires it (internal/app/gateway.go:
// redis.ParseURL, ContextTimeoutEnabled, Options.Dialer = Dialer(redis.NewDialer(opt),
// Default)), talking to o61Server, a RESP server on 127.0.0.1:0 in this test.
//
// What the package promises (respguard.go doc comment): "bounds what a Redis server can
// make its client hold … A Conn reads the RESP2/RESP3 stream as it passes and fails the
// connection at the first reply past its Limits, before the client sees the header that
// would have made it allocate." Default: MaxLine 64 KiB, MaxBulk 4 MiB, MaxElems 65,536,
// MaxDepth 16, MaxReply 16 MiB ("bytes of one reply").
//
// Attacks and findings (FAIL while it lasts / HELD):
//   - TestOutside61EmptyAttributeSplitsReply: an attribute of no pairs ("|0\r\n") or a null
//     one ("|-1\r\n"). The Scanner counts it as an element of what holds it (line(): n == 0
//     or null → done()); go-redis skips it (ReadLine: Discard, then the next line) and reads
//     the next value as that element. So "*32\r\n" + 32×"|0\r\n" is a whole reply to the
//     Scanner (its counts start again) while go-redis still waits for 32 elements; each
//     "$4194304\r\n<4 MiB>\r\n" that follows is a reply of its own to the Scanner (within
//     every limit) and an element of one array to go-redis. One reply to one command
//     (RESP2 and RESP3, "|0" and "|-1"): go-redis returns an array of 128 MiB
//     (TotalAlloc +128 MiB, HeapAlloc +128 MiB held) where MaxReply is 16 MiB; nothing
//     bounds it (the array may announce 65,536 elements, and nest). FAIL.
//   - TestOutside61EmptyAttributeSplitsPubSubMessage: the same on a subscription (the
//     gateway's key-revocation and detection-bell subscriptions): a "message" whose payload
//     is hidden the same way makes Receive allocate 128 MiB. FAIL.
//   - TestOutside61EmptyAttributeRecursion: "|0\r\n" repeated. Each is a whole reply to the
//     Scanner; go-redis's ReadLine recurses once per attribute (ReadLine → Discard →
//     ReadLine) for one reply. A stream of them (4 bytes each, no limit applies) grows the
//     reading goroutine's stack without bound. On a command with a 10 s deadline: 35 MiB
//     sent, StackSys 512 MiB before the i/o timeout. On a subscription (the gateway's read
//     with no deadline), run in a child process: within ~6 s the child dies
//     with "fatal error: stack overflow" ("goroutine stack exceeds 1000000000-byte
//     limit"), which no recover() catches: the gateway process dies. FAIL.
//   - TestOutside61PubSubMessageShapePanics: a subscription message of a shape go-redis does
//     not expect, small and within every limit ("*0\r\n", "*1\r\n:1\r\n", a "message" whose
//     payload is an array of integers): PubSub.Receive panics (index out of range /
//     interface conversion) in the caller's goroutine — in the gateway that was go-redis's
//     Channel() goroutine and followRevocations' first Receive, with no recover: serve
//     died. Not a respguard limit (its doc promises bounds on memory, not shapes), but the
//     round's threat (a client behind respguard made to crash). FAIL. (Since the fix the
//     gateway reads subscriptions through respguard.Subscribe, and the test drives it: a
//     panic recovered, an ALERT, a new subscription, delivery going on.)
//   - FuzzOutside61Differential: the Scanner's reply boundaries against go-redis's (the
//     real client over an in-memory connection, RESP2): whenever the Scanner takes a stream
//     as K whole replies, go-redis must read the same K (and then a sentinel reply), never
//     read past a boundary the Scanner drew. Its seeds hold the "|0" and "|-1" cases. FAIL
//     while the empty attribute lasts. (The other direction also happens and is logged,
//     not failed: an attribute nested in an attribute is "attribute + value" to the
//     Scanner and a plain map to go-redis's Discard, so the Scanner counts one more element
//     than go-redis reads; that only makes the Scanner stricter.)
//   - TestOutside61AttributeChainStack: the same recursion with well-formed attributes
//     ("|1\r\n_\r\n_\r\n" ×1.5M, then +OK): MaxElems counts each attribute's pairs, so
//     the reply is refused after 32,768 of them; the stack grows ~1 MiB. HELD.
//   - TestOutside61HeaderForms: a 1 TiB header in odd forms through the real client —
//     leading zeros, '+', a space, CR inside the length, LF without CR, "-0", 19/20 digits,
//     RESP3 types ('!', '=', '~', '%', '>', '|'), behind an attribute, inside a push, sent a
//     byte per write. None allocates over 64 MiB (each < 4 KiB) or outlives its deadline. HELD.
//   - TestOutside61WrapperConn: the wrapper as a net.Conn — bytes and an error from one
//     Read, the error sticky after a refusal (and the connection closed), deadlines and
//     Close passed through, syscall.Conn kept for TCP, not claimed for TLS (go-redis then
//     skips its idle check, as the doc says). HELD.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/strongroom/strongroom/internal/testenv"
)

const o61MiB = 1 << 20

// o61Server is the attacker's Redis: HELLO is refused (RESP2) or answered (RESP3), CLIENT
// and AUTH get +OK, SUBSCRIBE is confirmed, and every other command goes to answer.
type o61Server struct {
	ln     net.Listener
	resp3  bool
	answer func(nc net.Conn, args []string)
}

func o61Start(t *testing.T, resp3 bool, answer func(nc net.Conn, args []string)) *o61Server {
	t.Helper()
	s := &o61Server{resp3: resp3, answer: answer}
	s.ln = testenv.FakeRedis(t, s.serve)
	return s
}

func (s *o61Server) serve(nc net.Conn) {
	defer nc.Close()
	br := bufio.NewReader(nc)
	for {
		args, err := testenv.ReadCommand(br)
		if err != nil {
			return
		}
		switch strings.ToLower(args[0]) {
		case "hello":
			if s.resp3 {
				nc.Write([]byte("%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n$7\r\nversion\r\n$5\r\n7.4.0\r\n"))
			} else {
				nc.Write([]byte("-ERR unknown command 'HELLO'\r\n"))
			}
		case "client", "auth", "select":
			nc.Write([]byte("+OK\r\n"))
		case "subscribe":
			var b bytes.Buffer
			kind := "*"
			if s.resp3 {
				kind = ">"
			}
			for i, ch := range args[1:] {
				fmt.Fprintf(&b, "%s3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:%d\r\n", kind, len(ch), ch, i+1)
			}
			nc.Write(b.Bytes())
			s.answer(nc, args)
		default:
			s.answer(nc, args)
		}
	}
}

// o61Client is go-redis as internal/app/gateway.go (*App).Redis makes it.
func o61Client(t *testing.T, addr string) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL("redis://" + addr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	opt.ContextTimeoutEnabled = true
	opt.MaxRetries = -1 // one reply, one read: a retry would only repeat the attack
	opt.Dialer = Dialer(redis.NewDialer(opt), Default)
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

// o61Measure runs f and returns how many bytes the process allocated meanwhile and how
// many more it holds after it (HeapAlloc, after a GC, with f's result still alive).
func o61Measure(f func() any) (total, held int64, result any) {
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	result = f()
	runtime.GC()
	runtime.ReadMemStats(&m1)
	runtime.KeepAlive(result)
	return int64(m1.TotalAlloc - m0.TotalAlloc), int64(m1.HeapAlloc) - int64(m0.HeapAlloc), result
}

// o61Payload is one bulk string the Scanner allows (MaxBulk), with its header.
var o61Payload = func() []byte {
	n := int(Default.MaxBulk)
	b := fmt.Appendf(nil, "$%d\r\n", n)
	b = append(b, bytes.Repeat([]byte("x"), n)...)
	return append(b, "\r\n"...)
}()

// o61Hidden writes an array header announcing n elements, then what ends that array for
// the Scanner (n empty attributes), then n bulk strings of MaxBulk: go-redis's elements.
func o61Hidden(nc net.Conn, kind string, n int, empty string) {
	nc.Write(fmt.Appendf(nil, "%s%d\r\n%s", kind, n, strings.Repeat(empty, n)))
	for range n {
		if _, err := nc.Write(o61Payload); err != nil {
			return
		}
	}
}

func TestOutside61EmptyAttributeSplitsReply(t *testing.T) {
	const n = 32 // 32 × 4 MiB = 128 MiB in one reply; MaxReply is 16 MiB
	for _, resp3 := range []bool{false, true} {
		for _, empty := range []string{"|0\r\n", "|-1\r\n"} {
			t.Run(fmt.Sprintf("resp3=%v/%q", resp3, empty), func(t *testing.T) {
				srv := o61Start(t, resp3, func(nc net.Conn, args []string) {
					if strings.EqualFold(args[0], "attack") {
						o61Hidden(nc, "*", n, empty)
						return
					}
					nc.Write([]byte("+OK\r\n"))
				})
				c := o61Client(t, srv.ln.Addr().String())
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				if err := c.Ping(ctx).Err(); err != nil { // the connection is up (HELLO done)
					t.Fatalf("PING: %v", err)
				}
				var err error
				total, held, res := o61Measure(func() any {
					var v any
					v, err = c.Do(ctx, "ATTACK").Result()
					return v
				})
				got := 0
				if s, ok := res.([]any); ok {
					for _, e := range s {
						if str, ok := e.(string); ok {
							got += len(str)
						}
					}
				}
				t.Logf("one reply: err %v; go-redis returned %d MiB of strings; allocated %d MiB, holds %d MiB", err, got/o61MiB, total/o61MiB, held/o61MiB)
				if total > 64*o61MiB || got > int(Default.MaxReply) {
					t.Errorf("one reply made the client allocate %d MiB and return %d MiB (MaxReply %d MiB): the Scanner took %q as an element, go-redis skipped it", total/o61MiB, got/o61MiB, Default.MaxReply/o61MiB, empty)
				}
				if err == nil {
					t.Errorf("the reply passed the guard (want %v)", ErrLimit)
				}
			})
		}
	}
}

func TestOutside61EmptyAttributeSplitsPubSubMessage(t *testing.T) {
	const n = 32
	for _, resp3 := range []bool{false, true} {
		t.Run(fmt.Sprintf("resp3=%v", resp3), func(t *testing.T) {
			srv := o61Start(t, resp3, func(nc net.Conn, args []string) {
				if strings.EqualFold(args[0], "subscribe") {
					kind := "*"
					if resp3 {
						kind = ">"
					}
					// A "message" on the channel whose payload is an array hidden from the
					// Scanner: the message itself is "whole" after three "|0".
					nc.Write(fmt.Appendf(nil, "%s3\r\n|0\r\n|0\r\n|0\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n", kind, len(args[1]), args[1]))
					o61Hidden(nc, "*", n, "|0\r\n")
					return
				}
				nc.Write([]byte("+OK\r\n"))
			})
			c := o61Client(t, srv.ln.Addr().String())
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			sub := c.Subscribe(ctx, "revocations")
			defer sub.Close()
			if m, err := sub.Receive(ctx); err != nil {
				t.Fatalf("subscription confirmation: %v %v", m, err)
			}
			var err error
			total, _, res := o61Measure(func() any {
				var v any
				v, err = sub.ReceiveTimeout(ctx, 3*time.Second)
				return v
			})
			got := 0
			if m, ok := res.(*redis.Message); ok {
				for _, s := range m.PayloadSlice {
					got += len(s)
				}
			}
			t.Logf("one message: %T, err %v; payload %d MiB; allocated %d MiB", res, err, got/o61MiB, total/o61MiB)
			if total > 64*o61MiB {
				t.Errorf("one pub/sub message made the client allocate %d MiB (MaxReply %d MiB)", total/o61MiB, Default.MaxReply/o61MiB)
			}
		})
	}
}

// o61Child is set in the child process of a test that may kill its process.
const o61Child = "STRONGROOM_O61_CHILD"

func TestOutside61EmptyAttributeRecursion(t *testing.T) {
	if os.Getenv(o61Child) == "recursion" {
		o61RecursionChild(t)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestOutside61EmptyAttributeRecursion$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), o61Child+"=recursion")
	out, err := cmd.CombinedOutput()
	tail := out
	if i := bytes.Index(out, []byte("runtime: goroutine stack exceeds")); i >= 0 {
		tail = out[i:min(len(out), i+300)]
	} else if i := bytes.Index(out, []byte("fatal error")); i >= 0 {
		tail = out[i:min(len(out), i+300)]
	} else if len(tail) > 1500 {
		tail = tail[len(tail)-1500:]
	}
	t.Logf("child: %v\n%s", err, tail)
	switch {
	case bytes.Contains(out, []byte("stack overflow")) || bytes.Contains(out, []byte("stack exceeds")):
		t.Errorf("a stream of \"|0\\r\\n\" (each a whole reply to the Scanner) made go-redis recurse until the process died: fatal error: stack overflow")
	case ctx.Err() != nil:
		t.Errorf("the child hung past 20 s on one command with a 10 s deadline")
	case err != nil || !bytes.Contains(out, []byte("O61 RESULT")):
		t.Errorf("the child died: %v", err)
	}
}

// o61RecursionChild: a subscription (the gateway's revocation and bell subscriptions read
// with no deadline); the server answers SUBSCRIBE with "|0\r\n" until the client goes away.
func o61RecursionChild(t *testing.T) {
	chunk := bytes.Repeat([]byte("|0\r\n"), 1<<18) // 1 MiB
	srv := o61Start(t, false, func(nc net.Conn, args []string) {
		if !strings.EqualFold(args[0], "subscribe") {
			nc.Write([]byte("+OK\r\n"))
			return
		}
		for sent := 0; ; sent += len(chunk) {
			if _, err := nc.Write(chunk); err != nil {
				fmt.Printf("O61 server sent %d MiB\n", sent/o61MiB)
				return
			}
		}
	})
	c := o61Client(t, srv.ln.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub := c.Subscribe(ctx, "bell")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	v, err := sub.Receive(context.Background()) // as go-redis's Channel() goroutine: no deadline
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	fmt.Printf("O61 RESULT after %v: %T %v; StackSys %d MiB\n", time.Since(start).Round(time.Millisecond), v, err, m.StackSys/o61MiB)
}

// TestOutside61AttributeChainStack: attributes of one pair each, one after another, then a
// value: one reply the Scanner takes whole (10 bytes an attribute, 15 MiB in all, within
// MaxReply). go-redis recurses once per attribute; the reading goroutine's stack is
// measured after the command.
func TestOutside61AttributeChainStack(t *testing.T) {
	attr := []byte("|1\r\n_\r\n_\r\n")
	n := int(15 * o61MiB / int64(len(attr)))
	srv := o61Start(t, false, func(nc net.Conn, args []string) {
		if !strings.EqualFold(args[0], "attack") {
			nc.Write([]byte("+OK\r\n"))
			return
		}
		b := bytes.Repeat(attr, n)
		nc.Write(append(b, "+OK\r\n"...))
	})
	c := o61Client(t, srv.ln.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	v, err := c.Do(ctx, "ATTACK").Result()
	runtime.ReadMemStats(&m1) // no GC in between: the stack is as the reply left it
	grew := int64(m1.StackInuse) - int64(m0.StackInuse)
	t.Logf("%d attributes (%d MiB), then +OK: %v %v; stack in use +%d MiB", n, n*len(attr)/o61MiB, v, err, grew/o61MiB)
	if grew > 64*o61MiB {
		t.Errorf("one reply within MaxReply (%d MiB) grew the client's stack by %d MiB", Default.MaxReply/o61MiB, grew/o61MiB)
	}
}

// TestOutside61PubSubMessageShapePanics: small messages of shapes go-redis does not expect,
// on a subscription. go-redis's PubSub.Receive panics on them (its newMessage); the gateway
// reads its subscriptions through Subscribe, which must recover, subscribe again and go on
// delivering: the server answers the second SUBSCRIBE with a proper message.
func TestOutside61PubSubMessageShapePanics(t *testing.T) {
	for _, shape := range []string{
		"*0\r\n",
		"*1\r\n:1\r\n",
		"*1\r\n$7\r\nmessage\r\n",
		"*3\r\n$7\r\nmessage\r\n:1\r\n$1\r\nx\r\n",
		"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n*1\r\n:1\r\n",
		"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n$1\r\nx\r\n",
	} {
		t.Run(fmt.Sprintf("%q", shape), func(t *testing.T) {
			var subscribes atomic.Int64
			srv := o61Start(t, false, func(nc net.Conn, args []string) {
				if strings.EqualFold(args[0], "subscribe") {
					if subscribes.Add(1) == 1 {
						nc.Write([]byte(shape))
						return
					}
					nc.Write([]byte("*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\ngood\r\n"))
					return
				}
				nc.Write([]byte("+OK\r\n"))
			})
			c := o61Client(t, srv.ln.Addr().String())
			// Premise: go-redis's own Receive still panics on it (else the test shows nothing).
			func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				sub := c.Subscribe(ctx, "ch")
				defer sub.Close()
				p := func() (p any) {
					defer func() { p = recover() }()
					for range 2 {
						if _, err := sub.ReceiveTimeout(ctx, 3*time.Second); err != nil {
							return nil
						}
					}
					return nil
				}()
				if p == nil {
					t.Skipf("go-redis no longer panics on %q", shape)
				}
			}()
			subscribes.Store(0)
			var log bytes.Buffer
			var mu sync.Mutex
			got := make(chan string, 4)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				Subscribe(ctx, c, "ch", slog.New(slog.NewTextHandler(&lockedWriter{&mu, &log}, nil)), func(p string) { got <- p })
			}()
			select {
			case p := <-got:
				if p != "good" {
					t.Errorf("delivered %q, want the proper message after the bad one", p)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("no message delivered after a %d-byte message of an odd shape (subscribes: %d)", len(shape), subscribes.Load())
			}
			cancel()
			<-done
			mu.Lock()
			defer mu.Unlock()
			if !strings.Contains(log.String(), "ALERT redis: a pub/sub message go-redis could not read") {
				t.Errorf("no ALERT line for the message go-redis could not read: %q", log.String())
			}
		})
	}
}

// lockedWriter serializes a log's writes for the test to read.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestOutside61HeaderForms: a header announcing 1 TiB in the forms go-redis's parser might
// read differently from the Scanner's, each the whole answer to one command, sent a byte
// per write (every split).
func TestOutside61HeaderForms(t *testing.T) {
	const tb = "1099511627776"
	for _, form := range []string{
		"$" + tb + "\r\n",
		"$0" + tb + "\r\n",
		"$00000" + tb + "\r\n",
		"$+" + tb + "\r\n",
		"$ " + tb + "\r\n",
		"$" + tb + " \r\n",
		"$1\r" + tb[1:] + "\r\n",
		"$" + tb + "\n",
		"$" + tb + "\r\r\n",
		"$" + tb + "000000\r\n",
		"$" + tb + "0000000\r\n",
		"$-0\r\n$" + tb + "\r\n",
		"$-01\r\n$" + tb + "\r\n",
		"*" + tb + "\r\n",
		"*+" + tb + "\r\n",
		"*1\r\n$" + tb + "\r\n",
		"!" + tb + "\r\n",
		"=" + tb + "\r\n",
		"~" + tb + "\r\n",
		"%549755813888\r\n",
		">" + tb + "\r\n",
		">2\r\n$7\r\nmessage\r\n$" + tb + "\r\n",
		"|" + tb + "\r\n",
		"|1\r\n+k\r\n+v\r\n$" + tb + "\r\n",
		"|1\r\n+k\r\n|1\r\n+a\r\n+b\r\n+v\r\n$" + tb + "\r\n",
		"$3\r\nabcXY$" + tb + "\r\n",
		"$3\r\nab\r\n\r\n$" + tb + "\r\n",
		"+OK\r$" + tb + "\r\n",
		"$?\r\n;" + tb + "\r\n",
		"*?\r\n$" + tb + "\r\n",
	} {
		t.Run(fmt.Sprintf("%q", form), func(t *testing.T) {
			srv := o61Start(t, false, func(nc net.Conn, args []string) {
				if !strings.EqualFold(args[0], "attack") {
					nc.Write([]byte("+OK\r\n"))
					return
				}
				for i := range len(form) {
					if _, err := nc.Write([]byte{form[i]}); err != nil {
						return
					}
				}
			})
			c := o61Client(t, srv.ln.Addr().String())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := c.Ping(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			var err error
			total, _, _ := o61Measure(func() any {
				var v any
				v, err = c.Do(ctx, "ATTACK").Result()
				return v
			})
			took := time.Since(start)
			t.Logf("%v; allocated %d KiB in %v", err, total>>10, took.Round(time.Millisecond))
			if total > 64*o61MiB {
				t.Errorf("the header made the client allocate %d MiB", total/o61MiB)
			}
			// (An answer whose 1 TiB header comes after a first reply may pass: go-redis reads
			// the first and drops the connection with the rest unread.)
			if took > 10*time.Second {
				t.Errorf("the command took %v with a 5 s deadline", took)
			}
		})
	}
}

// o61MemConn is a net.Conn whose reads come from r (each returning at most chunk bytes,
// the last of them with io.EOF) and whose writes go nowhere.
type o61MemConn struct {
	r      *bytes.Reader
	chunk  int
	closed bool
}

func (c *o61MemConn) Read(p []byte) (int, error) {
	if c.chunk > 0 && len(p) > c.chunk {
		p = p[:c.chunk]
	}
	n, err := c.r.Read(p)
	if err == nil && c.r.Len() == 0 {
		err = io.EOF // the bytes and the error from one Read
	}
	return n, err
}
func (c *o61MemConn) Write(p []byte) (int, error)        { return len(p), nil }
func (c *o61MemConn) Close() error                       { c.closed = true; return nil }
func (c *o61MemConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *o61MemConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (c *o61MemConn) SetDeadline(t time.Time) error      { return nil }
func (c *o61MemConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *o61MemConn) SetWriteDeadline(t time.Time) error { return nil }

func TestOutside61WrapperConn(t *testing.T) {
	// Bytes and io.EOF from one Read: both reach the caller.
	m := &o61MemConn{r: bytes.NewReader([]byte("+OK\r\n"))}
	g := Wrap(m, Default)
	p := make([]byte, 64)
	if n, err := g.Read(p); n != 5 || err != io.EOF {
		t.Errorf("bytes with EOF: %d %v, want 5 EOF", n, err)
	}
	// A refusal inside one Read: the bytes before it, the error, the connection closed, the
	// error sticky.
	m = &o61MemConn{r: bytes.NewReader([]byte("+OK\r\n$1099511627776\r\n+more\r\n"))}
	g = Wrap(m, Default)
	n, err := g.Read(p)
	if !errors.Is(err, ErrLimit) || n != len("+OK\r\n$1099511627776\r") || !m.closed {
		t.Errorf("refusal: %d %v closed=%v", n, err, m.closed)
	}
	if n, err := g.Read(p); n != 0 || !errors.Is(err, ErrLimit) {
		t.Errorf("after a refusal: %d %v", n, err)
	}
	// TCP: syscall.Conn kept (go-redis's idle check), deadlines and Close through.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	tc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	g = Wrap(tc, Default)
	if _, ok := g.(syscall.Conn); !ok {
		t.Errorf("a wrapped TCP connection is not a syscall.Conn")
	}
	g.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := g.Read(p); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read deadline: %v", err)
	}
	g.Close()
	if _, err := tc.Write([]byte("x")); err == nil {
		t.Errorf("Close did not close the connection")
	}
	// TLS: not a syscall.Conn (a peek on the socket would see ciphertext).
	if _, ok := Wrap(tls.Client(&o61MemConn{r: bytes.NewReader(nil)}, &tls.Config{}), Default).(syscall.Conn); ok {
		t.Errorf("a wrapped TLS connection claims syscall.Conn")
	}
}

// FuzzOutside61Differential: a stream the Scanner takes as K whole replies must be K
// replies to go-redis too (read by the real client's ReadReply, RESP2, after a refused
// HELLO): the K+1th command reads the sentinel after them. go-redis reading fewer, longer
// replies (the sentinel earlier, or swallowed: EOF) fails; more, shorter ones (the sentinel
// not reached, no EOF) is logged.
func FuzzOutside61Differential(f *testing.F) {
	for _, seed := range []string{
		"+OK\r\n*2\r\n$3\r\nabc\r\n:1\r\n",
		"%1\r\n+a\r\n|1\r\n+k\r\n+v\r\n*1\r\n_\r\n",
		">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$-1\r\n",
		"*2\r\n$-1\r\n*-1\r\n=5\r\ntxt:a\r\n!3\r\nERR\r\n",
		"*2\r\n|0\r\n+a\r\n+b\r\n",
		"*2\r\n|-1\r\n+a\r\n+b\r\n",
		"|0\r\n+a\r\n",
		"|1\r\n+k\r\n|1\r\n+a\r\n+b\r\n+v\r\n:5\r\n",
	} {
		f.Add([]byte(seed), uint8(0))
	}
	l := Limits{MaxLine: 256, MaxBulk: 256, MaxElems: 64, MaxDepth: 8, MaxReply: 4096}
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8) {
		if len(stream) > 4096 {
			return
		}
		s := NewScanner(l)
		k := 0
		for i := range stream {
			if _, err := s.Scan(stream[i : i+1]); err != nil {
				return // refused: go-redis never sees it
			}
			if s.replyLen == 0 {
				k++
			}
		}
		if s.lineLen != 0 || s.inBulk != 0 || len(s.stack) != 0 || s.replyLen != 0 || k > 64 {
			return // not whole replies
		}
		const sentinel = "O61SENTINEL"
		all := append(append([]byte("-ERR unknown command 'HELLO'\r\n"), stream...), "+"+sentinel+"\r\n"...)
		c := redis.NewClient(&redis.Options{
			Addr: "o61:6379", Protocol: 2, DisableIdentity: true, MaxRetries: -1, PoolSize: 1,
			Dialer: func(context.Context, string, string) (net.Conn, error) {
				return &o61MemConn{r: bytes.NewReader(all), chunk: int(chunk)}, nil
			},
		})
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// One pipeline of K+1 commands (go-redis drops a connection with bytes left over
		// after a command, so one command at a time would not do).
		pipe := c.Pipeline()
		cmds := make([]*redis.Cmd, k+1)
		for i := range cmds {
			cmds[i] = pipe.Do(ctx, "X")
		}
		pipe.Exec(ctx)
		at, eof := -1, false
		for i, cmd := range cmds {
			v, err := cmd.Result()
			if err == nil && v == sentinel && at < 0 {
				at = i
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				eof = true
			}
		}
		switch {
		case at == k:
		case at < 0 && !eof:
			t.Logf("%q: go-redis read more replies than the %d the Scanner drew (the Scanner stricter), or failed", stream, k)
		case at >= 0:
			t.Errorf("%q: the Scanner drew %d whole replies; go-redis read them as %d: what it reads as one reply the Scanner checked as several", stream, k, at)
		case eof:
			t.Errorf("%q: the Scanner drew %d whole replies; go-redis read past them (EOF): what it reads as one reply the Scanner checked as several", stream, k)
		}
	})
}
