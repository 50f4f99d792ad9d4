// Package netguard bounds what a client can hold open before it has proved anything:
// connections (overall and per client address) and how long a connection may take to send
// its headers and body or sit idle. Every listener Strongroom serves goes through one Guard.
package netguard

import (
	"crypto/tls"
	"errors"
	"github.com/strongroom/strongroom/internal/h1"
	"github.com/strongroom/strongroom/internal/rawsock"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Limits are a Guard's caps. Zero values take the defaults of New.
type Limits struct {
	// MaxConns caps open connections across every listener of the Guard; default: a third
	// of the file-descriptor limit left after a reserve for the log, the store and the
	// upstream connections (each client connection may hold one upstream connection).
	MaxConns int
	// MaxConnsPerIP caps open connections from one client address; default 256. Exempt
	// addresses (trusted proxies, which carry many clients) are not capped.
	MaxConnsPerIP int
	Exempt        []netip.Prefix
	HeaderTimeout time.Duration // request line and headers, TLS handshake included; default 10s
	BodyTimeout   time.Duration // the request body, from the end of the headers; default 60s
	IdleTimeout   time.Duration // between requests on a keep-alive connection; default 30s
	// PeerTimeout drops a connection whose peer stops acknowledging (a host that vanished
	// without closing: power, network cut) — TCP keepalive probes and TCP_USER_TIMEOUT —
	// so long streams (custody watches) end and their leases with them; default 30s.
	PeerTimeout time.Duration
}

// fdReserve is the file descriptors kept out of reach of client connections.
const fdReserve = 512

// Guard counts connections; safe for concurrent use.
type Guard struct {
	lim       Limits
	log       *slog.Logger
	open      atomic.Int64
	mu        sync.Mutex
	perIP     map[netip.Addr]int
	rejected  *prometheus.CounterVec
	gauge     prometheus.GaugeFunc
	lastWarn  atomic.Int64 // unix seconds of the last alert, to log one a minute
	nrejected atomic.Int64
}

// New returns a Guard with defaults set. reg may be nil.
func New(lim Limits, log *slog.Logger, reg prometheus.Registerer) (*Guard, error) {
	if lim.MaxConns == 0 {
		lim.MaxConns = DefaultMaxConns()
	}
	if lim.MaxConnsPerIP == 0 {
		lim.MaxConnsPerIP = 256
	}
	if lim.HeaderTimeout == 0 {
		lim.HeaderTimeout = 10 * time.Second
	}
	if lim.BodyTimeout == 0 {
		lim.BodyTimeout = 60 * time.Second
	}
	if lim.IdleTimeout == 0 {
		lim.IdleTimeout = 30 * time.Second
	}
	if lim.PeerTimeout == 0 {
		lim.PeerTimeout = 30 * time.Second
	}
	if lim.MaxConns < 1 || lim.MaxConnsPerIP < 1 || lim.HeaderTimeout < 0 || lim.BodyTimeout < 0 || lim.IdleTimeout < 0 {
		return nil, errors.New("netguard: limits must be positive")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Guard{lim: lim, log: log, perIP: map[netip.Addr]int{}}
	g.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strongroom_conn_rejected_total",
		Help: "Connections closed at accept because a connection limit was reached, by limit (total, per_ip)."}, []string{"limit"})
	g.gauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strongroom_conn_open",
		Help: "Client connections open on Strongroom's listeners."}, func() float64 { return float64(g.open.Load()) })
	if reg != nil {
		for _, c := range []prometheus.Collector{g.rejected, g.gauge} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return g, nil
}

// Limits returns the limits in force.
func (g *Guard) Limits() Limits { return g.lim }

// DefaultMaxConns derives the connection cap from the file-descriptor limit (Go raises
// the soft limit to the hard one at start).
func DefaultMaxConns() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return 4096
	}
	return max(int(rl.Cur)-fdReserve, 64) / 3
}

// Rejected returns the number of connections refused so far.
func (g *Guard) Rejected() int64 { return g.nrejected.Load() }

// Listener wraps ln: connections past a limit are closed at once, counted, and alerted
// (one log line a minute).
func (g *Guard) Listener(ln net.Listener) net.Listener { return &listener{Listener: ln, g: g} }

type listener struct {
	net.Listener
	g *Guard
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err // http.Server backs off on temporary errors (EMFILE)
		}
		if gc := l.g.admit(c); gc != nil {
			return gc, nil
		}
	}
}

func (g *Guard) exempt(ip netip.Addr) bool {
	for _, p := range g.lim.Exempt {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (g *Guard) admit(c net.Conn) net.Conn {
	var ip netip.Addr
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		ip = ap.Addr().Unmap()
	}
	if g.open.Add(1) > int64(g.lim.MaxConns) {
		g.open.Add(-1)
		g.reject(c, "total", ip)
		return nil
	}
	capped := ip.IsValid() && !g.exempt(ip)
	if capped {
		g.mu.Lock()
		if g.perIP[ip] >= g.lim.MaxConnsPerIP {
			g.mu.Unlock()
			g.open.Add(-1)
			g.reject(c, "per_ip", ip)
			return nil
		}
		g.perIP[ip]++
		g.mu.Unlock()
	}
	peerTimeout(c, g.lim.PeerTimeout)
	// Its reads and writes are raw system calls (package rawsock: the scheduler's monitor
	// is not woken by each).
	c = rawsock.Wrap(c)
	return &conn{Conn: c, release: sync.OnceFunc(func() {
		if capped {
			g.mu.Lock()
			if g.perIP[ip]--; g.perIP[ip] <= 0 {
				delete(g.perIP, ip)
			}
			g.mu.Unlock()
		}
		g.open.Add(-1)
	})}
}

func (g *Guard) reject(c net.Conn, limit string, ip netip.Addr) {
	g.rejected.WithLabelValues(limit).Inc()
	g.nrejected.Add(1) // counted before the client can see the close
	c.Close()
	now := time.Now().Unix()
	if last := g.lastWarn.Load(); now-last >= 60 && g.lastWarn.CompareAndSwap(last, now) {
		g.log.Error("ALERT connection limit reached; refusing connections", "limit", limit, "max_conns", g.lim.MaxConns,
			"max_conns_per_ip", g.lim.MaxConnsPerIP, "client", ip.String())
	}
}

type conn struct {
	net.Conn
	release func()
}

func (c *conn) Close() error {
	c.release()
	return c.Conn.Close()
}

// CloseWrite half-closes the connection when the one under the guard can (h1's gentle
// close after a body left unread sends its FIN so; the wrapper hid it: outside round 46).
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// NetConn is the connection under the guard's (h1 asks its socket whether a client hung
// up while its reader is full: internal/h1's watch).
func (c *conn) NetConn() net.Conn { return c.Conn }

// Server returns an http.Server for h with the Guard's timeouts. There is no whole-request
// ReadTimeout or WriteTimeout, which would cut long streams (SSE, custody watches): the
// body's deadline is set per request and lifted once the body is read.
func (g *Guard) Server(h http.Handler, tc *tls.Config) *http.Server {
	return &http.Server{
		Handler:           g.bodyDeadline(h),
		TLSConfig:         tc,
		ReadHeaderTimeout: g.lim.HeaderTimeout,
		IdleTimeout:       g.lim.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
	}
}

// H1Server is Server's counterpart on the h1 server (the gateway's, internal/h1): the
// same header, idle and body timeouts and header bound (h1 bounds the body itself, and
// only when it is not already read in).
func (g *Guard) H1Server(h http.Handler, log *slog.Logger) *h1.Server {
	return &h1.Server{
		Handler:           h,
		BodyTimeout:       g.lim.BodyTimeout,
		ReadHeaderTimeout: g.lim.HeaderTimeout,
		IdleTimeout:       g.lim.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		Log:               log,
	}
}

func (g *Guard) bodyDeadline(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
			rc := http.NewResponseController(w)
			if rc.SetReadDeadline(time.Now().Add(g.lim.BodyTimeout)) == nil {
				r.Body = &deadlineBody{ReadCloser: r.Body, lift: sync.OnceFunc(func() { rc.SetReadDeadline(time.Time{}) })}
			}
		}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody lifts the read deadline once the body has been read to its end, so that a
// long answer after it is not cut short. After a failed read the deadline stays: the
// server's drain of the unread body must not wait on a stalled client.
type deadlineBody struct {
	io.ReadCloser
	lift func()
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.lift()
	}
	return n, err
}

// peerTimeout makes the kernel give up on a peer that stops acknowledging: keepalive probes
// on an idle connection, and TCP_USER_TIMEOUT for data left unacknowledged (a stream being
// written to a vanished host). Best effort: a socket that refuses keeps the defaults.
func peerTimeout(c net.Conn, d time.Duration) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	probe := max(d/6, time.Second)
	tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: probe, Interval: probe, Count: 3})
	if rc, err := tc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
		})
	}
}
