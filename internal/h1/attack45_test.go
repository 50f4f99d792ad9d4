package h1

// Outside round 45: the state a keep-alive connection keeps across requests (Recent: the
// strings of the last request's header lines by position, and its request target). Every
// test asserts the secure behaviour — each request is read exactly as net/http reads it
// alone, nothing of an earlier request reaches a later one — and fails if it is broken.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/textproto"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// a45Msg is one generated request.
type a45Msg struct {
	method, target, proto string
	lines                 []string // header lines, framing ones excluded
	frame                 string   // "", "cl", "chunked"
	framePos              int      // where the framing line goes among lines
	frameLine             int      // which spelling of the framing line
	body                  string
	trailers              []string
}

var a45CL = []string{"Content-Length: %d", "content-length: %d", "CONTENT-LENGTH:%d", "Content-Length: %d \t"}
var a45TE = []string{"Transfer-Encoding: chunked", "transfer-encoding: Chunked", "Transfer-Encoding:chunked  ", "TRANSFER-ENCODING: CHUNKED"}

func (m *a45Msg) raw() string {
	var b strings.Builder
	b.WriteString(m.method + " " + m.target + " " + m.proto + "\r\n")
	var fl string
	switch m.frame {
	case "cl":
		fl = fmt.Sprintf(a45CL[m.frameLine%len(a45CL)], len(m.body))
	case "chunked":
		fl = a45TE[m.frameLine%len(a45TE)]
	}
	for i, l := range m.lines {
		if fl != "" && i == m.framePos {
			b.WriteString(fl + "\r\n")
		}
		b.WriteString(l + "\r\n")
	}
	if fl != "" && m.framePos >= len(m.lines) {
		b.WriteString(fl + "\r\n")
	}
	b.WriteString("\r\n")
	switch m.frame {
	case "cl":
		b.WriteString(m.body)
	case "chunked":
		rest := m.body
		for k := 0; len(rest) > 0; k++ {
			n := min(len(rest), 1+k*37%97)
			fmt.Fprintf(&b, "%x\r\n%s\r\n", n, rest[:n])
			rest = rest[n:]
		}
		b.WriteString("0\r\n")
		for _, tl := range m.trailers {
			b.WriteString(tl + "\r\n")
		}
		b.WriteString("\r\n")
	}
	return b.String()
}

func (m *a45Msg) clone() *a45Msg {
	c := *m
	c.lines = append([]string(nil), m.lines...)
	c.trailers = append([]string(nil), m.trailers...)
	return &c
}

// a45Tokens are API keys one byte apart (last, first, middle of the secret; id).
var a45Tokens = []string{
	"Bearer sr_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
	"Bearer sr_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE",
	"Bearer sr_0123456789abcdef.BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
	"Bearer sr_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAbAAAAAAAAAAAAAAAAAAAAA",
	"Bearer sr_0123456789abcdeF.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
	"Bearer sk-alice", "Bearer sk-bob", "bearer sk-alice", "Bearer  sk-alice",
}

var a45Names = []string{
	"Authorization", "authorization", "AUTHORIZATION", "X-Forwarded-For", "x-forwarded-for",
	"X-A45-One", "x-a45-one", "X-A45-ONE", "X-A45-Onf", "X-A45-Two", "User-Agent", "user-agent",
	"Accept", "X-Stainless-Lang", "x-stainless-LANG", "Openai-Project", "Openai-Organization",
	"X-Request-Id", "Idempotency-Key", "Pragma", "Cache-Control", "Cookie", "X-Real-Ip", "Forwarded",
	"X_Under_Score", "x-a45-" + strings.Repeat("n", 249), "x-a45-" + strings.Repeat("n", 250),
	"x-a45-" + strings.Repeat("n", 251), "X-A45-" + strings.Repeat("N", 300),
}

func a45Long(n int, last byte) string { return strings.Repeat("v", n-1) + string(last) }

var a45Values = []string{
	"", "a", "b", "ab", "alpha", "blpha", "203.0.113.5", "203.0.113.6", "203.0.113.5, 10.0.0.1",
	"10.0.0.1, 203.0.113.5", "application/json", "*/*", "no-cache", "OpenAI/Go 1.12.0", "OpenAI/Go 1.12.1",
	"js", "jss", "héllo wörld", "v\tw", "tab\t\tinside", "quoted \"x, y\"", "1", "01",
	a45Long(255, 'a'), a45Long(256, 'a'), a45Long(256, 'b'), a45Long(257, 'a'), a45Long(257, 'b'),
	a45Long(300, 'a'), a45Long(5000, 'a'), a45Long(5000, 'b'),
}

var a45Pads = []string{"", "", "", " ", "\t", " \t ", "  "}

type a45Gen struct{ r *rand.Rand }

func (g *a45Gen) pick(list []string) string { return list[g.r.IntN(len(list))] }

func (g *a45Gen) value(name string) string {
	var v string
	switch {
	case strings.EqualFold(name, "Authorization") && g.r.IntN(4) > 0:
		v = g.pick(a45Tokens)
	case strings.EqualFold(name, "X-Forwarded-For") && g.r.IntN(3) > 0:
		v = g.pick(a45Values[6:10])
	default:
		v = g.pick(a45Values)
	}
	return v
}

func (g *a45Gen) line() string {
	name := g.pick(a45Names)
	return name + ":" + g.pick(a45Pads[1:]) + g.value(name) + g.pick(a45Pads)
}

var a45Targets = []string{"/v1/chat/completions", "/v1/chat/completionz", "/v1/models", "/v1/models?x=1", "/v1/models?x=2",
	"/a%2Fb", "/v1/chat/completions?", "/" + strings.Repeat("p", 300), "/" + strings.Repeat("p", 299) + "q"}

var a45Hosts = []string{"Host: gw", "host: gw", "HOST: gw2", "Host: gw:8080", "Host:gw ", "Host: a45.example", "Host: GW"}

// first is a fresh request.
func (g *a45Gen) first() *a45Msg {
	m := &a45Msg{method: g.pick([]string{"GET", "POST", "POST", "PUT", "A45"}), target: g.pick(a45Targets), proto: "HTTP/1.1"}
	m.lines = append(m.lines, g.pick(a45Hosts))
	for range g.r.IntN(12) {
		m.lines = append(m.lines, g.line())
	}
	g.r.Shuffle(len(m.lines), func(i, j int) { m.lines[i], m.lines[j] = m.lines[j], m.lines[i] })
	g.framing(m)
	return m
}

func (g *a45Gen) framing(m *a45Msg) {
	m.frame = g.pick([]string{"", "cl", "cl", "chunked"})
	if m.proto == "HTTP/1.0" && m.frame == "chunked" {
		m.frame = "cl"
	}
	m.framePos, m.frameLine = g.r.IntN(len(m.lines)+1), g.r.IntN(4)
	m.body, m.trailers = "", nil
	if m.frame != "" {
		n := g.r.IntN(300)
		if g.r.IntN(4) == 0 {
			// A body that reads like a request: never one.
			m.body = "GET /smuggled HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-evil\r\n\r\n"
		}
		for len(m.body) < n {
			m.body += string(rune('a' + g.r.IntN(26)))
		}
	}
	if m.frame == "chunked" {
		for range g.r.IntN(4) {
			m.trailers = append(m.trailers, g.line())
		}
	}
}

// next is a request made from the last one the way an attacker would: its lines repeated,
// shifted, renamed in case, changed by a byte, dropped, repeated, or many more of them.
func (g *a45Gen) next(prev *a45Msg) *a45Msg {
	m := prev.clone()
	for range 1 + g.r.IntN(4) {
		n := len(m.lines)
		switch g.r.IntN(13) {
		case 0: // insert a line at the front: every line shifts by one
			m.lines = append([]string{g.line()}, m.lines...)
		case 1: // insert anywhere
			i := g.r.IntN(n + 1)
			m.lines = append(m.lines[:i], append([]string{g.line()}, m.lines[i:]...)...)
		case 2: // drop a line that is not Host
			if i := g.r.IntN(max(n, 1)); n > 0 && !strings.HasPrefix(strings.ToLower(m.lines[i]), "host:") {
				m.lines = append(m.lines[:i], m.lines[i+1:]...)
			}
		case 3: // change a value by one byte
			if i := g.r.IntN(max(n, 1)); n > 0 && !strings.HasPrefix(strings.ToLower(m.lines[i]), "host:") {
				l := []byte(m.lines[i])
				colon := bytes.IndexByte(l, ':')
				if vlen := len(l) - colon - 1; vlen > 0 {
					j := colon + 1 + g.r.IntN(vlen)
					if l[j] > ' ' && l[j] < 0x7f {
						if l[j] ^= 1; l[j] <= ' ' || l[j] >= 0x7f {
							l[j] = 'z'
						}
					}
				}
				m.lines[i] = string(l)
			}
		case 4: // change a name's case
			if i := g.r.IntN(max(n, 1)); n > 0 {
				name, v, _ := strings.Cut(m.lines[i], ":")
				if g.r.IntN(2) == 0 {
					name = strings.ToLower(name)
				} else {
					name = strings.ToUpper(name)
				}
				m.lines[i] = name + ":" + v
			}
		case 5: // swap two lines
			if n > 1 {
				i, j := g.r.IntN(max(n, 1)), g.r.IntN(max(n, 1))
				m.lines[i], m.lines[j] = m.lines[j], m.lines[i]
			}
		case 6: // repeat a line (a multi-value header), not Host
			if i := g.r.IntN(max(n, 1)); n > 0 && !strings.HasPrefix(strings.ToLower(m.lines[i]), "host:") {
				m.lines = append(m.lines[:i+1], append([]string{m.lines[i]}, m.lines[i+1:]...)...)
			}
		case 7: // many lines: past what Recent remembers
			for k := range 20 + g.r.IntN(20) {
				m.lines = append(m.lines, fmt.Sprintf("X-Fill-%d: f%d", k%7, k%5))
			}
		case 8: // rotate: the same bytes, every line one position later
			if n > 1 {
				m.lines = append([]string{m.lines[n-1]}, m.lines[:n-1]...)
			}
		case 9:
			m.target = g.pick(a45Targets)
		case 10:
			g.framing(m)
		case 11: // a value emptied, padded, or replaced
			if i := g.r.IntN(max(n, 1)); n > 0 && !strings.HasPrefix(strings.ToLower(m.lines[i]), "host:") {
				name, _, _ := strings.Cut(m.lines[i], ":")
				m.lines[i] = name + ":" + g.pick(a45Pads) + g.value(name) + g.pick(a45Pads)
			}
		case 12:
			m.method = g.pick([]string{"GET", "POST", "PUT", "A45"})
		}
	}
	if len(m.lines) > 90 {
		m.lines = m.lines[len(m.lines)-90:]
		if !slicesHasHost(m.lines) {
			m.lines[0] = g.pick(a45Hosts)
		}
	}
	if m.framePos > len(m.lines) {
		m.framePos = len(m.lines)
	}
	if g.r.IntN(10) == 0 {
		// HTTP/1.0 kept alive.
		m.proto = "HTTP/1.0"
		m.lines = append(m.lines, g.pick([]string{"Connection: keep-alive", "connection: Keep-Alive", "Connection:keep-alive "}))
		if m.frame == "chunked" {
			m.frame, m.trailers = "cl", nil
		}
	} else if m.proto == "HTTP/1.0" {
		m.proto = "HTTP/1.1"
		m.lines = slicesDrop(m.lines, "connection:")
	}
	if m.frame != "" && m.proto == "HTTP/1.1" && g.r.IntN(8) == 0 {
		m.lines = append(slicesDrop(m.lines, "expect:"), g.pick([]string{"Expect: 100-continue", "expect: 100-Continue"}))
	}
	return m
}

func slicesHasHost(lines []string) bool {
	for _, l := range lines {
		if strings.HasPrefix(strings.ToLower(l), "host:") {
			return true
		}
	}
	return false
}

func slicesDrop(lines []string, prefix string) []string {
	out := lines[:0:0]
	for _, l := range lines {
		if !strings.HasPrefix(strings.ToLower(l), prefix) {
			out = append(out, l)
		}
	}
	return out
}

// a45Valid reports whether raw is one request that net/http and this reader both read
// alone, and read the same way (a request one of them refuses is not generated). A
// request both read differently alone is reported by the caller.
func a45Valid(raw string) (ok bool, differ string) {
	want, wb, err := stdParse([]byte(raw))
	if err != nil {
		return false, ""
	}
	got, err := readAll([]byte(raw))
	if err != nil || len(got) != 1 {
		return false, ""
	}
	if d := same(got[0].r, want, got[0].body, wb); d != "" {
		return false, d
	}
	return true, ""
}

// a45Sequence is a run of valid requests for one connection.
func a45Sequence(t testing.TB, g *a45Gen, n int) []string {
	var out []string
	var prev *a45Msg
	for len(out) < n {
		var m *a45Msg
		for try := 0; ; try++ {
			if prev == nil || try > 20 {
				m = g.first()
			} else {
				m = g.next(prev)
			}
			ok, differ := a45Valid(m.raw())
			if differ != "" {
				t.Errorf("a request both readers take is read differently alone: %s\n%q", differ, m.raw())
			}
			if ok {
				break
			}
		}
		out = append(out, m.raw())
		prev = m
	}
	return out
}

// TestAttack45InProcessSequences: thousands of request sequences on one connection
// (conn.readRequest, the server's reader, with its Recent and last target), each request
// made from the last by repeating, shifting, re-casing, changing by a byte, dropping,
// repeating lines, going past 24 lines, long (>256 B, >4 KiB) values and names, empty and
// padded values, other API keys and X-Forwarded-For at the same positions, chunked bodies
// with trailers, HTTP/1.0 keep-alive, Expect: each request must be read exactly as
// net/http reads it alone (method, target, URL, Host, every header value, framing, body,
// trailers, Close).
func TestAttack45InProcessSequences(t *testing.T) {
	g := &a45Gen{r: rand.New(rand.NewPCG(45, 1))}
	var stats a45Stats
	defer func() { t.Logf("%d requests: %+v", stats.total, stats) }()
	for seq := range 2000 {
		reqs := a45Sequence(t, g, 2+g.r.IntN(10))
		stats.add(reqs)
		got, err := readAll([]byte(strings.Join(reqs, "")))
		if err != nil || len(got) != len(reqs) {
			t.Fatalf("sequence %d: read %d of %d requests: %v\n%q", seq, len(got), len(reqs), err, reqs)
		}
		for k, raw := range reqs {
			want, wb, _ := stdParse([]byte(raw))
			if d := same(got[k].r, want, got[k].body, wb); d != "" {
				t.Fatalf("sequence %d, request %d read differently after the ones before it than net/http reads it alone: %s\nbefore: %q\nrequest: %q", seq, k, d, reqs[:k], raw)
			}
		}
	}
}

// a45Stats counts what the generated requests exercised.
type a45Stats struct {
	total, over24, longValue, over4K, chunked, trailers, http10, expect, emptyValue, padded, repeatedName int
}

func (st *a45Stats) add(reqs []string) {
	for _, raw := range reqs {
		st.total++
		head, _, _ := strings.Cut(raw, "\r\n\r\n")
		lines := strings.Split(head, "\r\n")[1:]
		if len(lines) > RecentLines {
			st.over24++
		}
		seen := map[string]bool{}
		var long, huge, empty, pad, rep bool
		for _, l := range lines {
			name, v, _ := strings.Cut(l, ":")
			if len(v) > RecentMax {
				long = true
			}
			if len(v) > 4<<10 {
				huge = true
			}
			if strings.Trim(v, " \t") == "" {
				empty = true
			}
			if strings.TrimRight(v, " \t") != v {
				pad = true
			}
			if k := textproto.CanonicalMIMEHeaderKey(name); seen[k] {
				rep = true
			} else {
				seen[k] = true
			}
		}
		for _, c := range []struct {
			on bool
			n  *int
		}{{long, &st.longValue}, {huge, &st.over4K}, {empty, &st.emptyValue}, {pad, &st.padded}, {rep, &st.repeatedName},
			{seen["Transfer-Encoding"], &st.chunked}, {seen["Expect"], &st.expect}, {strings.HasSuffix(strings.SplitN(raw, "\r\n", 2)[0], "HTTP/1.0"), &st.http10},
			{seen["Transfer-Encoding"] && !strings.HasSuffix(raw, "0\r\n\r\n"), &st.trailers}} {
			if c.on {
				*c.n++
			}
		}
	}
}

// a45Snap is what a handler saw of a request: the request (a deep copy) and its body.
type a45Snap struct {
	r    *http.Request
	body []byte
	err  error
}

// a45ConnOf is the server's conn answering r (in its handler: the conn's goroutine).
func a45ConnOf(s *Server, r *http.Request) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.watchMu.Lock()
		mine := c.req == r
		c.watchMu.Unlock()
		if mine {
			return c
		}
	}
	return nil
}

// a45Server runs an h1 server (WatchAfter 1 ms) whose handler reads each body and keeps a
// deep copy of the request; a request the test marks (waits) holds its handler until the
// connection's watch has read the next request's first bytes ahead (up to 2 s), then lets
// the client send the rest.
type a45Server struct {
	s     *Server
	addr  string
	mu    sync.Mutex
	snaps map[string][]a45Snap // by the client's address
	// waits: client address -> request index -> closed once the watch saw bytes
	waits map[string]map[int]chan struct{}
	// watched counts the marked handlers whose connection's watch read ahead.
	watched int
}

func newA45Server(t *testing.T) *a45Server {
	as := &a45Server{snaps: map[string][]a45Snap{}, waits: map[string]map[int]chan struct{}{}}
	as.s, as.addr = a24H1(t, http.HandlerFunc(as.serve), func(s *Server) {
		s.WatchAfter = time.Millisecond
		s.ReadHeaderTimeout = 20 * time.Second
	})
	return as
}

func (as *a45Server) serve(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	snap := a45Snap{r: r.Clone(context.Background()), body: b, err: err}
	snap.r.RequestURI, snap.r.Close = r.RequestURI, r.Close
	as.mu.Lock()
	k := len(as.snaps[r.RemoteAddr])
	as.snaps[r.RemoteAddr] = append(as.snaps[r.RemoteAddr], snap)
	ch := as.waits[r.RemoteAddr][k]
	as.mu.Unlock()
	if ch != nil {
		// The next request's first bytes are on their way: wait for the watch to read
		// them into the connection's reader while this handler runs, then let the client
		// send the rest.
		c := a45ConnOf(as.s, r)
		for end := time.Now().Add(2 * time.Second); c != nil && c.watchSaw.Load() == 0 && time.Now().Before(end); {
			time.Sleep(200 * time.Microsecond)
		}
		if c != nil && c.watchSaw.Load() > 0 {
			as.mu.Lock()
			as.watched++
			as.mu.Unlock()
		}
		close(ch)
	}
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, "ok"+strconv.Itoa(k))
}

// run sends reqs on one connection — pipelined in pieces, the request after index cut
// (if cut >= 0) split in its header section, its second part sent once request cut's
// handler saw the first part read by the watch — and checks every request as read by the
// handler against net/http's reading of it alone, and every answer.
func (as *a45Server) run(t *testing.T, reqs []string, cut int, rnd *rand.Rand) {
	t.Helper()
	c, err := net.Dial("tcp", as.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	local := c.LocalAddr().String()
	all := strings.Join(reqs, "")
	split := len(all)
	var gate chan struct{}
	if cut >= 0 && cut+1 < len(reqs) {
		start := len(strings.Join(reqs[:cut+1], ""))
		head := strings.Index(reqs[cut+1], "\r\n\r\n")
		split = start + 1 + rnd.IntN(head+2)
		gate = make(chan struct{})
		as.mu.Lock()
		as.waits[local] = map[int]chan struct{}{cut: gate}
		as.mu.Unlock()
	}
	werr := make(chan error, 1)
	go func() {
		// The first part in random pieces (several requests a write, or a request over
		// several writes).
		for p := all[:split]; len(p) > 0; {
			n := min(len(p), 1+rnd.IntN(700))
			if _, err := io.WriteString(c, p[:n]); err != nil {
				werr <- err
				return
			}
			p = p[n:]
		}
		if gate != nil {
			select {
			case <-gate:
			case <-time.After(10 * time.Second):
			}
			if _, err := io.WriteString(c, all[split:]); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	br := bufio.NewReader(c)
	for k := range reqs {
		var resp *http.Response
		for {
			resp, err = http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("answer %d of %d: %v\nrequests: %q", k, len(reqs), err, reqs)
			}
			if resp.StatusCode != http.StatusContinue {
				break
			}
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "ok"+strconv.Itoa(k) {
			t.Fatalf("answer %d: %d %q, want 200 %q\nrequests: %q", k, resp.StatusCode, b, "ok"+strconv.Itoa(k), reqs)
		}
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	as.mu.Lock()
	snaps := as.snaps[local]
	delete(as.snaps, local)
	delete(as.waits, local)
	as.mu.Unlock()
	if len(snaps) != len(reqs) {
		t.Fatalf("handler saw %d requests, %d sent", len(snaps), len(reqs))
	}
	for k, raw := range reqs {
		want, wb, _ := stdParse([]byte(raw))
		if snaps[k].err != nil {
			t.Fatalf("request %d: body: %v", k, snaps[k].err)
		}
		if d := same(snaps[k].r, want, snaps[k].body, wb); d != "" {
			t.Fatalf("request %d on a kept-alive connection read differently than net/http reads it alone: %s\nbefore: %q\nrequest: %q", k, d, reqs[:k], raw)
		}
	}
}

// TestAttack45SocketSequences: the same over real sockets to the real Server: requests
// pipelined in random pieces, the watch (WatchAfter 1 ms) reading ahead while handlers run,
// and in half the connections a request split in its headers whose first part the watch
// read before the rest was sent. Every request must be read as net/http reads it alone.
func TestAttack45SocketSequences(t *testing.T) {
	as := newA45Server(t)
	g := &a45Gen{r: rand.New(rand.NewPCG(45, 2))}
	const conns = 120
	cuts := 0
	for i := range conns {
		reqs := a45Sequence(t, g, 2+g.r.IntN(8))
		cut := -1
		if i%2 == 0 {
			cut = g.r.IntN(len(reqs) - 1)
			cuts++
		}
		as.run(t, reqs, cut, g.r)
	}
	t.Logf("%d connections; the watch read ahead in %d of %d split requests", conns, as.watched, cuts)
	if as.watched < cuts/2 {
		t.Errorf("the watch read ahead in only %d of %d split requests: the test did not exercise it", as.watched, cuts)
	}
}

// a45Bad are requests a connection refuses partway: the lines before the bad one are
// those of the request before it (so they were compared with and remembered), then
// the reading fails.
var a45Bad = []struct{ name, raw string }{
	{"obs-fold", "X-A45-One: alpha\r\n folded\r\n"},
	{"space before colon", "X-A45-One : alpha\r\n"},
	{"bad name", "X A45: alpha\r\n"},
	{"NUL in value", "X-A45-One: al\x00pha\r\n"},
	{"bare LF", "X-A45-One: alpha\n"},
	{"CR inside", "X-A45-One: al\rpha\r\n"},
	{"two lengths", "Content-Length: 1\r\nContent-Length: 1\r\n"},
	{"length list", "Content-Length: 1, 1\r\n"},
	{"te gzip", "Transfer-Encoding: gzip\r\n"},
	{"te and cl", "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"},
	{"two hosts", "Host: other\r\n"},
	{"trailer header", "Trailer: X-T\r\n"},
	{"expect other", "Expect: 200-ok\r\n"},
	{"too large", "X-A45-Big: " + strings.Repeat("b", 70<<10) + "\r\n"},
	{"too many lines", strings.Repeat("X-Fill: f\r\n", 101)},
}

// TestAttack45FailedReadEndsConnection: a request whose reading fails after it repeated
// the last request's lines (so the remembered strings were used and updated), followed at
// once by a pipelined request that would be valid: the failed request is refused, the
// connection closes, and the pipelined request is never read or handled — nothing of the
// failed reading, or of the request before it, goes on. A new connection then reads the
// pipelined request exactly as net/http does.
func TestAttack45FailedReadEndsConnection(t *testing.T) {
	as := newA45Server(t)
	first := "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-alice\r\nX-Forwarded-For: 203.0.113.5\r\nX-A45-One: alpha\r\nContent-Length: 2\r\n\r\n{}"
	after := "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-bob\r\nX-A45-One: beta\r\nContent-Length: 2\r\n\r\nxy"
	for _, bad := range a45Bad {
		failing := "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-alice\r\nX-Forwarded-For: 203.0.113.5\r\n" + bad.raw + "Content-Length: 2\r\n\r\n{}"
		c, err := net.Dial("tcp", as.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		local := c.LocalAddr().String()
		go io.WriteString(c, first+failing+after)
		out, _ := io.ReadAll(c)
		c.Close()
		list := a24Responses(out)
		if len(list) != 2 || !strings.HasPrefix(list[0], "200 ") || strings.HasPrefix(list[1], "200 ") || strings.HasPrefix(list[1], "UNPARSEABLE") {
			t.Errorf("%s: answers %q, want 200 then a refusal, then the connection closed", bad.name, list)
		}
		as.mu.Lock()
		snaps := as.snaps[local]
		delete(as.snaps, local)
		as.mu.Unlock()
		if len(snaps) != 1 {
			t.Errorf("%s: the handler saw %d requests, want 1 (the one before the failed one)", bad.name, len(snaps))
			for _, s := range snaps {
				t.Logf("  saw %s %s Authorization=%q", s.r.Method, s.r.RequestURI, s.r.Header["Authorization"])
			}
		}
	}
	// HTTP/1.0 without keep-alive: a request pipelined after it is never read.
	c, err := net.Dial("tcp", as.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	local := c.LocalAddr().String()
	go io.WriteString(c, "GET /v1/models HTTP/1.0\r\nHost: gw\r\nAuthorization: Bearer sk-alice\r\n\r\n"+after)
	out, _ := io.ReadAll(c)
	c.Close()
	if list := a24Responses(out); len(list) != 1 {
		t.Errorf("HTTP/1.0 then a pipelined request: answers %q, want one", list)
	}
	as.mu.Lock()
	if n := len(as.snaps[local]); n != 1 {
		t.Errorf("HTTP/1.0 then a pipelined request: the handler saw %d requests, want 1", n)
	}
	as.mu.Unlock()
	as.run(t, []string{after}, -1, rand.New(rand.NewPCG(1, 1)))
}

// TestAttack45DistinctCredentialsPipelined: requests pipelined on one connection whose
// Authorization, X-Forwarded-For and Host differ — at the same line, at shifted lines,
// by one byte, in case of the name, with padding, emptied, repeated, or missing — each
// reach the handler with exactly their own values (never the request before's).
func TestAttack45DistinctCredentialsPipelined(t *testing.T) {
	as := newA45Server(t)
	type req struct {
		lines []string
		auth  []string // Authorization values the handler must see (nil: none)
		xff   []string
		host  string
	}
	reqs := []req{
		{[]string{"Host: gw", "Authorization: Bearer sr_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "X-Forwarded-For: 203.0.113.5"},
			[]string{"Bearer sr_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}, []string{"203.0.113.5"}, "gw"},
		{[]string{"Host: gw", "Authorization: Bearer sr_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE", "X-Forwarded-For: 203.0.113.6"},
			[]string{"Bearer sr_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE"}, []string{"203.0.113.6"}, "gw"},
		// Shifted: the previous request's Authorization bytes now at line 2 as X-Forwarded-For's.
		{[]string{"X-Forwarded-For: 203.0.113.5", "Host: gw2", "authorization: Bearer sk-bob"},
			[]string{"Bearer sk-bob"}, []string{"203.0.113.5"}, "gw2"},
		// The last request's Authorization line, but as another header.
		{[]string{"X-Forwarded-For: 203.0.113.5", "Host: gw2", "X-Authorization: Bearer sk-bob"},
			nil, []string{"203.0.113.5"}, "gw2"},
		// Emptied, padded.
		{[]string{"X-Forwarded-For:   ", "Host: gw2", "Authorization:\t \t"},
			[]string{""}, []string{""}, "gw2"},
		{[]string{"X-Forwarded-For: 203.0.113.5 ", "Host:gw2", "Authorization: Bearer sk-bob\t"},
			[]string{"Bearer sk-bob"}, []string{"203.0.113.5"}, "gw2"},
		// Repeated names: both values, in order.
		{[]string{"X-Forwarded-For: 203.0.113.5", "X-Forwarded-For: 198.51.100.1", "Host: gw2", "Authorization: Bearer sk-bob", "AUTHORIZATION: Bearer sk-alice"},
			[]string{"Bearer sk-bob", "Bearer sk-alice"}, []string{"203.0.113.5", "198.51.100.1"}, "gw2"},
		{[]string{"X-Forwarded-For: 198.51.100.1", "Host: gw2", "Authorization: Bearer sk-bob"},
			[]string{"Bearer sk-bob"}, []string{"198.51.100.1"}, "gw2"},
		// None of them.
		{[]string{"Host: gw3"}, nil, nil, "gw3"},
	}
	var raw []string
	for i, r := range reqs {
		raw = append(raw, fmt.Sprintf("POST /v1/chat/completions?i=%d HTTP/1.1\r\n%s\r\nContent-Length: 0\r\n\r\n", i%2, strings.Join(r.lines, "\r\n")))
	}
	for round := range 3 {
		c, err := net.Dial("tcp", as.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		local := c.LocalAddr().String()
		io.WriteString(c, strings.Join(raw, ""))
		br := bufio.NewReader(c)
		for range raw {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
		}
		c.Close()
		as.mu.Lock()
		snaps := as.snaps[local]
		as.mu.Unlock()
		if len(snaps) != len(reqs) {
			t.Fatalf("round %d: %d requests handled, want %d", round, len(snaps), len(reqs))
		}
		for i, r := range reqs {
			h := snaps[i].r
			if fmt.Sprint(h.Header["Authorization"]) != fmt.Sprint(r.auth) || fmt.Sprint(h.Header["X-Forwarded-For"]) != fmt.Sprint(r.xff) || h.Host != r.host {
				t.Errorf("round %d, request %d: Authorization %q X-Forwarded-For %q Host %q; want %q %q %q", round, i,
					h.Header["Authorization"], h.Header["X-Forwarded-For"], h.Host, r.auth, r.xff, r.host)
			}
			if want := fmt.Sprintf("/v1/chat/completions?i=%d", i%2); h.RequestURI != want || h.URL.RawQuery != want[len(want)-3:] {
				t.Errorf("round %d, request %d: target %q (query %q), want %q", round, i, h.RequestURI, h.URL.RawQuery, want)
			}
		}
	}
}

// a45Retained is the bytes of strings a connection keeps from its past requests: its last
// target and its Recent's names, keys and values (a key that is its name counted once).
func a45Retained(c *conn) int {
	n := len(c.recent.target)
	for i := range RecentLines {
		n += len(c.recent.names[i]) + len(c.recent.vals[i])
		if c.recent.keys[i] != c.recent.names[i] {
			n += len(c.recent.keys[i])
		}
	}
	return n
}

// TestAttack45IdleConnectionRetainsLittle: DESIGN says a connection's remembered strings
// are kept only for lines of at most 256 bytes, so that an idle connection holds at most
// ~19 KiB of them (24 lines). What a connection keeps between requests — its last target
// included — must stay within 24 lines × (name, key, value) × 256 B + 256 B (19 KiB),
// whatever the last request sent: here a 60 KiB target and 24 names and values of 256 B.
// Then over real sockets: idle connections that last sent a 60 KiB target must not each
// hold more live heap than idle connections that sent a short one by more than that bound.
func TestAttack45IdleConnectionRetainsLittle(t *testing.T) {
	bound := RecentLines*3*RecentMax + RecentMax
	long := "/" + strings.Repeat("t", 60<<10)
	var lines strings.Builder
	for i := range RecentLines {
		fmt.Fprintf(&lines, "x-%0253d: %s\r\n", i, strings.Repeat(string(rune('a'+i%26)), RecentMax))
	}
	for _, tc := range []struct{ name, raw string }{
		{"long target", "GET " + long + " HTTP/1.1\r\nHost: gw\r\n\r\n"},
		{"24 lines of 256 B", "GET / HTTP/1.1\r\nHost: gw\r\n" + lines.String() + "\r\n"},
	} {
		c := &conn{s: &Server{}, rw: deadlineless{}, br: bufio.NewReaderSize(strings.NewReader(tc.raw), 4<<10), bw: bufio.NewWriter(io.Discard), remote: "192.0.2.1:1"}
		if _, err := c.readRequest(context.Background()); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if n := a45Retained(c); n > bound {
			t.Errorf("%s: the connection keeps %d bytes of the request's strings after it (target %d B), bound %d", tc.name, n, len(c.recent.target), bound)
		}
	}

	// Over sockets: the live heap of idle connections.
	as := newA45Server(t)
	const conns = 24
	idle := func(target string) (heap uint64, close func()) {
		var cs []net.Conn
		for range conns {
			c, err := net.Dial("tcp", as.addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "GET "+target+" HTTP/1.1\r\nHost: gw\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			cs = append(cs, c)
		}
		a24Poll(t, 5*time.Second, "the connections to be idle", func() bool {
			as.s.mu.Lock()
			defer as.s.mu.Unlock()
			for c := range as.s.conns {
				if c.state.Load() != stateIdle || c.busySince.Load() != 0 {
					return false
				}
			}
			return true
		})
		as.mu.Lock()
		as.snaps = map[string][]a45Snap{} // the handler's copies are the test's, not the server's
		as.mu.Unlock()
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc, func() {
			for _, c := range cs {
				c.Close()
			}
			a24Poll(t, 5*time.Second, "the connections to close", func() bool {
				as.s.mu.Lock()
				defer as.s.mu.Unlock()
				return len(as.s.conns) == 0
			})
		}
	}
	short, closeShort := idle("/v1/models")
	closeShort()
	longHeap, closeLong := idle(long)
	defer closeLong()
	per := (int64(longHeap) - int64(short)) / conns
	t.Logf("live heap per idle connection after a 60 KiB target, beyond one after a short target: %d B", per)
	if per > int64(bound) {
		t.Errorf("an idle connection that last sent a 60 KiB target holds %d B more live heap than one that sent a short target (bound %d B)", per, bound)
	}
}

// TestAttack45RecentModel: Recent's Key and Value against what they stand for —
// canon(string(name)) and string(b) — over a long random run of positions (some past
// RecentLines), names and values that repeat, differ by a byte, by case, by length, are
// empty, or are longer than RecentMax. A returned string must always equal the bytes
// given, never a remembered one that differs.
func TestAttack45RecentModel(t *testing.T) {
	rnd := rand.New(rand.NewPCG(45, 3))
	var r Recent
	none := func([]byte) string { return "" }
	common := func(b []byte) string {
		if string(b) == "application/json" {
			return "application/json"
		}
		return ""
	}
	pool := []string{"", "a", "A", "ab", "aB", "application/json", "application/jsoN", strings.Repeat("x", RecentMax),
		strings.Repeat("x", RecentMax-1) + "y", strings.Repeat("x", RecentMax+1), strings.Repeat("x", RecentMax+1)[1:] + "y", "héllo", "h\xc3"}
	names := []string{"x-a", "X-A", "x-b", "X-Stainless-Lang", "x-stainless-lang", strings.Repeat("n", RecentMax), strings.Repeat("n", RecentMax+1), "A_B", "a-", "-a"}
	buf := make([]byte, 0, 1024)
	for step := range 300000 {
		i := rnd.IntN(RecentLines + 3)
		v := pool[rnd.IntN(len(pool))]
		buf = append(buf[:0], v...) // the caller's buffer, reused as a reader's is
		if got := r.Value(i, buf, [](func([]byte) string){none, common}[step%2]); got != v {
			t.Fatalf("step %d: Value(%d, %q) = %q", step, i, v, got)
		}
		for j := range buf {
			buf[j] = '#' // the buffer is overwritten by the next read
		}
		n := names[rnd.IntN(len(names))]
		buf = append(buf[:0], n...)
		if got := r.Key(i, buf, none, textproto.CanonicalMIMEHeaderKey); got != textproto.CanonicalMIMEHeaderKey(n) {
			t.Fatalf("step %d: Key(%d, %q) = %q", step, i, n, got)
		}
		for j := range buf {
			buf[j] = '#'
		}
	}
}

// FuzzAttack45Recent: a request b read on a connection after a sequence a (any bytes: what
// a reads as requests, up to where it fails) is read as net/http reads b alone, whenever
// both it and this reader read b alone the same way.
func FuzzAttack45Recent(f *testing.F) {
	g := &a45Gen{r: rand.New(rand.NewPCG(45, 4))}
	for range 20 {
		s := a45Sequence(f, g, 3)
		f.Add([]byte(s[0]+s[1]), []byte(s[2]))
	}
	f.Fuzz(func(t *testing.T, a, b []byte) {
		if ok, _ := a45Valid(string(b)); !ok {
			return
		}
		ga, err := readAll(a)
		if err != nil || len(ga) == 0 || ga[len(ga)-1].r.Close {
			return
		}
		got, err := readAll(append(append([]byte{}, a...), b...))
		if err != nil || len(got) != len(ga)+1 {
			t.Fatalf("b after a: %d requests (%v), want %d", len(got), err, len(ga)+1)
		}
		want, wb, _ := stdParse(b)
		if d := same(got[len(ga)].r, want, got[len(ga)].body, wb); d != "" {
			t.Errorf("b read after a differently from net/http's reading of b alone: %s", d)
		}
	})
}
