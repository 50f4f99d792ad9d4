package app

// Outside attacks (session 13) on a gateway whose transparency log is on a shared MariaDB
// ("audit log on a shared engine"), in process: the App opened on a fresh database of the
// test MariaDB (STRONGROOM_TEST_MARIADB, from scripts/test), reached directly or through a
// TCP path this file controls (stopped, resetting, black-holed). Promises attacked:
//
//  1. no client receives a complete answer (full JSON body, or a stream's [DONE]) whose
//     request record is not in the log;
//  2. a replica that cannot use the log refuses what needs a record, within a bounded time,
//     and says so in /healthz (503) and /metrics (strongroom_audit_log_healthy 0);
//  3. when the database is back, the replica recovers without a restart, nothing it
//     acknowledged is lost, and the log verifies;
//  4. the database password never appears in logs, /healthz, error bodies, /metrics or
//     the audit trail.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/gateway"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
)

// a13Buf is a goroutine-safe log sink.
type a13Buf = testenv.LogBuffer

// a13Path is a TCP path to MariaDB that the test can stop (connections refused), make
// reset (every connection, old and new, closed with RST) or black-hole (connections
// accepted, no byte forwarded either way, nothing closed).
type a13Path struct {
	target string
	ln     net.Listener
	mu     sync.Mutex
	mode   string // "up", "stop", "reset", "hole"
	cond   *sync.Cond
	conns  map[net.Conn]bool
}

func newA13Path(t *testing.T, target string) *a13Path {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &a13Path{target: target, ln: ln, mode: "up", conns: map[net.Conn]bool{}}
	p.cond = sync.NewCond(&p.mu)
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.set("reset") })
	return p
}

func rst(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func (p *a13Path) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode := p.mode
		p.mu.Unlock()
		switch mode {
		case "stop", "reset":
			rst(c)
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			rst(c)
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		go p.pipe(up, c)
		go p.pipe(c, up)
	}
}

// pipe copies src to dst, holding every chunk while the path is black-holed.
func (p *a13Path) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.mode == "hole" {
				p.cond.Wait()
			}
			p.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *a13Path) set(mode string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = mode
	if mode == "stop" || mode == "reset" {
		for c := range p.conns {
			rst(c)
		}
		clear(p.conns)
	}
	p.cond.Broadcast()
}

// a13DB creates a fresh database on the test MariaDB, dropped at the end; it returns the
// admin pool on it, the password and the direct address.
func a13DB(t *testing.T) (admin *sql.DB, user, password, addr, name string) {
	t.Helper()
	c, err := audit.ParseLogDSN(testenv.Get(t, "STRONGROOM_TEST_MARIADB"))
	if err != nil {
		t.Fatal(err)
	}
	delete(c.Params, "wait_timeout") // another party's sessions: the server's defaults, not the log's idle limit
	root, err := sql.Open("mysql", c.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	var r [6]byte
	rand.Read(r[:])
	name = "sr13_" + hex.EncodeToString(r[:])
	if _, err := root.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		root.Exec("DROP DATABASE " + name)
		root.Close()
	})
	c.DBName = name
	admin, err = sql.Open("mysql", c.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	return admin, c.User, c.Passwd, c.Addr, name
}

// a13Engine answers chat completions with an answer unique to each request, as JSON or
// as an event stream ending in [DONE].
func a13Engine(t *testing.T) *httptest.Server {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id := n.Add(1)
		text := fmt.Sprintf("answer-%d-%d", id, time.Now().UnixNano())
		if bytes.Contains(body, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 3 {
				fmt.Fprintf(w, "data: {\"id\":\"c%d\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%s-%d\"}}]}\n\n", id, text, i)
				w.(http.Flusher).Flush()
			}
			fmt.Fprint(w, "data: [DONE]\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"c%d","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":%q},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`, id, text)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// a13Env is one gateway replica on the shared log.
type a13Env struct {
	a      *App
	gw     *gateway.Gateway
	url    string
	key    string
	logs   *a13Buf
	secret string
	seen   *a13Buf // every body the test received from the replica (answers, /healthz, /metrics)
	client *http.Client
}

// a13Init makes a data directory with Init and reads its configuration back.
func a13Init(t *testing.T, ctx context.Context) (dir, path string, c config.Config) {
	t.Helper()
	dir = t.TempDir() + "/data"
	if _, err := Init(ctx, dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	path = dir + "/" + config.FileName
	c, err := config.ReadRaw(path)
	if err != nil {
		t.Fatal(err)
	}
	return dir, path, c
}

// a13Open opens a replica whose log is on the database at dsn (mysql://...), with a
// public model "m" on a13Engine.
func a13Open(t *testing.T, dsn, secret string) *a13Env {
	t.Helper()
	return a13OpenWith(t, dsn, secret, nil)
}

// a13OpenWith is a13Open with more settings: set changes the configuration before Open.
func a13OpenWith(t *testing.T, dsn, secret string, set func(*config.Config)) *a13Env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir, path, c := a13Init(t, ctx)
	c.Audit.LogDB = dsn
	if set != nil {
		set(&c)
	}
	if err := config.Write(path, c); err != nil {
		t.Fatal(err)
	}
	logs := &a13Buf{}
	a, err := Open(ctx, dir, "", slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	importModel(t, ctx, a, "m", "1", "public")
	if err := a.AddPrincipal(ctx, store.Principal{ID: "alice", Tenant: "t", Country: "US"}); err != nil {
		t.Fatal(err)
	}
	key, _, err := a.APIKeys().Create(ctx, "alice", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	engine := a13Engine(t)
	gw, err := a.OpenGateway(ctx, GatewayOptions{Routes: []gateway.Route{{Model: "m", Upstreams: []string{engine.URL + "/v1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	return &a13Env{a: a, gw: gw, url: srv.URL, key: key, logs: logs, secret: secret, seen: &a13Buf{},
		client: &http.Client{Timeout: 90 * time.Second}}
}

// a13Answer is one request's outcome as the client saw it.
type a13Answer struct {
	status   int
	stream   bool
	complete bool   // a full JSON body (200), or a stream that reached [DONE]
	digest   string // the output HMAC a record of this answer carries
	took     time.Duration
	err      error
}

func (e *a13Env) ask(stream bool, timeout time.Duration) a13Answer {
	body := fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":"hi %d"}],"stream":%v}`, time.Now().UnixNano(), stream)
	req, _ := http.NewRequest(http.MethodPost, e.url+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.key)
	req.Header.Set("Content-Type", "application/json")
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	t0 := time.Now()
	resp, err := e.client.Do(req.WithContext(ctx))
	if err != nil {
		return a13Answer{err: err, took: time.Since(t0)}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	out := a13Answer{status: resp.StatusCode, stream: stream, took: time.Since(t0), err: err}
	e.seen.Write(raw)
	if resp.StatusCode != 200 || err != nil {
		return out
	}
	h := e.a.Redactor.NewHash()
	defer e.a.Redactor.Release(h)
	if !stream {
		h.Write(raw)
		out.complete = true
	} else {
		sc := bufio.NewScanner(bytes.NewReader(raw))
		for sc.Scan() {
			if p, ok := bytes.CutPrefix(sc.Bytes(), []byte("data: ")); ok {
				h.Write(append(bytes.Clone(p), '\n'))
				if bytes.HasPrefix(p, []byte("[DONE]")) {
					out.complete = true
				}
			}
		}
	}
	out.digest = audit.HashDigest(h)
	return out
}

// healthz is serve's /healthz (cmd/strongroom/serve.go adminMux).
func (e *a13Env) healthz() (int, string) {
	rec := httptest.NewRecorder()
	if err := e.a.AuditLog.Healthy(); err != nil {
		http.Error(rec, "audit log cannot record: "+err.Error(), http.StatusServiceUnavailable)
	} else if err := e.a.StoreHealthy(); err != nil {
		http.Error(rec, err.Error(), http.StatusServiceUnavailable)
	} else {
		fmt.Fprintln(rec, "ok")
	}
	e.seen.Write(rec.Body.Bytes())
	return rec.Code, rec.Body.String()
}

// metrics is serve's /metrics text.
func (e *a13Env) metrics() string {
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(e.a.Metrics, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	e.seen.Write(rec.Body.Bytes())
	return rec.Body.String()
}

func (e *a13Env) gauge(name string) string {
	for _, l := range strings.Split(e.metrics(), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return v
		}
	}
	return "?"
}

// until polls cond every 20 ms until it holds or the bound passes (then fails, saying what).
func a13Until(t *testing.T, bound time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	t0 := time.Now()
	for !cond() {
		if time.Since(t0) > bound {
			t.Fatalf("%s: not within %v", what, bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(t0)
}

// a13Answers collects the answers of concurrent clients.
type a13Answers struct {
	mu   sync.Mutex
	list []a13Answer
}

func (s *a13Answers) keep(a a13Answer) {
	s.mu.Lock()
	s.list = append(s.list, a)
	s.mu.Unlock()
}

// recorded waits (bounded) for a signed checkpoint covering every acknowledged answer's
// record, verifies the log (entry MACs and batches included), and reports any acknowledged
// answer without a record (promises 1 and 3).
func (e *a13Env) recorded(t *testing.T, acked []a13Answer) {
	t.Helper()
	ctx := context.Background()
	hk, err := os.ReadFile(e.a.Config.Audit.HMACKey)
	if err != nil {
		t.Fatal(err)
	}
	v, _, err := e.a.LogVerifier()
	if err != nil {
		t.Fatal(err)
	}
	o := audit.VerifyOptions{LogKey: v, Bundles: e.a.AuditLog.Bundles().Bundle, EntryKey: audit.EntryKey(hk)}
	want := map[string]bool{}
	streamed := 0 // streams whose first bytes went out: each needs its start record
	for _, a := range acked {
		if a.complete {
			want[a.digest] = true
		}
		if a.stream && a.status == 200 {
			streamed++
		}
	}
	starts := 0
	var missing []string
	var lastErr error
	deadline := time.Now().Add(20 * time.Second)
	for {
		missing, lastErr = nil, nil
		st, err := audit.Verify(ctx, e.a.AuditLog.Reader(), o)
		if err != nil {
			lastErr = err
		} else {
			have := map[string]bool{}
			starts = 0
			err = audit.ReadEntries(ctx, e.a.AuditLog.Reader().ReadEntryBundle, 0, st.Size, func(evs []store.AuditEvent) error {
				for _, x := range evs {
					if x.Kind != string(audit.KindBatch) {
						e.seen.Write(x.Raw)
						continue
					}
					ev, err := audit.ParseEvent(x.Raw)
					if err != nil {
						return err
					}
					recs, err := audit.BatchRecords(ctx, o, ev)
					if err != nil {
						return err
					}
					for _, r := range recs {
						e.seen.Write(r)
						var rec struct {
							Kind   string            `json:"kind"`
							Fields map[string]string `json:"fields"`
						}
						if json.Unmarshal(r, &rec) == nil && rec.Kind == string(audit.KindRequest) {
							have[rec.Fields["output_hmac"]] = true
						}
						if rec.Kind == string(audit.KindStreamStart) {
							starts++
						}
					}
				}
				return nil
			})
			if err != nil {
				lastErr = err
			}
			for d := range want {
				if !have[d] {
					missing = append(missing, d)
				}
			}
			if lastErr == nil && len(missing) == 0 && starts >= streamed {
				t.Logf("log verifies at size %d; all %d acknowledged answers recorded; %d stream starts for %d streams answered 200", st.Size, len(want), starts, streamed)
				return
			}
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if lastErr != nil {
		t.Errorf("PROMISE 3: the log does not verify / read: %v", lastErr)
	}
	if len(missing) > 0 {
		t.Errorf("PROMISE 1: %d of %d acknowledged answers have no record in the log", len(missing), len(want))
	}
	if starts < streamed {
		t.Errorf("PROMISE 1: %d streams were answered 200 (content sent) but the log holds %d stream start records", streamed, starts)
	}
}

// noSecret checks everything the replica said (logs, bodies, metrics, the log's entries
// and records read so far) for the database password (promise 4).
func (e *a13Env) noSecret(t *testing.T) {
	t.Helper()
	if e.secret == "" {
		t.Fatal("no password to look for")
	}
	for what, s := range map[string]string{"logs": e.logs.String(), "bodies, /healthz, /metrics, log entries": e.seen.String()} {
		if strings.Contains(s, e.secret) {
			t.Errorf("PROMISE 4: the database password appears in the %s", what)
		}
	}
}

// TestAttack13LockedBatchTable — attack: another session holds `LOCK TABLES StrongroomBatch
// WRITE` (the table every request record's bundle goes to) while clients are being served,
// and an unauthenticated client keeps knocking meanwhile (its refusals are summarized into
// the log as ordinary entries, which the lock does not block). Promises 2 (refused within
// the documented AppendStall, /healthz 503 and strongroom_audit_log_healthy 0 for as long
// as it lasts, goroutines bounded), 1 and 3 (what was answered is on the record once the
// lock goes; recovery without restart; the log verifies), 4 (no password anywhere).
func TestAttack13LockedBatchTable(t *testing.T) {
	admin, user, pw, addr, name := a13DB(t)
	e := a13Open(t, fmt.Sprintf("mysql://%s:%s@tcp(%s)/%s", user, pw, addr, name), pw)
	var answers a13Answers
	keep := answers.keep
	for _, s := range []bool{false, true} {
		a := e.ask(s, 10*time.Second)
		if a.status != 200 || !a.complete {
			t.Fatalf("baseline (stream %v): %+v", s, a)
		}
		keep(a)
	}
	ctx := context.Background()
	locker, err := admin.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	if _, err := locker.ExecContext(ctx, "LOCK TABLES `StrongroomBatch` WRITE"); err != nil {
		t.Fatal(err)
	}
	locked := time.Now()
	g0 := runtime.NumGoroutine()
	// Requests already in flight when the lock is taken: they wait on it (documented: not
	// bounded), and must not complete before their record is durable.
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() { keep(e.ask(i%2 == 1, 80*time.Second)) })
	}
	// Within AppendStall (10 s) + probe slack: /healthz 503 and the gauge 0.
	took := a13Until(t, 15*time.Second, "PROMISE 2: /healthz 503 while StrongroomBatch is locked", func() bool {
		c, _ := e.healthz()
		return c == 503
	})
	t.Logf("/healthz 503 %v after the lock (polled for %v)", time.Since(locked).Round(time.Millisecond), took.Round(time.Millisecond))
	// New requests: refused at once, not queued behind the lock.
	for i := range 20 {
		a := e.ask(i%2 == 1, 5*time.Second)
		keep(a)
		if a.err != nil || a.status != 503 || a.took > 2*time.Second {
			t.Errorf("PROMISE 2: a new request during the lock: status %d, err %v, took %v (want 503 at once)", a.status, a.err, a.took)
		}
	}
	// An unauthenticated client knocks; its refusals are summarized into the log (the
	// gateway does so every 10 s: FlushRefusals is that tick). That entry goes to tessera's
	// tables, which are not locked: it became durable (and the gauge went to 1 with it),
	// until the log refused every entry while its writes do not end — either way the gauge
	// must agree with /healthz.
	okBefore := e.counter(`strongroom_audit_records_total{result="ok"}`)
	failedBefore := e.counter(`strongroom_audit_records_total{result="failed"}`)
	req, _ := http.NewRequest(http.MethodPost, e.url+"/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[]}`))
	req.Header.Set("Authorization", "Bearer not-a-key")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	e.gw.FlushRefusals(ctx)
	a13Until(t, 10*time.Second, "the refusal summary durable or refused", func() bool {
		return e.counter(`strongroom_audit_records_total{result="ok"}`) > okBefore ||
			e.counter(`strongroom_audit_records_total{result="failed"}`) > failedBefore
	})
	code, hbody := e.healthz()
	g := e.gauge("strongroom_audit_log_healthy")
	t.Logf("after an unrelated entry (durable: %v), lock still held: /healthz %d (%q), strongroom_audit_log_healthy %s",
		e.counter(`strongroom_audit_records_total{result="ok"}`) > okBefore, code, strings.TrimSpace(hbody), g)
	if code != 503 {
		t.Errorf("PROMISE 2: /healthz %d while StrongroomBatch is still locked", code)
	}
	if code == 503 && g != "0" {
		t.Errorf("PROMISE 2: /healthz is 503 (%s) but strongroom_audit_log_healthy is %s while StrongroomBatch is still locked", strings.TrimSpace(hbody), g)
	}
	if a := e.ask(false, 5*time.Second); a.status != 503 {
		t.Errorf("PROMISE 2: a request after the unrelated entry, lock still held: status %d err %v took %v", a.status, a.err, a.took)
	} else {
		keep(a)
	}
	// Goroutines: 20 refused requests and the knocking add none that stay.
	if g := runtime.NumGoroutine(); g > g0+200 {
		t.Errorf("PROMISE 2: goroutines %d → %d during the lock", g0, g)
	}
	if _, err := locker.ExecContext(ctx, "UNLOCK TABLES"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	a13Until(t, 15*time.Second, "PROMISE 3: /healthz 200 after the lock goes", func() bool {
		c, _ := e.healthz()
		return c == 200
	})
	if g := e.gauge("strongroom_audit_log_healthy"); g != "1" {
		t.Errorf("PROMISE 3: healthy again but strongroom_audit_log_healthy %s", g)
	}
	for _, s := range []bool{false, true} {
		a := e.ask(s, 10*time.Second)
		if a.status != 200 || !a.complete {
			t.Errorf("PROMISE 3: after the lock (stream %v): %+v", s, a)
		}
		keep(a)
	}
	for _, a := range answers.list {
		if a.status == 200 && !a.complete {
			t.Logf("an answer 200 left incomplete (allowed): %+v", a)
		}
	}
	e.recorded(t, answers.list)
	e.noSecret(t)
}

// counter reads a metric line's value by its full name with labels.
func (e *a13Env) counter(name string) float64 {
	for _, l := range strings.Split(e.metrics(), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

// TestAttack13RowLockedTreeState — attack: another session holds tessera's tree-state row
// (`BEGIN; SELECT ... FROM TreeState FOR UPDATE`): connections, pings and the batch bundles'
// table all work, but no entry can be sequenced. The DSN sets readTimeout=3s (documented:
// "read/write 30 s unless the DSN says otherwise"), so each append ends in an error rather
// than waiting for the stall watch. Promise 2: once the replica has found it cannot record,
// /healthz stays 503 (and the gauge 0) for as long as the row is held — it must not report
// healthy while not one request can be recorded; promise 1: no complete answer without a
// record; promise 3: recovery once the row is released.
func TestAttack13RowLockedTreeState(t *testing.T) {
	admin, user, pw, addr, name := a13DB(t)
	e := a13Open(t, fmt.Sprintf("mysql://%s:%s@tcp(%s)/%s?readTimeout=3s", user, pw, addr, name), pw)
	var acked []a13Answer
	a := e.ask(false, 10*time.Second)
	if a.status != 200 {
		t.Fatalf("baseline: %+v", a)
	}
	acked = append(acked, a)
	ctx := context.Background()
	tx, err := admin.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var size uint64
	var root []byte
	if err := tx.QueryRowContext(ctx, "SELECT `size`, `root` FROM `TreeState` WHERE `id` = 0 FOR UPDATE").Scan(&size, &root); err != nil {
		t.Fatal(err)
	}
	// The holder stays busy in statements while it holds the row (nineteenth session): the
	// signer ends a session of the log's own user that holds the tree *asleep* past the
	// log's wait_timeout (audit.reapHolders, outside rounds 37–38), which this session —
	// the log's user, idle in its transaction — was; a busy holder it leaves alone, and the
	// stall this test is about stays.
	var holderID int64
	if err := tx.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&holderID); err != nil {
		t.Fatal(err)
	}
	stopBusy := make(chan struct{})
	busy := make(chan error, 1)
	go func() { // short statements, one after the other: never asleep for long
		for {
			select {
			case <-stopBusy:
				busy <- nil
				return
			default:
			}
			if _, err := tx.ExecContext(ctx, "DO SLEEP(1)"); err != nil {
				busy <- err
				return
			}
		}
	}()
	// A first request finds out: it waits ≤ readTimeout and is refused.
	first := e.ask(false, 60*time.Second)
	acked = append(acked, first)
	t.Logf("first request with the row held: status %d, took %v", first.status, first.took)
	if first.complete {
		t.Errorf("PROMISE 1: a complete answer while no entry can be sequenced")
	}
	a13Until(t, 15*time.Second, "PROMISE 2: /healthz 503 with TreeState held", func() bool {
		c, _ := e.healthz()
		return c == 503
	})
	// From now on, with the row still held: /healthz must stay 503 (it turned 200 within
	// ~0.5 s, at the failure probe's next write, before the tree-state lock was probed too).
	var healthy200 int
	var served, refused int
	var worst time.Duration
	var firstOK string
	t0 := time.Now()
	for time.Since(t0) < 4*time.Second {
		if c, b := e.healthz(); c == 200 {
			healthy200++
			if firstOK == "" {
				firstOK = fmt.Sprintf("%v after detection (body %q, gauge %s)", time.Since(t0).Round(time.Millisecond), strings.TrimSpace(b), e.gauge("strongroom_audit_log_healthy"))
			}
		}
		a := e.ask(false, 60*time.Second)
		acked = append(acked, a)
		worst = max(worst, a.took)
		if a.complete {
			served++
		} else {
			refused++
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("with the row held for 4 s more: /healthz 200 %d times (first %s); requests %d refused, %d complete; slowest %v", healthy200, firstOK, refused, served, worst)
	if healthy200 > 0 {
		t.Errorf("PROMISE 2: /healthz answered 200 %d times while TreeState stayed locked and no request could be recorded (first %s)", healthy200, firstOK)
	}
	if served > 0 {
		t.Errorf("PROMISE 1: %d complete answers while no entry could be sequenced", served)
	}
	if worst > 2*time.Second {
		t.Errorf("PROMISE 2: after detection, a new request still waited %v before its answer (want refused at once)", worst)
	}
	close(stopBusy)
	if err := <-busy; err != nil {
		t.Fatalf("the holder (session %d) failed while holding the row: %v", holderID, err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	a13Until(t, 15*time.Second, "PROMISE 3: served again after the row is released", func() bool {
		a := e.ask(false, 10*time.Second)
		acked = append(acked, a)
		return a.complete
	})
	e.recorded(t, acked)
	e.noSecret(t)
}

// TestAttack13PathFaults — attack: the path to the database stops (connections refused),
// resets every connection (RST, old and new), and black-holes (connections accepted, no
// byte forwarded, nothing closed), each while a client keeps asking, and is restored after
// each. Promise 2: refused (503, not a hang) within a few seconds, /healthz 503 and the
// gauge 0, goroutines bounded; promise 3: back without restart, every acknowledged answer
// recorded, the log verifies; promise 1; promise 4 (no password in anything said).
func TestAttack13PathFaults(t *testing.T) {
	_, user, pw, addr, name := a13DB(t)
	p := newA13Path(t, addr)
	e := a13Open(t, fmt.Sprintf("mysql://%s:%s@tcp(%s)/%s", user, pw, p.ln.Addr(), name), pw)
	var answers a13Answers
	keep := answers.keep
	if a := e.ask(false, 10*time.Second); a.status != 200 {
		t.Fatalf("baseline: %+v", a)
	} else {
		keep(a)
	}
	g0 := runtime.NumGoroutine()
	for _, mode := range []string{"stop", "reset", "hole"} {
		t.Run(mode, func(t *testing.T) {
			// A client asking all along (a stream every other request).
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				if mode == "hole" {
					return // a request in flight when the path goes silent waits for readTimeout (30 s)
				}
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					keep(e.ask(i%2 == 1, 80*time.Second))
				}
			})
			p.set(mode)
			took := a13Until(t, 10*time.Second, "PROMISE 2: /healthz 503 ("+mode+")", func() bool {
				c, _ := e.healthz()
				return c == 503
			})
			if g := e.gauge("strongroom_audit_log_healthy"); g != "0" {
				t.Errorf("PROMISE 2: /healthz 503 but strongroom_audit_log_healthy %s (%s)", g, mode)
			}
			_, hb := e.healthz()
			t.Logf("%s: /healthz 503 after %v: %s", mode, took, strings.TrimSpace(hb))
			for i := range 6 {
				a := e.ask(i%2 == 1, 30*time.Second)
				keep(a)
				if a.err != nil || a.status != 503 || a.took > 3*time.Second {
					t.Errorf("PROMISE 2: a new request during %s: status %d err %v took %v (want 503 at once)", mode, a.status, a.err, a.took)
				}
			}
			if g := runtime.NumGoroutine(); g > g0+300 {
				t.Errorf("PROMISE 2: goroutines %d → %d during %s", g0, g, mode)
			}
			p.set("up")
			a13Until(t, 15*time.Second, "PROMISE 3: /healthz 200 after "+mode, func() bool {
				c, _ := e.healthz()
				return c == 200
			})
			a13Until(t, 15*time.Second, "PROMISE 3: served after "+mode, func() bool {
				a := e.ask(false, 10*time.Second)
				keep(a)
				return a.complete
			})
			close(stop)
			wg.Wait()
		})
	}
	e.recorded(t, answers.list)
	e.noSecret(t)
}

// TestAttack13PasswordInFailedOpen — attack: the replica is started against the shared log
// with a DSN it cannot use — a wrong password (plain, and one full of the DSN's own
// separators: @ : / ?), a parameter the driver rejects, an engine that is not there — and
// the operator reads the error and the logs. Promise 4: the password is in neither.
func TestAttack13PasswordInFailedOpen(t *testing.T) {
	_, user, _, addr, name := a13DB(t)
	ctx := context.Background()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	for _, c := range []struct{ what, pw, dsn string }{
		{"wrong password", "Wr0ngPassw0rdXYZ", "mysql://%s:%s@tcp(%s)/%s"},
		{"wrong password with separators", "p@ss:w/rd?x=1@Q", "mysql://%s:%s@tcp(%s)/%s"},
		{"rejected parameter", "Passw0rdRejectedParam", "mysql://%s:%s@tcp(%s)/%s?tls=no-such-config"},
		{"unknown parameter value", "Passw0rdBadBool", "mysql://%s:%s@tcp(%s)/%s?parseTime=maybe"},
		{"engine not there", "Passw0rdNoEngine", ""},
	} {
		t.Run(c.what, func(t *testing.T) {
			dir, path, cfg := a13Init(t, ctx)
			dsn := fmt.Sprintf(c.dsn, user, c.pw, addr, name)
			if c.dsn == "" { // the engine not there
				dsn = fmt.Sprintf("mysql://%s:%s@tcp(%s)/%s", user, c.pw, deadAddr, name)
			}
			cfg.Audit.LogDB = dsn
			if err := config.Write(path, cfg); err != nil {
				t.Fatal(err)
			}
			logs := &a13Buf{}
			a, err := Open(ctx, dir, "", slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
			if err == nil {
				a.Close()
				t.Fatalf("opened with an unusable DSN")
			}
			t.Logf("%s: %v", c.what, err)
			if strings.Contains(err.Error(), c.pw) || strings.Contains(logs.String(), c.pw) {
				t.Errorf("PROMISE 4: the password appears in the error or the logs: %v\n%s", err, logs.String())
			}
		})
	}
}
