package detect

// Outside round 60: the attacker IS the Redis server the replicas share (a compromised
// Redis host, a malicious managed-Redis operator, a man-in-the-middle on plaintext
// redis://). It holds no key of Strongroom's; it answers every command as it likes. Here
// that server is a RESP server in this test (o60Server), and RedisBus.Read is driven
// through go-redis against it, as `serve` wires it.
//
// Attack: replay. The attacker kept sealed records it carried earlier (an hour ago: every
// XADD passed through it) and answers a reader's read script with them, each under an
// entry id whose time is the record's seal time — Redis names the entries, so it names
// them as it likes.
//
// DESIGN ("Replicas"): "a record must have been sealed within 30 s of its stream entry's
// time (Redis's clock; an entry cannot be added before the stream's last) or of the
// reader's clock … — so a session the reader forgot, a minute after its last record,
// cannot be replayed either"; and "What Redis can still do is delay or reorder records".
//
// Found: TestOutside60BusReplaysOldRecords — FAIL while it lasts. The freshness test
// takes the entry's time from Redis's answer, so a lying Redis makes any record fresh: a
// reader that does not know the record's session (every replica after a restart; any
// replica a minute after the session's last record, once another session appears) takes
// records sealed an hour ago, and each restarted replica takes them again. Held (control):
// a reader that knows the session refuses a repeat (its counter).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/strongroom/strongroom/internal/testenv"
)

// o60Server answers every connection's commands: HELLO is refused (RESP2), SUBSCRIBE
// confirmed, EVALSHA/EVAL answered by read (the records the attacker chooses), anything
// else +OK.
type o60Server struct {
	ln   net.Listener
	read atomic.Pointer[[]byte] // the read script's answer
}

func o60Listen(t *testing.T) *o60Server {
	t.Helper()
	s := &o60Server{}
	empty := []byte("*0\r\n")
	s.read.Store(&empty)
	s.ln = testenv.FakeRedis(t, s.serve)
	return s
}

func (s *o60Server) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		args, err := testenv.ReadCommand(br)
		if err != nil {
			return
		}
		var out string
		switch strings.ToLower(args[0]) {
		case "hello":
			out = "-ERR unknown command 'HELLO'\r\n"
		case "subscribe":
			for i, ch := range args[1:] {
				out += fmt.Sprintf("*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:%d\r\n", len(ch), ch, i+1)
			}
		case "ping":
			out = "+PONG\r\n"
		case "evalsha", "eval":
			out = string(*s.read.Load())
		default:
			out = "+OK\r\n"
		}
		if _, err := io.WriteString(c, out); err != nil {
			return
		}
	}
}

// answer makes the read script's answer: each record under the id whose time is ids[i].
func (s *o60Server) answer(recs [][]byte, ids []string) {
	b := fmt.Appendf(nil, "*%d\r\n", 2*len(recs))
	for i, r := range recs {
		b = fmt.Appendf(b, "$%d\r\n%s\r\n$%d\r\n", len(ids[i]), ids[i], len(r))
		b = append(b, r...)
		b = append(b, "\r\n"...)
	}
	s.read.Store(&b)
}

// o60Reader is a replica's bus on the attacker's server (a fresh process: it knows no
// session).
func o60Reader(t *testing.T, s *o60Server) *RedisBus {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: s.ln.Addr().String(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	b, err := NewRedisBus(rdb, "o60:detect:", testBusKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOutside60BusReplaysOldRecords(t *testing.T) {
	s := o60Listen(t)
	// What a publishing replica sealed an hour ago (its records passed through the
	// attacker's server then): five requests of an innocent principal.
	pub, err := NewRedisBus(nil, "o60:detect:", testBusKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	sealedAt := time.Now().Add(-time.Hour)
	var recs [][]byte
	var ids []string
	for i := range 5 {
		w := wireObs{Req: Request{TS: sealedAt, Principal: "innocent-o60", Model: "m", Endpoint: "/v1/chat/completions", PromptTokens: 10},
			F: Features{PromptLen: 40}, Src: "0123456789abcdef", N: uint64(i + 1)}
		plain, err := json.Marshal(&w)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, pub.seal.seal(plain, sealedAt))
		// Redis names entries; this one names each by the record's own seal time.
		ids = append(ids, fmt.Sprintf("%d-%d", sealedAt.UnixMilli(), i))
	}
	s.answer(recs, ids)

	// Three replicas, one after another (a restart each; or a replica a minute after the
	// session's last record): each reads the stream from its oldest entry.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	taken := 0
	var first *RedisBus
	for range 3 {
		r := o60Reader(t, s)
		if first == nil {
			first = r
		}
		_, got, err := r.Read(ctx, "")
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		for _, p := range got {
			if w, err := decodeWire(p); err == nil && w.Req.Principal == "innocent-o60" {
				taken++
			}
		}
	}
	// Control: the first reader, which knows the session now, refuses the repeat.
	_, again, err := first.Read(ctx, "")
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if len(again) != 0 {
		t.Errorf("control: a reader that knows the session took %d repeated records", len(again))
	}
	if taken > 0 {
		t.Errorf("records sealed %v ago, answered by Redis under entry ids of their seal time, were taken %d times by 3 readers that did not know their session (5 records; 0 expected): "+
			"DESIGN (\"Replicas\"): \"a record must have been sealed within 30 s of its stream entry's time … — so a session the reader forgot, a minute after its last record, cannot be replayed either\" — the entry's time is Redis's word, and a lying Redis makes any record fresh",
			time.Since(sealedAt).Round(time.Minute), taken)
	}
}
