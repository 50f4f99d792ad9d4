package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/strongroom/strongroom/internal/h1"
	"github.com/strongroom/strongroom/internal/rawsock"
)

// engineClient is the gateway's HTTP/1.1 client to plain-http engines: the request is
// written and its answer read on the request's own goroutine over a pooled keep-alive
// connection. net/http's Transport hands every request to two goroutines per connection
// (its read and write loops) and back; under load those hand-offs were a quarter of the
// gateway's CPU (docs/PERFORMANCE.md, "The engine client"). The answer is parsed by
// readAnswer (answer.go), stricter than net/http's http.ReadResponse and never different.
// https engines go through the Transport (fallback).
//
// What the Transport did that this keeps: a connection is reused only after its answer
// was read to its end and did not ask to close; a pooled connection is peeked at before
// every reuse (a non-blocking recv(MSG_PEEK)): one the engine closed, or one with bytes
// waiting that no request asked for (an answer sent twice, a smuggled second answer), is
// closed, never read as the next request's answer — pools are shared by every client; a
// request is sent once, never again (if the engine closed the connection between the peek
// and the request, the request fails as it would through the Transport); the request's
// context cancels it at any point (the connection is closed); the time to write the
// request and read the answer's headers is bounded (timeout), as are the headers' size;
// headers are checked before a byte is written.
//
// Pools are per tenant and engine address: a connection carries one tenant's requests
// only, so whatever desynchronizes one (an engine answering twice, a flaw in this client)
// can only hand a tenant an answer meant for itself. Idle connections are closed after
// idleFor by a sweep that runs while any are pooled.
type engineClient struct {
	dialer    net.Dialer
	timeout   time.Duration // to write the request and read the answer's headers
	maxIdle   int           // idle connections kept per pool (tenant and engine address)
	maxTotal  int           // idle connections kept in all pools together
	idleFor   time.Duration // an idle connection older than this is closed, not reused
	fallback  *http.Client
	mu        sync.Mutex
	idle      map[poolKey][]*engineConn
	idleTotal int
	sweeping  bool                     // a sweep is scheduled (cl.mu)
	tenants   map[string]*tenantClient // fallbackFor's, by tenant (cl.mu)
}

// tenantClient is a tenant's https client and when it was last asked for.
type tenantClient struct {
	c    *http.Client
	used time.Time
}

// poolKey names a pool of idle engine connections.
type poolKey struct{ tenant, addr string }

// maxEngineHeader bounds an engine answer's status line and headers.
const maxEngineHeader = 1 << 20

var errEngineHeaderTooLong = errors.New("engine answer's headers exceed 1 MiB")

type engineConn struct {
	c     net.Conn
	br    *bufio.Reader
	bw    *bufio.Writer
	pool  poolKey
	since time.Time // idle since
	// left bounds what the reader may still take while headers are read (-1: no bound).
	left int
	peek *peeker // idleOpen's, made at its first reuse
	// reused: taken again from the pool, not yet peeked (idleOpen): its first write
	// peeks first. last: the write under way is the request's last (roundTrip's Flush).
	reused, last bool
	// The strings of the last answer's header lines (h1.Recent): an engine's answers
	// mostly repeat them.
	recent h1.Recent
	// deadline is the one roundTrip set last (SetDeadline: reads and writes).
	deadline h1.Deadline
}

// errStale is a reused connection's write refused by its peek (idleOpen): the engine closed
// it, or sent bytes no request asked for. Nothing was written; DoFor takes another.
var errStale = errors.New("engine connection: closed or not quiet while idle")

// Write is the request's bytes (its buffered writer's): a reused connection's first write
// peeks first, and nothing is written if the peek finds it closed or not quiet (errStale);
// the request's last bytes are written with rawsock's Exchange, which waits for the
// answer without a read that finds nothing (and peeks in the same pass when still to do).
func (ec *engineConn) Write(p []byte) (int, error) {
	if x, ok := ec.c.(*rawsock.Conn); ok && ec.last {
		n, open, err := x.Exchange(p, ec.reused, nil)
		if !open {
			return 0, errStale
		}
		ec.reused = false
		if err != nil || n == len(p) {
			return n, err
		}
		m, err := ec.c.Write(p[n:])
		return n + m, err
	}
	if ec.reused {
		if !ec.idleOpen() {
			return 0, errStale
		}
		ec.reused = false
	}
	return ec.c.Write(p)
}

func (ec *engineConn) Read(p []byte) (int, error) {
	if ec.left >= 0 {
		if ec.left == 0 {
			return 0, errEngineHeaderTooLong
		}
		if len(p) > ec.left {
			p = p[:ec.left]
		}
	}
	n, err := ec.c.Read(p)
	if ec.left >= 0 {
		ec.left -= n
	}
	return n, err
}

func newEngineClient(timeout time.Duration, fallback *http.Client) *engineClient {
	return &engineClient{
		dialer:   net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		timeout:  timeout,
		maxIdle:  256,
		maxTotal: 1024,
		idleFor:  90 * time.Second,
		fallback: fallback,
		idle:     map[poolKey][]*engineConn{},
		tenants:  map[string]*tenantClient{},
	}
}

// fallbackFor is tenant's client for the engines this client does not speak to (https):
// the fallback's Transport cloned once per tenant, so that connections there, too, carry
// one tenant's requests (each clone keeps its idle connections 90 s at most). A tenant's
// clone not asked for in idleFor is dropped by the sweep, its idle connections closed:
// tenants that come and go do not leave a Transport each behind.
func (cl *engineClient) fallbackFor(tenant string) *http.Client {
	tr, ok := cl.fallback.Transport.(*http.Transport)
	if !ok {
		return cl.fallback
	}
	now := time.Now()
	cl.mu.Lock()
	defer cl.mu.Unlock()
	tc := cl.tenants[tenant]
	if tc == nil {
		c := *cl.fallback
		c.Transport = tr.Clone()
		tc = &tenantClient{c: &c}
		cl.tenants[tenant] = tc
	}
	tc.used = now
	cl.sweepLater()
	return tc.c
}

// Do is DoFor with the pool of no tenant, under req's context.
func (cl *engineClient) Do(req *http.Request, body []byte) (*http.Response, error) {
	return cl.DoFor(req.Context(), "", req, body)
}

// DoFor sends tenant's req, whose body is body (req.Body and req's context are not used on
// this path: ctx cancels it), over a connection of tenant's pool and returns the answer;
// its Body must be closed. req's Header goes out as it is, with Host and Content-Length.
// req.URL is only read (the gateway shares one parsed URL between requests).
func (cl *engineClient) DoFor(ctx context.Context, tenant string, req *http.Request, body []byte) (*http.Response, error) {
	if req.URL.Scheme != "http" {
		// The Transport reads the body and may send it again (GetBody): a request of its own.
		hr, err := http.NewRequestWithContext(ctx, req.Method, req.URL.String(), bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		hr.Header = req.Header
		return cl.fallbackFor(tenant).Do(hr)
	}
	addr := req.URL.Host
	if req.URL.Port() == "" {
		addr = net.JoinHostPort(req.URL.Hostname(), "80")
	}
	if err := checkEngineHeaders(req.Header); err != nil {
		return nil, err
	}
	for {
		ec, err := cl.conn(ctx, poolKey{tenant, addr})
		if err != nil {
			return nil, err
		}
		resp, err := cl.roundTrip(ctx, ec, req, body)
		if err != nil {
			ec.c.Close()
			if errors.Is(err, errStale) {
				continue // nothing was sent on it: the next idle one, or a new one
			}
			return nil, err
		}
		return resp, nil
	}
}

func (cl *engineClient) roundTrip(ctx context.Context, ec *engineConn, req *http.Request, body []byte) (resp *http.Response, err error) {
	stop := afterFunc(ctx, func() { ec.c.Close() })
	defer func() {
		if err != nil {
			stop()
			if ctx.Err() != nil {
				err = ctx.Err()
			}
		}
	}()
	if cl.timeout > 0 {
		// An engine that does not read the request (its body can be MiBs) holds the
		// write, not the read: the bound covers both. A connection's deadline moves
		// only when it must (h1.Deadline).
		if d, set := ec.deadline.Renew(time.Now(), cl.timeout); set {
			ec.c.SetDeadline(d)
		}
	}
	writeEngineRequest(ec.bw, req, body)
	ec.last = true
	err = ec.bw.Flush()
	ec.last = false
	if err != nil {
		return nil, err
	}
	ec.left = maxEngineHeader
	for {
		// 1xx answers before the answer (100 Continue, 103 Early Hints) are skipped, as
		// the Transport does; all of them count toward the headers' bound.
		resp, err = readAnswer(ec.br, &ec.recent)
		if err != nil || resp.StatusCode < 100 || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
	}
	if err != nil && ec.left == 0 {
		err = errEngineHeaderTooLong // whatever the parser made of the cut headers
	}
	ec.left = -1
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 599 {
		// 101 is no answer to a POST, and a status outside HTTP's classes would be relayed
		// to the client (net/http's server panics on some).
		return nil, fmt.Errorf("engine answered with status %d", resp.StatusCode)
	}
	if cl.timeout > 0 && (resp.ContentLength < 0 || int64(ec.br.Buffered()) < resp.ContentLength) {
		// The body is read without the headers' bound (a stream can last minutes). A body
		// already read in needs no lift (it costs a timer update per request): the next
		// request on the connection sets its own deadline, and a pooled connection whose
		// deadline passed fails its peek and is closed.
		ec.c.SetDeadline(time.Time{})
		ec.deadline.Forget()
	}
	resp.Body = &engineBody{cl: cl, ec: ec, r: resp.Body, stop: stop, keep: !resp.Close}
	return resp, nil
}

// afterFunc is context.AfterFunc, or the context's own when it has one (h1's request
// context: no context, channel or map of its own — ~1.5 µs a request less under load).
func afterFunc(ctx context.Context, f func()) (stop func() bool) {
	if a, ok := ctx.(interface{ AfterFunc(func()) func() bool }); ok {
		return a.AfterFunc(f)
	}
	return context.AfterFunc(ctx, f)
}

var errEngineHeader = errors.New("engine request: invalid header")

// checkEngineHeaders refuses header names and values that are not HTTP's (a CR, LF or NUL
// would let a value written into the request add headers or requests of its own): checked
// before anything is written.
func checkEngineHeaders(h http.Header) error {
	for k, vs := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return errEngineHeader
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return errEngineHeader
			}
		}
	}
	return nil
}

// writeEngineRequest writes req's request line and headers (checkEngineHeaders), and body;
// errors are the writer's, seen at its Flush.
func writeEngineRequest(w *bufio.Writer, req *http.Request, body []byte) {
	w.WriteString(req.Method)
	w.WriteByte(' ')
	w.WriteString(req.URL.RequestURI())
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(req.URL.Host)
	w.WriteString("\r\nContent-Length: ")
	w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(len(body)), 10)) // no copy, no allocation
	w.WriteString("\r\n")
	for k, vs := range req.Header {
		for _, v := range vs {
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	w.WriteString("\r\n")
	w.Write(body)
}

// conn is a connection of pool that the engine has not closed, or a new one.
func (cl *engineClient) conn(ctx context.Context, pool poolKey) (*engineConn, error) {
	now := time.Now()
	for {
		cl.mu.Lock()
		list := cl.idle[pool]
		if len(list) == 0 {
			cl.mu.Unlock()
			break
		}
		ec := list[len(list)-1]
		list[len(list)-1] = nil
		cl.take(pool, list[:len(list)-1])
		cl.mu.Unlock()
		if now.Sub(ec.since) < cl.idleFor {
			ec.reused = true // peeked at its first write (Write)
			return ec, nil
		}
		ec.c.Close()
	}
	c, err := cl.dialer.DialContext(ctx, "tcp", pool.addr)
	if err != nil {
		return nil, err
	}
	c = rawsock.Wrap(c) // raw reads and writes (package rawsock)
	ec := &engineConn{c: c, pool: pool, left: -1}
	ec.br = bufio.NewReaderSize(ec, 16<<10)
	ec.bw = bufio.NewWriterSize(ec, 8<<10)
	return ec, nil
}

// take sets pool's idle list to list, one shorter than it was (cl.mu held).
func (cl *engineClient) take(pool poolKey, list []*engineConn) {
	cl.idleTotal--
	cl.setIdle(pool, list)
}

// setIdle sets pool's idle list (cl.mu held); an empty pool is deleted: tenants come and
// go, and no empty pools are left behind.
func (cl *engineClient) setIdle(pool poolKey, list []*engineConn) {
	if len(list) == 0 {
		delete(cl.idle, pool)
		return
	}
	cl.idle[pool] = list
}

func (cl *engineClient) put(ec *engineConn) {
	ec.since = time.Now()
	cl.mu.Lock()
	if list := cl.idle[ec.pool]; len(list) < cl.maxIdle && cl.idleTotal < cl.maxTotal {
		cl.idle[ec.pool] = append(list, ec)
		cl.idleTotal++
		cl.sweepLater()
		cl.mu.Unlock()
		return
	}
	cl.mu.Unlock()
	ec.c.Close()
}

// sweep closes the connections idle for idleFor or longer, and comes back while any are
// left: an engine's idle connections do not wait for the next request to be closed.
func (cl *engineClient) sweep() {
	now := time.Now()
	var old []*engineConn
	cl.mu.Lock()
	next := time.Duration(0)
	for pool, list := range cl.idle {
		keep := list[:0]
		for _, ec := range list { // oldest first: put appends
			if age := now.Sub(ec.since); age >= cl.idleFor {
				old = append(old, ec)
				continue
			} else if next == 0 || cl.idleFor-age < next {
				next = cl.idleFor - age
			}
			keep = append(keep, ec)
		}
		clear(list[len(keep):])
		cl.idleTotal -= len(list) - len(keep)
		cl.setIdle(pool, keep)
	}
	var unused []*http.Client
	for tenant, tc := range cl.tenants {
		if age := now.Sub(tc.used); age >= cl.idleFor {
			unused = append(unused, tc.c)
			delete(cl.tenants, tenant)
		} else if next == 0 || cl.idleFor-age < next {
			next = cl.idleFor - age
		}
	}
	cl.sweeping = next > 0
	if cl.sweeping {
		time.AfterFunc(next, cl.sweep)
	}
	cl.mu.Unlock()
	for _, ec := range old {
		ec.c.Close()
	}
	for _, c := range unused {
		c.CloseIdleConnections()
	}
}

// sweepLater schedules a sweep if none is (cl.mu held).
func (cl *engineClient) sweepLater() {
	if !cl.sweeping {
		cl.sweeping = true
		time.AfterFunc(cl.idleFor, cl.sweep)
	}
}

// idleOpen reports whether an idle connection is still open and quiet: a non-blocking
// peek finds nothing to read. An engine's close, or bytes no request asked for — an answer
// sent twice, a second answer smuggled after the first's end (beyond what the reader had
// buffered) — mean it is not reused: the next client would read them as its answer. It
// costs a syscall per reuse (~2.7 % of the gateway's CPU under load); an earlier version
// skipped it for connections idle under 50 ms, and an outside test had one tenant read
// another's answer through that gap. A request that fits the writer's buffer makes the
// same peek inside rawsock.Exchange (engineConn.Write), where it takes the place of the
// read that would have found nothing after the request.
func idleOpen(c net.Conn) bool {
	p := newPeeker(c)
	return p != nil && p.idleOpen()
}

// idleOpen is idleOpen(ec.c) through the connection's own peeker: made once, not a raw
// connection and a closure at every reuse.
func (ec *engineConn) idleOpen() bool {
	if ec.peek == nil {
		if ec.peek = newPeeker(ec.c); ec.peek == nil {
			return false
		}
	}
	return ec.peek.idleOpen()
}

// peeker peeks at a connection's socket without blocking (idleOpen).
type peeker struct {
	rc   syscall.RawConn // nil: not a socket (a test's pipe): taken as open
	fn   func(fd uintptr) bool
	open bool
}

// newPeeker is c's peeker; nil if its socket cannot be had.
func newPeeker(c net.Conn) *peeker {
	p := &peeker{}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return p
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p.rc = rc
	p.fn = func(fd uintptr) bool {
		p.open = rawsock.PeekOpen(fd)
		return true
	}
	return p
}

func (p *peeker) idleOpen() bool {
	if p.rc == nil {
		return true
	}
	p.open = false
	err := p.rc.Read(p.fn)
	return err == nil && p.open
}

// engineBody is an answer's body: its connection goes back to the pool once the body
// was read to its end (and the answer did not ask to close), else it is closed.
type engineBody struct {
	cl   *engineClient
	ec   *engineConn
	r    io.ReadCloser
	stop func() bool
	keep bool
	eof  bool
}

func (b *engineBody) Read(p []byte) (int, error) {
	if b.ec == nil {
		return 0, errors.New("engine answer: body closed")
	}
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *engineBody) Close() error {
	ec := b.ec
	if ec == nil {
		return nil
	}
	b.ec = nil
	// The context's AfterFunc closed the connection if stop finds it already run.
	if b.stop() && b.eof && b.keep && ec.br.Buffered() == 0 {
		b.cl.put(ec)
		return nil
	}
	return ec.c.Close()
}
