package main

// Outside round 60: the attacker IS the Redis server. gateway.redis_url points at a process
// the attacker runs (a compromised Redis host, a malicious managed-Redis operator, a
// man-in-the-middle on plaintext redis://). It holds none of Strongroom's keys, files or
// audit HMAC key; it answers every command as it likes. Here that server is o60Redis, a
// RESP server in this test: it forwards what the attack leaves alone to the Redis of
// scripts/test (so limits and the detection bus work as they would), answers HELLO with an
// error (RESP2, as an older server would) and AUTH itself, keeps SUBSCRIBE connections to
// itself (to push what it likes on them), and lets each test answer chosen commands. The
// gateway is the real `strongroom serve` (outside57's helpers), with a restricted and a
// public model, local_fallback_public, and every detector enforced.
//
// What DESIGN promises here ("Shared limits", `gateway.redis_url`, "Replicas"):
// "`gateway.local_fallback_public`: while Redis is down, public models use in-process
// limits (restricted ones are refused). "Down" includes a Redis that hangs"; "the claim
// … cannot be taken ahead of the replicas to keep an alert unrecorded"; a revocation
// announcement "only empties the gateways' caches, the store decides". And the round's
// rule: the gateway must not crash, hang requests without bound or grow without bound,
// whatever Redis answers.
//
// Attacks and findings (FAIL while it lasts / HELD):
//   - TestOutside60ReplyHeaderCrashes: one reply header announcing 2^40 (1 TiB) — the
//     admission script's answer ($1099511627776 or *1099511627776), a message on the
//     key-revocation subscription, the detection bus's read script's answer. go-redis
//     allocates what a header announces before it reads a byte of it: serve exits 2
//     ("fatal error: runtime: out of memory", not recoverable) — on the request path (the
//     request gets EOF), and with no request at all from its background readers. FAIL.
//   - TestOutside60EndlessReplyGrowsServe: a message on the revocation subscription that
//     never ends (no CRLF): a subscription's reads have no deadline and go-redis reads a
//     line whole, so serve's RSS grows ~4× what is sent (534–800 MiB sent in ~10 s, until
//     the client dropped the connection: RSS 66 → 2,200 and 73 → 3,263 MiB); the attacker
//     starts again on every resubscription. FAIL.
//   - TestOutside60ErrorReplyIntoAuditLog: the admission script answered with an error
//     reply of 4 MiB of the attacker's text. The answers are right (restricted 503, public
//     200 on the local fallback) and the audit log holds (its values are truncated to 1
//     KiB), but serve's log takes the text whole: 4 MiB lines, per request, of a size
//     Redis chooses. FAIL.
//   - TestOutside60AdmitReplyShape: admission answers of the wrong shape. An empty array or
//     a scope index past the request's scopes makes limits.Redis.Admit panic ("index out
//     of range"); h1 recovers it and drops the connection: the client gets EOF, no status,
//     for the restricted model (DESIGN: refused, 503) and for the public one (DESIGN: the
//     local fallback). FAIL. A string, and an answer trickled a byte every 200 ms: 503 /
//     200 within the limiter's 2 s. HELD.
//   - TestOutside60ClaimsAnsweredTaken: every alert claim (`SET … NX` on …detect:claim:)
//     answered nil, "taken". Control first (claims reach Redis): alice's logit sweep is
//     sanctioned and recorded. Then mallory's is sanctioned in this process's memory only:
//     no ALERT line, no strongroom_detect_alerts_total, no incident, no audit event, no
//     stored sanction (other replicas and a restart never know). FAIL.
//   - TestOutside60ForgedRevocationMessage: revocation messages pushed on the subscription
//     for an innocent key (its id, its whole token, 1,000 more): the key still works.
//     HELD.
//   - Every test: the Redis password, API keys and the prompt are in no log line, /metrics
//     or answer (o60Env.checkSecrets). HELD.
//
// internal/detect/outside60_test.go: replay of old sealed records under lying entry ids.

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/testenv"
)

// o60Password is the Redis password in serve's gateway.redis_url (the fake server takes
// any): it must appear in no output.
const o60Password = "O60redisPassw0rdMarker"

// o60Hook answers a command instead of the real Redis: it returns true if it answered (or
// means to: it may write later, or never).
type o60Hook func(c *o60Conn, args []string) bool

// o60Redis is the attacker's Redis server.
type o60Redis struct {
	ln       net.Listener
	upstream string // host:port of the real Redis
	hook     atomic.Pointer[o60Hook]
	mu       sync.Mutex
	conns    map[*o60Conn]struct{}
	closed   bool
}

// o60Conn is one client connection to the attacker's server.
type o60Conn struct {
	nc   net.Conn
	wmu  sync.Mutex
	subs []string // channels subscribed (o60Redis.mu)
}

func (c *o60Conn) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.nc.Write(b)
	return err
}

func o60StartRedis(t *testing.T) *o60Redis {
	t.Helper()
	u, err := url.Parse(testenv.Get(t, "STRONGROOM_TEST_REDIS"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &o60Redis{ln: ln, upstream: u.Host, conns: map[*o60Conn]struct{}{}}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			c := &o60Conn{nc: nc}
			r.mu.Lock()
			if r.closed {
				r.mu.Unlock()
				nc.Close()
				return
			}
			r.conns[c] = struct{}{}
			r.mu.Unlock()
			go r.serve(c)
		}
	}()
	t.Cleanup(r.close)
	return r
}

func (r *o60Redis) close() {
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.nc.Close()
	}
	r.mu.Unlock()
	r.ln.Close()
}

// url is serve's gateway.redis_url: this server, with a password.
func (r *o60Redis) url() string { return "redis://:" + o60Password + "@" + r.ln.Addr().String() + "/0" }

func (r *o60Redis) setHook(h o60Hook) { r.hook.Store(&h) }

// subscribed returns the connections subscribed to a channel ending in suffix.
func (r *o60Redis) subscribed(suffix string) []*o60Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*o60Conn
	for c := range r.conns {
		for _, ch := range c.subs {
			if strings.HasSuffix(ch, suffix) {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

// waitSubscribed waits (at most 30 s) for a subscription to a channel ending in suffix.
func (r *o60Redis) waitSubscribed(t *testing.T, suffix string) []*o60Conn {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if cs := r.subscribed(suffix); len(cs) > 0 {
			return cs
		}
		if time.Now().After(deadline) {
			t.Fatalf("premise: no subscription to …%s within 30 s", suffix)
		}
	}
}

// serve answers one client connection's commands, in order.
func (r *o60Redis) serve(c *o60Conn) {
	defer func() {
		c.nc.Close()
		r.mu.Lock()
		delete(r.conns, c)
		r.mu.Unlock()
	}()
	br := bufio.NewReader(c.nc)
	var up net.Conn
	var upr *bufio.Reader
	defer func() {
		if up != nil {
			up.Close()
		}
	}()
	for {
		raw, err := o60ReadValue(br)
		if err != nil {
			return
		}
		args, err := o60Args(raw)
		if err != nil || len(args) == 0 {
			return
		}
		if h := r.hook.Load(); h != nil && (*h)(c, args) {
			continue
		}
		switch name := strings.ToLower(args[0]); name {
		case "hello":
			c.write([]byte("-ERR unknown command 'HELLO'\r\n"))
			continue
		case "auth":
			c.write([]byte("+OK\r\n"))
			continue
		case "subscribe", "unsubscribe":
			var b bytes.Buffer
			r.mu.Lock()
			for i, ch := range args[1:] {
				if name == "subscribe" {
					c.subs = append(c.subs, ch)
				}
				fmt.Fprintf(&b, "*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n:%d\r\n", len(name), name, len(ch), ch, i+1)
			}
			r.mu.Unlock()
			c.write(b.Bytes())
			continue
		case "ping":
			r.mu.Lock()
			sub := len(c.subs) > 0
			r.mu.Unlock()
			if sub {
				msg := ""
				if len(args) > 1 {
					msg = args[1]
				}
				c.write(fmt.Appendf(nil, "*2\r\n$4\r\npong\r\n$%d\r\n%s\r\n", len(msg), msg))
				continue
			}
		}
		if up == nil {
			if up, err = net.Dial("tcp", r.upstream); err != nil {
				return
			}
			upr = bufio.NewReader(up)
		}
		if _, err := up.Write(raw); err != nil {
			return
		}
		rep, err := o60ReadValue(upr)
		if err != nil {
			return
		}
		if c.write(rep) != nil {
			return
		}
	}
}

// o60ReadValue reads one RESP value whole and returns its bytes.
func o60ReadValue(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 {
		return nil, errors.New("short line")
	}
	n, _ := strconv.Atoi(string(line[1 : len(line)-2]))
	switch line[0] {
	case '$', '=', '!':
		if n < 0 {
			return line, nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, err
		}
		return append(line, b...), nil
	case '*', '>', '~', '%', '|':
		if line[0] == '%' || line[0] == '|' {
			n *= 2
		}
		for range max(n, 0) {
			v, err := o60ReadValue(br)
			if err != nil {
				return nil, err
			}
			line = append(line, v...)
		}
	}
	return line, nil
}

// o60Args is a client command's arguments (an array of bulk strings).
func o60Args(raw []byte) ([]string, error) {
	return testenv.ReadCommand(bufio.NewReader(bytes.NewReader(raw)))
}

// o60Script reports whether args run the Lua script in file (EVALSHA of its SHA-1, or EVAL).
func o60Script(t *testing.T, file string) func(args []string) bool {
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum(src)
	sha := hex.EncodeToString(sum[:])
	return func(args []string) bool {
		if len(args) < 2 {
			return false
		}
		switch strings.ToLower(args[0]) {
		case "evalsha":
			return strings.EqualFold(args[1], sha)
		case "eval":
			return args[1] == string(src)
		}
		return false
	}
}

var (
	o60AdmitLua = filepath.Join("..", "..", "internal", "limits", "admit.lua")
	o60ReadLua  = filepath.Join("..", "..", "internal", "detect", "read.lua")
)

// o60Env is one `serve` behind the attacker's Redis.
type o60Env struct {
	t      *testing.T
	dir    string
	redis  *o60Redis
	s      *o57Serving
	keys   map[string]string // principal → API key
	prefix string
	seen   strings.Builder // answers and /metrics read, for checkSecrets
	seenMu sync.Mutex
}

const (
	o60Prompt     = "o60 prompt marker zebra quartz"
	o60Restricted = `{"model":"o60-restricted","max_tokens":16,"messages":[{"role":"user","content":"` + o60Prompt + `"}]}`
	o60Public     = `{"model":"o60-public","max_tokens":4,"messages":[{"role":"user","content":"` + o60Prompt + `"}]}`
)

// o60Setup starts serve (a restricted and a public model, local_fallback_public, every
// detector enforced, logit harvest at 20 ids) with gateway.redis_url on the attacker's
// server, hook answering what it chooses from the start.
func o60Setup(t *testing.T, hook o60Hook) *o60Env {
	t.Helper()
	r := o60StartRedis(t)
	if hook != nil {
		r.setHook(hook)
	}
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"c","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":5,"total_tokens":6}}`)
	}))
	t.Cleanup(engine.Close)
	e := &o60Env{t: t, dir: t.TempDir(), redis: r, keys: map[string]string{}, prefix: fmt.Sprintf("test:o60:%x:", time.Now().UnixNano())}
	o57In(t, e.dir, "init", "--internal-country", "US")
	o57In(t, e.dir, "detect", "promote", "all")
	o57In(t, e.dir, "model", "register", "o60-restricted:1", "--classification", "restricted", "--owner", "o60")
	o57In(t, e.dir, "model", "register", "o60-public:1", "--classification", "public", "--owner", "o60")
	o57In(t, e.dir, "model", "set", "o60-public:1", "--logit-bias", "allow", "--max-top-logprobs", "5")
	for _, p := range []string{"alice-o60", "mallory-o60"} {
		o57In(t, e.dir, "principal", "add", p, "--tenant", "acme-o60", "--roles", "researcher", "--country", "US")
		e.keys[p] = strings.TrimSpace(o57In(t, e.dir, "key", "create", "--principal", p))
	}
	o59FleetConfig(t, e.dir, r.url(), e.prefix, "o60", engine.URL, 100000)
	e.s = o57Serve(t, []string{"STRONGROOM_DATA=" + e.dir}, "-v")
	t.Cleanup(func() {
		select {
		case <-e.s.done:
		default:
			e.s.stop(t)
		}
		e.checkSecrets()
	})
	return e
}

// alive reports whether serve still runs.
func (e *o60Env) alive() bool {
	select {
	case <-e.s.done:
		return false
	default:
		return true
	}
}

// post sends a chat completion; it returns the status, or -1 and the transport error.
func (e *o60Env) post(key, body string) (int, string) {
	req, _ := http.NewRequest(http.MethodPost, e.s.gw+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	c := &http.Client{Timeout: 60 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return -1, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	e.seenMu.Lock()
	e.seen.Write(b)
	e.seenMu.Unlock()
	return resp.StatusCode, string(b)
}

// metric is one sample of serve's /metrics ("absent" if none).
func (e *o60Env) metric(name string) string {
	m := o57Do(e.t, "GET", e.s.admin+"/metrics", "", "")
	e.seenMu.Lock()
	e.seen.WriteString(m)
	e.seenMu.Unlock()
	for _, l := range strings.Split(m, "\n") {
		if strings.HasPrefix(l, name+" ") || strings.HasPrefix(l, name+"{") {
			return l
		}
	}
	return "absent"
}

// crashed describes how serve ended (its exit and the last of its stderr).
func (e *o60Env) crashed() string {
	errb := e.s.errb.String()
	for _, l := range strings.Split(errb, "\n") {
		if strings.HasPrefix(l, "fatal error") || strings.HasPrefix(l, "panic:") || strings.Contains(l, "out of memory") {
			return fmt.Sprintf("exit %d, %q", e.s.code, l)
		}
	}
	return fmt.Sprintf("exit %d, stderr ends %q", e.s.code, errb[max(0, len(errb)-300):])
}

// checkSecrets: neither the Redis password nor an API key nor the prompt is in serve's
// stdout or stderr, or in what its answers and /metrics said.
func (e *o60Env) checkSecrets() {
	e.seenMu.Lock()
	seen := e.seen.String()
	e.seenMu.Unlock()
	outs := map[string]string{"stderr": e.s.errb.String(), "stdout": e.s.out.String(), "answers and /metrics": seen}
	secrets := map[string]string{"the Redis password": o60Password, "the prompt": o60Prompt}
	for p, k := range e.keys {
		secrets[p+"'s API key"] = k
		secrets[p+"'s API key's secret half"] = strings.TrimPrefix(k, authn.KeyID(k))
	}
	for where, text := range outs {
		for what, s := range secrets {
			if len(s) >= 8 && strings.Contains(text, s) {
				e.t.Errorf("%s is in serve's %s", what, where)
			}
		}
	}
}

// rss is a process's resident set (VmRSS) and its peak (VmHWM), in bytes.
func o60RSS(t *testing.T, pid int) (rss, hwm int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1, -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = n << 10
		case "VmHWM:":
			hwm = n << 10
		}
	}
	return rss, hwm
}

// waitEnd waits up to d for serve to end; it reports whether it did.
func (e *o60Env) waitEnd(d time.Duration) bool {
	select {
	case <-e.s.done:
		return true
	case <-time.After(d):
		return false
	}
}

// TestOutside60ReplyHeaderCrashes: one reply header announcing 1 TiB, to one command.
func TestOutside60ReplyHeaderCrashes(t *testing.T) {
	const tib = "1099511627776" // 2^40
	admit := o60Script(t, o60AdmitLua)
	read := o60Script(t, o60ReadLua)
	for _, tc := range []struct {
		name    string
		request bool // the attack needs a request (the admission); else serve's own readers meet it
		hook    func() o60Hook
	}{
		{"admission answered $2^40", true, func() o60Hook {
			return func(c *o60Conn, args []string) bool {
				if admit(args) {
					c.write([]byte("$" + tib + "\r\n"))
					return true
				}
				return false
			}
		}},
		{"admission answered *2^40", true, func() o60Hook {
			return func(c *o60Conn, args []string) bool {
				if admit(args) {
					c.write([]byte("*" + tib + "\r\n"))
					return true
				}
				return false
			}
		}},
		{"revocation subscription: a message of 2^40 bytes", false, func() o60Hook {
			return func(c *o60Conn, args []string) bool {
				if strings.EqualFold(args[0], "subscribe") && len(args) == 2 && strings.HasSuffix(args[1], "keys:revoked") {
					ch := args[1]
					c.write(fmt.Appendf(nil, "*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%s\r\n", len(ch), ch, len(ch), ch, tib))
					return true
				}
				return false
			}
		}},
		{"detection bus: read script answered *2^40", false, func() o60Hook {
			return func(c *o60Conn, args []string) bool {
				if read(args) {
					c.write([]byte("*" + tib + "\r\n"))
					return true
				}
				return false
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var armed atomic.Bool
			var fired atomic.Int64
			hook := tc.hook()
			e := o60Setup(t, func(c *o60Conn, args []string) bool {
				if !armed.Load() {
					return false
				}
				if hook(c, args) {
					fired.Add(1)
					return true
				}
				return false
			})
			if st, _ := e.post(e.keys["alice-o60"], o60Restricted); st != 200 {
				t.Fatalf("premise: the restricted model before the attack: %d", st)
			}
			armed.Store(true)
			if tc.request {
				st, body := e.post(e.keys["alice-o60"], o60Restricted)
				e.waitEnd(3 * time.Second) // a crash after the answer's last byte
				if !e.alive() {
					t.Fatalf("serve died (%s) after one request whose admission Redis answered with a header announcing 2^40; the request got %d %.200s. DESIGN: restricted models are refused while the limiter cannot be trusted — not the gateway ended",
						e.crashed(), st, body)
				}
				if st != 503 {
					t.Errorf("the restricted model with the admission answered by a 2^40 header: %d %.200s, want 503", st, body)
				}
				return
			}
			// No request: the subscription's reconnect or the bus's next read meet it.
			if strings.Contains(tc.name, "revocation") {
				// the subscription made before armed: drop it so that go-redis subscribes again
				for _, c := range e.redis.subscribed("keys:revoked") {
					c.nc.Close()
				}
			}
			// Until serve met the header twice (it survived the first and asked again), it
			// ended, or 10 s passed.
			for deadline := time.Now().Add(10 * time.Second); fired.Load() < 2 && e.alive() && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
			}
			if e.waitEnd(100*time.Millisecond) || !e.alive() {
				t.Fatalf("serve died (%s) with no request at all: Redis answered %s with a header announcing 2^40", e.crashed(), tc.name)
			}
			if fired.Load() == 0 {
				t.Fatalf("premise: the attack's reply was never sent")
			}
			if st, _ := e.post(e.keys["alice-o60"], o60Public); st != 200 {
				t.Errorf("the public model after the attack: %d", st)
			}
		})
	}
}

// TestOutside60EndlessReplyGrowsServe: a message on the revocation subscription that never
// ends (no CRLF), 1 GiB of it sent.
func TestOutside60EndlessReplyGrowsServe(t *testing.T) {
	e := o60Setup(t, nil)
	cs := e.redis.waitSubscribed(t, "keys:revoked")
	if st, _ := e.post(e.keys["alice-o60"], o60Public); st != 200 {
		t.Fatalf("premise: %d", st)
	}
	pid := e.s.cmd.Process.Pid
	rss0, hwm0 := o60RSS(t, pid)
	chunk := bytes.Repeat([]byte("A"), 1<<20)
	const total = 1 << 30
	sent := 0
	start := time.Now()
	c := cs[0]
	c.nc.SetWriteDeadline(time.Now().Add(25 * time.Second)) // a client that stops reading ends the attack
	c.write([]byte("+"))
	var werr error
	for sent < total && time.Since(start) < 20*time.Second {
		if werr = c.write(chunk); werr != nil {
			break
		}
		sent += len(chunk)
	}
	rss1, hwm1 := o60RSS(t, pid)
	t.Logf("sent %d MiB in %v without a line end (write: %v); serve's RSS %d → %d MiB (peak %d → %d MiB)", sent>>20, time.Since(start).Round(time.Millisecond), werr, rss0>>20, rss1>>20, hwm0>>20, hwm1>>20)
	if !e.alive() {
		t.Fatalf("serve died (%s) reading one endless reply on its revocation subscription", e.crashed())
	}
	if grown := hwm1 - hwm0; grown > 256<<20 {
		t.Errorf("one reply on the key-revocation subscription that never ends (%d MiB sent, no CRLF) grew serve's peak RSS by %d MiB (%d → %d MiB): it grows with what Redis sends (a subscription's reads have no deadline, and a line is read whole)",
			sent>>20, grown>>20, hwm0>>20, hwm1>>20)
	}
	c.nc.Close()
}

// TestOutside60ErrorReplyIntoAuditLog: the admission answered with an error reply of 4 MiB.
func TestOutside60ErrorReplyIntoAuditLog(t *testing.T) {
	admit := o60Script(t, o60AdmitLua)
	marker := "O60ATTACKERTEXT"
	huge := "-ERR " + strings.Repeat(marker, (4<<20)/len(marker)) + "\r\n"
	var armed atomic.Bool
	e := o60Setup(t, func(c *o60Conn, args []string) bool {
		if armed.Load() && admit(args) {
			c.write([]byte(huge))
			return true
		}
		return false
	})
	if st, _ := e.post(e.keys["alice-o60"], o60Restricted); st != 200 {
		t.Fatalf("premise: %d", st)
	}
	size := func() int64 {
		var n int64
		filepath.WalkDir(e.dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if fi, err := d.Info(); err == nil {
					n += fi.Size()
				}
			}
			return nil
		})
		return n
	}
	before, logBefore := size(), len(e.s.errb.String())
	armed.Store(true)
	var sts []int
	for range 3 {
		st, _ := e.post(e.keys["alice-o60"], o60Restricted)
		sts = append(sts, st)
		st, _ = e.post(e.keys["alice-o60"], o60Public)
		sts = append(sts, st)
	}
	armed.Store(false)
	// The records reach the log's files (poll: at most 10 s).
	var grown int64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		grown = size() - before
		if grown > 20<<20 || time.Now().After(deadline) {
			break
		}
	}
	longest := 0
	for _, l := range strings.Split(e.s.errb.String()[logBefore:], "\n") {
		longest = max(longest, len(l))
	}
	t.Logf("statuses (restricted, public ×3): %v; the data directory grew %d KiB; serve's longest log line since: %d KiB", sts, grown>>10, longest>>10)
	for i, st := range sts {
		if want := []int{503, 200}[i%2]; st != want {
			t.Errorf("request %d: %d, want %d (restricted refused, public on the local fallback)", i, st, want)
		}
	}
	if grown > 1<<20 { // held: audit.Event.Truncated keeps 1 KiB of a value
		t.Errorf("six requests whose admission Redis answered with a 4 MiB error grew the data directory (the audit log) by %d MiB: the error's text is written whole into each request's record", grown>>20)
	}
	if longest > 64<<10 {
		t.Errorf("six requests whose admission Redis answered with one 4 MiB error reply each: serve's log has lines of %d KiB — the Redis error's text, whole (\"ALERT shared limiter unavailable\" and the request's refusal): Redis sets the size of the gateway's log lines, per request, up to what it sends within the limiter's 2 s", longest>>10)
	}
}

// TestOutside60AdmitReplyShape: admission answers of the wrong shape, and one that trickles.
func TestOutside60AdmitReplyShape(t *testing.T) {
	admit := o60Script(t, o60AdmitLua)
	var answer atomic.Pointer[string]
	e := o60Setup(t, func(c *o60Conn, args []string) bool {
		a := answer.Load()
		if a == nil || !admit(args) {
			return false
		}
		if *a == "trickle" {
			go func() {
				for _, b := range []byte("*2\r\n:0\r\n$10\r\n2099-01-01\r\n") {
					if c.write([]byte{b}) != nil {
						return
					}
					time.Sleep(200 * time.Millisecond)
				}
			}()
			return true
		}
		c.write([]byte(*a))
		return true
	})
	if st, _ := e.post(e.keys["alice-o60"], o60Restricted); st != 200 {
		t.Fatalf("premise: %d", st)
	}
	for _, tc := range []struct{ name, reply string }{
		{"an empty array", "*0\r\n"},
		{"scope index 9 of 3", "*3\r\n:9\r\n+rpm\r\n:1000\r\n"},
		{"a string", "+OK\r\n"},
		{"a trickle, 1 byte every 200 ms", "trickle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.reply
			answer.Store(&a)
			defer answer.Store(nil)
			for _, m := range []struct{ model, body string }{{"restricted", o60Restricted}, {"public", o60Public}} {
				start := time.Now()
				st, body := e.post(e.keys["alice-o60"], m.body)
				took := time.Since(start)
				want := 503
				if m.model == "public" {
					want = 200 // DESIGN: local_fallback_public
				}
				if st != want {
					t.Errorf("the %s model with its admission answered %q: %d %.200s (after %v), want %d", m.model, tc.reply, st, body, took.Round(time.Millisecond), want)
				}
				if took > 30*time.Second {
					t.Errorf("the %s model's answer took %v", m.model, took)
				}
			}
			if !e.alive() {
				t.Fatalf("serve died: %s", e.crashed())
			}
		})
	}
	var panics []string
	for _, l := range strings.Split(e.s.errb.String(), "\n") {
		if strings.Contains(l, "panic") {
			panics = append(panics, l[:min(len(l), 300)])
		}
	}
	if len(panics) > 0 {
		t.Logf("serve's log: %q", panics)
	}
}

// TestOutside60ClaimsAnsweredTaken: every alert claim (SET … NX) answered nil — taken. A
// control sweep first, with the claims going to Redis, shows the alert recorded.
func TestOutside60ClaimsAnsweredTaken(t *testing.T) {
	var claims atomic.Int64
	var armed atomic.Bool
	e := o60Setup(t, func(c *o60Conn, args []string) bool {
		if armed.Load() && strings.EqualFold(args[0], "set") && len(args) > 1 && strings.Contains(args[1], "detect:claim:") {
			claims.Add(1)
			c.write([]byte("$-1\r\n"))
			return true
		}
		return false
	})
	sweepReq := func(i int) string {
		bias := map[string]int{}
		for k := range 5 {
			bias[strconv.Itoa(i*5+k)] = 100
		}
		b, _ := json.Marshal(map[string]any{"model": "o60-public", "max_tokens": 1, "logprobs": true, "top_logprobs": 5, "logit_bias": bias,
			"messages": []any{map[string]string{"role": "user", "content": o60Prompt}}})
		return string(b)
	}
	// sweep runs a 12-request logit sweep (threshold 20 ids, 5 a request) as principal p and
	// returns whether it was sanctioned, and what was recorded of it (the record polled for
	// up to wait).
	sweep := func(p string, wait time.Duration) (sanctioned, alertLine bool, metric, incidents string) {
		logged := len(e.s.errb.String())
		key := e.keys[p]
		ok := 0
		for i := range 12 {
			if st, _ := e.post(key, sweepReq(i)); st == 200 {
				ok++
			}
		}
		for deadline := time.Now().Add(10 * time.Second); ok == 12 && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if st, _ := e.post(key, sweepReq(12)); st != 200 {
				ok = -1
			}
		}
		for deadline := time.Now().Add(wait); ; time.Sleep(250 * time.Millisecond) {
			alertLine = strings.Contains(e.s.errb.String()[logged:], "ALERT extraction/abuse detector")
			metric = e.metric("strongroom_detect_alerts_total")
			incidents = o57In(t, e.dir, "--json", "incident", "ls", "--state", "all")
			if alertLine && strings.Contains(incidents, p) || time.Now().After(deadline) {
				break
			}
		}
		return ok != 12, alertLine, metric, incidents
	}
	sanctioned, alertLine, metric0, incidents := sweep("alice-o60", 10*time.Second)
	if !sanctioned || !alertLine || !strings.Contains(incidents, "alice-o60") {
		t.Fatalf("premise (claims reaching Redis): alice's sweep sanctioned %v, ALERT line %v, %s, incidents %.200s", sanctioned, alertLine, metric0, incidents)
	}
	armed.Store(true)
	// The replica looks for the winner's record for ClaimCheck (20 s) before it records the
	// alert itself.
	logged := len(e.s.errb.String())
	sanctioned, alertLine, metric, incidents := sweep("mallory-o60", 60*time.Second)
	t.Logf("claims answered taken: %d; mallory sanctioned: %v; ALERT line: %v; %s (after alice's: %s); incidents: %.300s", claims.Load(), sanctioned, alertLine, metric, metric0, strings.TrimSpace(incidents))
	if claims.Load() == 0 || !sanctioned {
		t.Fatalf("premise: claims asked %d, mallory sanctioned %v", claims.Load(), sanctioned)
	}
	if !strings.Contains(e.s.errb.String()[logged:], "an alert another replica claimed is not on the record") {
		t.Errorf("no ALERT line says that a claimed alert went unrecorded")
	}
	if !alertLine || metric == metric0 || !strings.Contains(incidents, "mallory-o60") {
		t.Errorf("mallory's logit sweep was sanctioned here (in this process's memory), but with Redis answering every alert claim as taken (%d claims) no replica records it: no ALERT line, strongroom_detect_alerts_total unchanged (%s), no incident, no audit event, no stored sanction (other replicas and a restart forget it) — DESIGN (\"Replicas\"): \"a claim cannot be taken ahead of the replicas to keep an alert unrecorded\"",
			claims.Load(), metric)
	}
}

// TestOutside60ForgedRevocationMessage: revocation messages pushed for an innocent key.
func TestOutside60ForgedRevocationMessage(t *testing.T) {
	e := o60Setup(t, nil)
	cs := e.redis.waitSubscribed(t, "keys:revoked")
	key := e.keys["alice-o60"]
	ch := cs[0].subs[0]
	msg := func(payload string) []byte {
		return fmt.Appendf(nil, "*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(ch), ch, len(payload), payload)
	}
	var b bytes.Buffer
	b.Write(msg(authn.KeyID(key)))
	b.Write(msg(key))
	for i := range 1000 {
		b.Write(msg(fmt.Sprintf("sk-o60-%d", i)))
	}
	if err := cs[0].write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if st, body := e.post(key, o60Public); st != 200 {
			t.Errorf("a key whose revocation only Redis announced: %d %.200s (DESIGN: an announcement only empties a cache; the store decides)", st, body)
		}
	}
	if !e.alive() {
		t.Fatalf("serve died: %s", e.crashed())
	}
}
