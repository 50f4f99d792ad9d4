// Package respguard bounds what a Redis server can make its client hold. go-redis sizes its
// buffers by what a reply announces before reading any of it, and reads a line whole: one
// header from a malicious or compromised Redis (or a man in the middle of a redis://
// connection) announcing a terabyte made `serve` die of "out of memory", and a line without
// an end grew it by gigabytes (outside round 60). A Conn reads the RESP2/RESP3 stream as it
// passes and fails the connection at the first reply past its Limits, before the client
// sees the header that would have made it allocate.
package respguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Limits of one connection's replies. Every field must be positive.
type Limits struct {
	MaxLine  int   // bytes of a header or simple line (type byte to CRLF)
	MaxBulk  int64 // bytes of one bulk string, bulk error or verbatim string
	MaxElems int64 // elements a reply announces, all its aggregates together
	MaxDepth int   // aggregates open at once
	MaxReply int64 // bytes of one reply (a push message is one)
}

// Default suits Strongroom's uses of Redis: the limiter's scripts (replies of a few
// elements), the detection bus (read.lua: at most 256 KiB of records, 256 entries, a read)
// and pub/sub messages of a key id.
var Default = Limits{MaxLine: 64 << 10, MaxBulk: 4 << 20, MaxElems: 1 << 16, MaxDepth: 16, MaxReply: 16 << 20}

// ErrLimit is the error of a connection whose server sent past its Limits.
var ErrLimit = errors.New("respguard: Redis sent a reply past the client's limits")

// Dialer wraps dial (go-redis's Options.Dialer: redis.NewDialer(opt) for its own) so that
// every connection it makes is a Conn.
func Dialer(dial func(context.Context, string, string) (net.Conn, error), l Limits) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return Wrap(c, l), nil
	}
}

// Wrap returns c reading through a Scanner. A c that is a syscall.Conn (TCP) stays one, so
// that go-redis's idle-connection check (a MSG_PEEK) still runs; a TLS connection does not.
func Wrap(c net.Conn, l Limits) net.Conn {
	g := &conn{Conn: c, s: NewScanner(l)}
	if sc, ok := c.(syscall.Conn); ok {
		return &sysConn{conn: g, sc: sc}
	}
	return g
}

type conn struct {
	net.Conn
	s   *Scanner
	err error
}

// Read gives the client the bytes before the first one past the limits, then the error (the
// connection is closed: the client drops it).
func (c *conn) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(p)
	if k, serr := c.s.Scan(p[:n]); serr != nil {
		c.err = serr
		c.Conn.Close()
		return k, serr
	}
	return n, err
}

type sysConn struct {
	*conn
	sc syscall.Conn
}

func (c *sysConn) SyscallConn() (syscall.RawConn, error) { return c.sc.SyscallConn() }

// Scanner follows a RESP2/RESP3 byte stream, reply by reply, in constant memory.
type Scanner struct {
	l Limits

	inBulk   int64  // bytes of a bulk payload (and its CRLF) still to come; 0: at a line
	lineLen  int    // bytes of the current line so far
	typ      byte   // the current line's type byte
	num      int64  // its length field so far
	neg      bool   // a '-' began it
	digits   int    // digits in it
	bad      bool   // a byte in it that is not part of a length
	stack    []open // aggregates open
	elems    int64  // elements announced in this reply
	attrs    int    // attributes in this reply
	replyLen int64  // bytes of this reply so far
	err      error
}

type open struct {
	left int64 // elements still to come
	attr bool  // an attribute: its end is not an element of what holds it
}

// NewScanner is a Scanner at the start of a stream.
func NewScanner(l Limits) *Scanner { return &Scanner{l: l, stack: make([]open, 0, l.MaxDepth)} }

func (s *Scanner) fail(format string, a ...any) error {
	s.err = fmt.Errorf("%w: "+format, append([]any{ErrLimit}, a...)...)
	return s.err
}

// Scan takes the stream's next bytes. On an error, k is how many of them came before the
// byte that broke a limit (or the grammar); the stream is then unusable.
func (s *Scanner) Scan(p []byte) (k int, err error) {
	if s.err != nil {
		return 0, s.err
	}
	for i := 0; i < len(p); {
		if s.inBulk > 0 {
			take := min(int64(len(p)-i), s.inBulk)
			s.inBulk -= take
			s.replyLen += take
			if s.replyLen > s.l.MaxReply {
				return i, s.fail("a reply of over %d bytes", s.l.MaxReply)
			}
			i += int(take)
			if s.inBulk == 0 {
				s.done()
			}
			continue
		}
		b := p[i]
		s.replyLen++
		if s.replyLen > s.l.MaxReply {
			return i, s.fail("a reply of over %d bytes", s.l.MaxReply)
		}
		if s.lineLen == 0 {
			s.typ, s.num, s.neg, s.digits, s.bad = b, 0, false, 0, false
		} else if b == '\n' {
			s.lineLen = 0
			if err := s.line(); err != nil {
				return i, err
			}
			i++
			continue
		} else if s.lineLen > 0 {
			switch {
			case b == '\r':
			case b == '-' && s.lineLen == 1:
				s.neg = true
			case b >= '0' && b <= '9' && s.digits < 19:
				s.num = s.num*10 + int64(b-'0')
				s.digits++
			default:
				s.bad = true
			}
		}
		s.lineLen++
		if s.lineLen > s.l.MaxLine {
			return i, s.fail("a line of over %d bytes", s.l.MaxLine)
		}
		i++
	}
	return len(p), nil
}

// line ends the current line (its LF just read).
func (s *Scanner) line() error {
	switch s.typ {
	case '+', '-', ':', '_', ',', '#', '(':
		s.done()
		return nil
	case '$', '!', '=': // bulk string, bulk error, verbatim string
		switch n, null, err := s.length(); {
		case err != nil:
			return err
		case null:
			s.done()
		case n > s.l.MaxBulk:
			return s.fail("a string of %d bytes (at most %d)", n, s.l.MaxBulk)
		default:
			s.inBulk = n + 2
		}
		return nil
	case '*', '%', '~', '>', '|':
		n, null, err := s.length()
		if err != nil {
			return err
		}
		if s.typ == '|' {
			// An attribute is no element: go-redis reads it, drops it and reads the value it
			// is about in its place (a recursion an attribute), so an empty or null one ends
			// nothing here either (outside round 61: "|0" taken as an element ended replies
			// go-redis was still reading — 128 MiB in one — and a stream of them overflowed
			// go-redis's stack). A reply may carry MaxDepth of them.
			if s.attrs++; s.attrs > s.l.MaxDepth {
				return s.fail("a reply with over %d attributes", s.l.MaxDepth)
			}
			if null || n == 0 {
				return nil
			}
		}
		if null {
			s.done()
			return nil
		}
		if s.typ == '%' || s.typ == '|' {
			n *= 2
		}
		if s.elems += n; s.elems > s.l.MaxElems {
			return s.fail("a reply of over %d elements", s.l.MaxElems)
		}
		if n == 0 {
			s.done()
			return nil
		}
		if len(s.stack) >= s.l.MaxDepth {
			return s.fail("aggregates nested over %d deep", s.l.MaxDepth)
		}
		s.stack = append(s.stack, open{left: n, attr: s.typ == '|'})
		return nil
	}
	return s.fail("a reply of type %q", s.typ)
}

// length is the current line's length field: -1 is null (RESP2); a streamed length ("?"),
// a sign elsewhere or no digits is refused.
func (s *Scanner) length() (n int64, null bool, err error) {
	if s.bad || s.digits == 0 || s.digits > 18 {
		return 0, false, s.fail("a %q header that is not a length", s.typ)
	}
	if s.neg {
		if s.num != 1 {
			return 0, false, s.fail("a %q header of length -%d", s.typ, s.num)
		}
		return 0, true, nil
	}
	return s.num, false, nil
}

// done ends one element: it counts in the aggregate that holds it, which may end in turn.
// The end of the outermost is the reply's.
func (s *Scanner) done() {
	for len(s.stack) > 0 {
		top := &s.stack[len(s.stack)-1]
		top.left--
		if top.left > 0 {
			return
		}
		attr := top.attr
		s.stack = s.stack[:len(s.stack)-1]
		if attr {
			return // the value the attribute is about comes next
		}
	}
	s.elems, s.replyLen, s.attrs = 0, 0, 0
}

// pingEvery: a subscription with no message for this long is pinged (a connection that died
// without a word is found and replaced).
const pingEvery = 30 * time.Second

// Subscribe calls fn with the payload of every message published on channel until ctx ends.
// go-redis's own reader panics on pub/sub messages of shapes it does not expect (outside
// round 61: "*0", or a message whose channel is a number, on a subscription — index out of
// range or a failed type assertion in the goroutine Channel() reads in, where nothing
// recovers: the process died). Subscribe reads in its own loop, recovers such a panic, drops
// that connection and subscribes again; errors (Redis down) are retried every second. log
// gets a line an outage and an ALERT a panic.
//
// A message past the guard's limits (ErrLimit: Redis, or whoever publishes there, sent
// more than Strongroom ever asks for) is hostile: an ALERT, and the subscription is taken
// again at once, not a second later, unless the last such refusal was under a second ago —
// one oversized message had silenced the channel for that second, with no ALERT (outside
// round 63).
func Subscribe(ctx context.Context, c redis.UniversalClient, channel string, log *slog.Logger, fn func(payload string)) {
	SubscribeRefusing(ctx, c, channel, log, fn, nil)
}

// SubscribeRefusing is Subscribe that also calls refused (if not nil) for each message the
// guard refused (ErrLimit), e.g. to count it beside the messages fn drops.
func SubscribeRefusing(ctx context.Context, c redis.UniversalClient, channel string, log *slog.Logger, fn func(payload string), refused func()) {
	failing := false
	var lastRefused time.Time
	for ctx.Err() == nil {
		err := follow(ctx, c, channel, fn, func() {
			if failing {
				log.Info("redis: subscribed again", "channel", channel)
				failing = false
			}
		})
		if ctx.Err() != nil {
			return
		}
		wait := time.Second
		switch {
		case errors.Is(err, errPanic):
			log.Error("ALERT redis: "+err.Error()+"; subscribing again", "channel", channel)
		case errors.Is(err, ErrLimit):
			log.Error("ALERT redis: a message on the subscription was past the reply guard's limits; subscribing again", "channel", channel, "err", err)
			if refused != nil {
				refused()
			}
			if time.Since(lastRefused) >= time.Second {
				wait = 0
			}
			lastRefused = time.Now()
		case !failing:
			log.Error("redis: subscription failed; trying again every second", "channel", channel, "err", err)
		}
		failing = true
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

var errPanic = errors.New("a pub/sub message go-redis could not read")

// follow is one subscription's life: until an error, a panic or ctx's end.
func follow(ctx context.Context, c redis.UniversalClient, channel string, fn func(string), up func()) (err error) {
	sub := c.Subscribe(ctx, channel)
	defer sub.Close()
	// A read waits for a message or pingEvery whatever ctx does: its end closes the
	// subscription, which ends the read.
	defer context.AfterFunc(ctx, func() { sub.Close() })()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w (%v)", errPanic, p)
		}
	}()
	for {
		msg, err := sub.ReceiveTimeout(ctx, pingEvery)
		var ne net.Error
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(err, &ne) && ne.Timeout():
			if err := sub.Ping(ctx); err != nil {
				return err
			}
			continue
		default:
			return err
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			up()
		case *redis.Message:
			fn(m.Payload)
		}
	}
}
