package app

// Outside round 62: the links from a fleet replica to its shared engines — Redis
// (gateway.redis_url rediss://…, gateway.redis_tls) and the log's MariaDB (audit.log_db,
// audit.log_db_tls) — attacked by someone on the network path (impostor engines, a
// stripped TLS offer, a stalled handshake) or with a file on the host (the client
// certificate's files, a CA file next to the process). Claims (docs/DESIGN.md, "TLS to the
// shared engines"): only the configured CA vouches for the server; its name is checked;
// the replica's client certificate is presented and re-read on rotation, the last good one
// kept while a rotation does not load; settings that do not check the server are refused;
// plaintext to a host that is not loopback is warned about without the password; no
// password or key bytes in logs, errors, /healthz, /metrics or the audit trail. Fake
// engines are in-process; the real TLS Redis and MariaDB come from scripts/test.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/testenv"
	"golang.org/x/mod/sumdb/note"
)

// ---- certificates ----

// o62ClientFiles writes ca's certificate and a client pair of ca into dir.
func o62ClientFiles(t testing.TB, ca *testenv.CA, dir string) *config.ClientTLS {
	t.Helper()
	l := ca.Leaf(t, "replica-62", nil, nil)
	f := &config.ClientTLS{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key")}
	for p, b := range map[string][]byte{f.CAFile: ca.PEM(), f.CertFile: l.CertPEM, f.KeyFile: l.KeyPEM} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// The impostor certificates every identity test presents, and the control.
type o62Case struct {
	name  string
	chain tls.Certificate
	tune  func(*tls.Config)
	ok    bool
}

func o62Cases(t testing.TB, ca *testenv.CA) []o62Case {
	lookalike := testenv.NewCA(t, ca.Cert.Subject.CommonName)
	old := func(x *x509.Certificate) {
		x.NotBefore, x.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-time.Minute)
	}
	early := func(x *x509.Certificate) {
		x.NotBefore, x.NotAfter = time.Now().Add(time.Hour), time.Now().Add(48*time.Hour)
	}
	clientOnly := func(x *x509.Certificate) { x.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} }
	good := ca.Leaf(t, "engine", []string{"127.0.0.1", "localhost"}, nil).Pair()
	return []o62Case{
		{"control: the fleet CA's certificate for 127.0.0.1", good, nil, true},
		{"same CA, another name", ca.Leaf(t, "evil", []string{"evil.internal", "10.6.6.6"}, nil).Pair(), nil, false},
		{"same CA, the name in the CN only", ca.Leaf(t, "127.0.0.1", []string{}, nil).Pair(), nil, false},
		{"same CA, client-auth-only certificate", ca.Leaf(t, "engine", []string{"127.0.0.1"}, clientOnly).Pair(), nil, false},
		{"same CA, expired", ca.Leaf(t, "engine", []string{"127.0.0.1"}, old).Pair(), nil, false},
		{"same CA, not yet valid", ca.Leaf(t, "engine", []string{"127.0.0.1"}, early).Pair(), nil, false},
		{"look-alike CA (same name, other key)", lookalike.Leaf(t, "engine", []string{"127.0.0.1"}, nil).Pair(), nil, false},
		{"the right certificate over TLS 1.1", good, func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 }, false},
	}
}

// ---- a fake Redis over TLS ----

// o62Redis is a TLS listener speaking enough RESP for go-redis (HELLO refused, AUTH, PING,
// the rest +OK); it counts completed handshakes and keeps every argument it was sent (a
// password among them, if the client trusted it).
type o62Redis struct {
	addr          string
	mu            sync.Mutex
	tlsOK, tlsBad int
	args          []string
}

func newO62Redis(t *testing.T, chain tls.Certificate, tune func(*tls.Config)) *o62Redis {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{chain}, ClientAuth: tls.RequestClientCert}
	if tune != nil {
		tune(cfg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	r := &o62Redis{addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.serve(tls.Server(c, cfg))
		}
	}()
	return r
}

func (r *o62Redis) serve(c *tls.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := c.Handshake(); err != nil {
		r.mu.Lock()
		r.tlsBad++
		r.mu.Unlock()
		return
	}
	r.mu.Lock()
	r.tlsOK++
	r.mu.Unlock()
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "*") {
			return
		}
		n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
		var args []string
		for range n {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			size, _ := strconv.Atoi(strings.TrimSpace(l[1:]))
			b := make([]byte, size+2)
			if _, err := io.ReadFull(br, b); err != nil {
				return
			}
			args = append(args, string(b[:size]))
		}
		r.mu.Lock()
		r.args = append(r.args, args...)
		r.mu.Unlock()
		switch strings.ToUpper(args[0]) {
		case "HELLO":
			io.WriteString(c, "-ERR unknown command 'HELLO'\r\n")
		case "PING":
			io.WriteString(c, "+PONG\r\n")
		default:
			io.WriteString(c, "+OK\r\n")
		}
	}
}

func (r *o62Redis) seen() (ok, bad int, args string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tlsOK, r.tlsBad, strings.Join(r.args, " ")
}

// o62RedisPing opens App.Redis for the settings and pings once (bounded).
func o62RedisPing(t *testing.T, url string, files *config.ClientTLS) (err error, logs string) {
	t.Helper()
	var log testenv.LogBuffer
	a := &App{Config: config.Config{Gateway: config.Gateway{RedisURL: url, RedisTLS: files}},
		Log: slog.New(slog.NewTextHandler(&log, nil))}
	c, err := a.Redis()
	if err != nil {
		return err, log.String()
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Ping(ctx).Err(), log.String()
}

// TestOutside62RedisImpostor: an impostor Redis on the path with a certificate the fleet's
// CA must not let through. The replica's Redis password must not reach it.
func TestOutside62RedisImpostor(t *testing.T) {
	ca := testenv.NewCA(t, "fleet CA")
	files := o62ClientFiles(t, ca, t.TempDir())
	for _, tc := range o62Cases(t, ca) {
		t.Run(tc.name, func(t *testing.T) {
			srv := newO62Redis(t, tc.chain, tc.tune)
			err, _ := o62RedisPing(t, "rediss://replica:o62-redis-secret@"+srv.addr+"/0", files)
			ok, _, args := srv.seen()
			t.Logf("ping: %v", err)
			if tc.ok {
				if err != nil || ok == 0 {
					t.Fatalf("control: ping %v, handshakes %d", err, ok)
				}
				return
			}
			if ok > 0 || err == nil {
				t.Fatalf("the impostor's TLS handshake completed %d times (ping err %v); it received: %q", ok, err, args)
			}
			if strings.Contains(args, "o62-redis-secret") {
				t.Fatalf("the impostor received the Redis password: %q", args)
			}
		})
	}
}

// TestOutside62RedisURLVerifyOff: every spelling of skip_verify that go-redis reads (and
// ones it might) must end in a refusal, or in a client that still checks the server (here,
// refuses a self-signed impostor), with and without redis_tls; never a handshake with it.
func TestOutside62RedisURLVerifyOff(t *testing.T) {
	ca := testenv.NewCA(t, "fleet CA")
	files := o62ClientFiles(t, ca, t.TempDir())
	rogue := testenv.NewCA(t, "rogue")
	srv := newO62Redis(t, rogue.Leaf(t, "engine", []string{"127.0.0.1"}, nil).Pair(), nil)
	base := "rediss://:o62-pw@" + srv.addr + "/0"
	for _, q := range []string{
		"skip_verify=true", "skip_verify=1", "skip_verify=True", "skip_verify=TRUE", "skip_verify=t",
		"skip%5Fverify=true", "skip_verify=false&skip_verify=true", "skip_verify=true&skip_verify=false",
		"Skip_Verify=true", "skip_verify=%74rue", "skip_verify=true#x", "dial_timeout=1&skip_verify=1",
	} {
		for _, withTLS := range []bool{false, true} {
			var f *config.ClientTLS
			if withTLS {
				f = files
			}
			before, _, _ := srv.seen()
			err, logs := o62RedisPing(t, base+"?"+q, f)
			after, _, args := srv.seen()
			if after > before {
				t.Errorf("%s (redis_tls %v): the self-signed impostor's handshake completed (ping err %v; it received %q)", q, withTLS, err, args)
			}
			if err != nil && (strings.Contains(err.Error(), "o62-pw") || strings.Contains(logs, "o62-pw")) {
				t.Errorf("%s: the password in the error or the logs: %v %s", q, err, logs)
			}
		}
	}
	// redis_tls with a URL that is not TLS: refused, not plaintext.
	for _, u := range []string{"redis://" + srv.addr + "/0", "unix:///tmp/o62-redis.sock", "REDIS://" + srv.addr} {
		if err, _ := o62RedisPing(t, u, files); err == nil {
			t.Errorf("redis_tls with %s: accepted", u)
		}
	}
}

// ---- a fake MariaDB ----

// o62MySQL speaks the start of MySQL's protocol: a greeting (offering TLS or not, with the
// caching_sha2_password plugin), the SSLRequest and a TLS handshake, the handshake
// response (its user kept), then "perform full authentication", which a client on TLS
// answers with the password in clear (kept), then an error. stall: after the SSLRequest,
// nothing more (the connection held open).
type o62MySQL struct {
	addr  string
	tls   *tls.Config
	noSSL bool
	stall bool
	mu    sync.Mutex
	tlsOK int
	users []string
	pws   []string
	plain bytes.Buffer // what arrived outside TLS
}

func newO62MySQL(t *testing.T, network string, chain *tls.Certificate, tune func(*tls.Config), opts ...func(*o62MySQL)) *o62MySQL {
	t.Helper()
	m := &o62MySQL{}
	for _, o := range opts {
		o(m)
	}
	if chain != nil {
		m.tls = &tls.Config{Certificates: []tls.Certificate{*chain}}
		if tune != nil {
			tune(m.tls)
		}
	}
	var ln net.Listener
	var err error
	if network == "unix" {
		p := filepath.Join(t.TempDir(), "my.sock")
		ln, err = net.Listen("unix", p)
		m.addr = p
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			m.addr = ln.Addr().String()
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				go func() { <-stop; c.Close() }()
				m.serve(c)
			}()
		}
	}()
	return m
}

func o62WritePacket(w io.Writer, seq byte, p []byte) error {
	h := []byte{byte(len(p)), byte(len(p) >> 8), byte(len(p) >> 16), seq}
	_, err := w.Write(append(h, p...))
	return err
}

func o62ReadPacket(r io.Reader) (byte, []byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := int(h[0]) | int(h[1])<<8 | int(h[2])<<16
	p := make([]byte, n)
	_, err := io.ReadFull(r, p)
	return h[3], p, err
}

func (m *o62MySQL) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	caps := uint32(0x1 | 0x200 | 0x8000 | 0x80000) // long password, protocol 41, secure connection, plugin auth
	if !m.noSSL {
		caps |= 0x800
	}
	g := []byte{0x0a}
	g = append(g, "8.0.99-o62\x00"...)
	g = append(g, 7, 0, 0, 0)
	g = append(g, "abcdefgh"...)
	g = append(g, 0, byte(caps), byte(caps>>8), 0x21, 2, 0, byte(caps>>16), byte(caps>>24), 21)
	g = append(g, make([]byte, 10)...)
	g = append(g, "ijklmnopqrst\x00"...)
	g = append(g, "caching_sha2_password\x00"...)
	if o62WritePacket(c, 0, g) != nil {
		return
	}
	rec := io.TeeReader(c, &o62Locked{m: m})
	seq, p, err := o62ReadPacket(rec)
	if err != nil {
		return
	}
	var conn io.ReadWriter = c
	if len(p) == 32 && binary.LittleEndian.Uint32(p)&0x800 != 0 { // SSLRequest
		if m.stall || m.tls == nil {
			io.Copy(io.Discard, c)
			return
		}
		tc := tls.Server(c, m.tls)
		if tc.Handshake() != nil {
			return
		}
		m.mu.Lock()
		m.tlsOK++
		m.mu.Unlock()
		conn = tc
		if seq, p, err = o62ReadPacket(tc); err != nil {
			return
		}
	}
	if len(p) > 32 {
		user, _, _ := bytes.Cut(p[32:], []byte{0})
		m.mu.Lock()
		m.users = append(m.users, string(user))
		m.mu.Unlock()
	}
	if o62WritePacket(conn, seq+1, []byte{0x01, 0x04}) != nil { // perform full authentication
		return
	}
	if seq, p, err = o62ReadPacket(conn); err == nil {
		m.mu.Lock()
		m.pws = append(m.pws, string(bytes.TrimRight(p, "\x00")))
		m.mu.Unlock()
	}
	o62WritePacket(conn, seq+1, append([]byte{0xff, 0x15, 0x04}, "#28000Access denied (o62 fake)"...))
}

type o62Locked struct{ m *o62MySQL }

func (l *o62Locked) Write(p []byte) (int, error) {
	l.m.mu.Lock()
	defer l.m.mu.Unlock()
	return l.m.plain.Write(p)
}

func (m *o62MySQL) seen() (tlsOK int, users, pws []string, plain string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.tlsOK, append([]string(nil), m.users...), append([]string(nil), m.pws...), m.plain.String()
}

const o62DBUser, o62DBPassword = "o62user", "o62-db-secret"

// o62OpenLog opens an audit log on the DSN with the given TLS files (bounded by 30 s).
func o62OpenLog(t *testing.T, dsn string, files *config.ClientTLS) (time.Duration, error) {
	t.Helper()
	tc, err := ClientTLS("audit.log_db_tls", files)
	if err != nil {
		return 0, err
	}
	s, _, _ := note.GenerateKey(rand.Reader, "strongroom.test/o62")
	signer, _ := note.NewSigner(s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	l, err := audit.Open(ctx, audit.Config{DB: dsn, DBTLS: tc, Signer: signer, EntryKey: audit.EntryKey(make([]byte, 32)),
		ShutdownTimeout: 2 * time.Second, Dir: t.TempDir()})
	took := time.Since(t0)
	if err == nil {
		l.Close(context.Background())
		return took, errors.New("o62: opened a log on the fake engine")
	}
	if strings.Contains(err.Error(), o62DBPassword) {
		t.Errorf("the error quotes the password: %v", err)
	}
	return took, err
}

// TestOutside62LogDBImpostor: an impostor MariaDB on the path, offering TLS with a
// certificate the fleet's CA must not let through. It must not complete the TLS
// handshake, nor receive the user — nor the password in clear, which a client on TLS sends
// when the server asks caching_sha2_password's full authentication. Control: the right
// certificate gets both (what a trusted impostor would get).
func TestOutside62LogDBImpostor(t *testing.T) {
	ca := testenv.NewCA(t, "fleet CA")
	files := o62ClientFiles(t, ca, t.TempDir())
	for _, tc := range o62Cases(t, ca) {
		t.Run(tc.name, func(t *testing.T) {
			m := newO62MySQL(t, "tcp", &tc.chain, tc.tune)
			dsn := fmt.Sprintf("mysql://%s:%s@tcp(%s)/o62db?timeout=2s&readTimeout=3s", o62DBUser, o62DBPassword, m.addr)
			_, err := o62OpenLog(t, dsn, files)
			ok, users, pws, plain := m.seen()
			t.Logf("open: %v", err)
			if tc.ok {
				if ok == 0 || len(pws) == 0 || pws[0] != o62DBPassword {
					t.Fatalf("control: handshakes %d, users %q, passwords %q, err %v", ok, users, pws, err)
				}
				return
			}
			if ok > 0 || len(users) > 0 || len(pws) > 0 {
				t.Fatalf("the impostor completed %d TLS handshakes and received users %q, passwords %q (err %v)", ok, users, pws, err)
			}
			if strings.Contains(plain, o62DBUser) {
				t.Fatalf("the user crossed the network outside TLS: %q", plain)
			}
		})
	}
}

// TestOutside62LogDBStripAndStall: a path that strips TLS from the greeting must get
// nothing (no user, no password: the driver's fallback to plaintext is refused), with
// log_db_tls or tls=true; a path that holds the TLS handshake after the SSLRequest must not
// hold the replica's start beyond the DSN's read timeout.
func TestOutside62LogDBStripAndStall(t *testing.T) {
	ca := testenv.NewCA(t, "fleet CA")
	files := o62ClientFiles(t, ca, t.TempDir())
	good := ca.Leaf(t, "engine", []string{"127.0.0.1"}, nil).Pair()

	t.Run("strip", func(t *testing.T) {
		m := newO62MySQL(t, "tcp", &good, nil, func(m *o62MySQL) { m.noSSL = true })
		for _, c := range []struct {
			q     string
			files *config.ClientTLS
		}{{"", files}, {"&tls=true", nil}, {"&tls=false", files}} {
			dsn := fmt.Sprintf("mysql://%s:%s@tcp(%s)/o62db?timeout=2s&readTimeout=3s%s", o62DBUser, o62DBPassword, m.addr, c.q)
			_, err := o62OpenLog(t, dsn, c.files)
			_, users, pws, plain := m.seen()
			if err == nil || len(users) > 0 || len(pws) > 0 || strings.Contains(plain, o62DBUser) {
				t.Fatalf("TLS stripped from the greeting (%q, log_db_tls %v): err %v; users %q, passwords %q, plaintext %q",
					c.q, c.files != nil, err, users, pws, plain)
			}
		}
	})

	t.Run("stall", func(t *testing.T) {
		m := newO62MySQL(t, "tcp", &good, nil, func(m *o62MySQL) { m.stall = true })
		dsn := fmt.Sprintf("mysql://%s:%s@tcp(%s)/o62db?timeout=2s&readTimeout=2s", o62DBUser, o62DBPassword, m.addr)
		took, err := o62OpenLog(t, dsn, files)
		if err == nil || took > 8*time.Second {
			t.Fatalf("TLS handshake held after the SSLRequest: Open returned after %v (readTimeout 2s): %v", took, err)
		}
	})
}

// TestOutside62LogDBUnixSocket: log_db_tls with a DSN that reaches the engine on a unix
// socket — a file on the host someone may replace — must still check the server's name
// (or refuse): an impostor with a fleet certificate for another name gets nothing.
func TestOutside62LogDBUnixSocket(t *testing.T) {
	ca := testenv.NewCA(t, "fleet CA")
	files := o62ClientFiles(t, ca, t.TempDir())
	other := ca.Leaf(t, "evil", []string{"evil.internal"}, nil).Pair()
	m := newO62MySQL(t, "unix", &other, nil)
	dsn := fmt.Sprintf("mysql://%s:%s@unix(%s)/o62db?timeout=2s&readTimeout=3s", o62DBUser, o62DBPassword, m.addr)
	_, err := o62OpenLog(t, dsn, files)
	ok, users, pws, plain := m.seen()
	if ok > 0 || len(users) > 0 || len(pws) > 0 || strings.Contains(plain, o62DBUser) {
		t.Fatalf("unix socket with log_db_tls: the impostor (a fleet certificate for evil.internal) completed %d handshakes, users %q, passwords %q, plaintext %q (err %v)",
			ok, users, pws, plain, err)
	}
}

// TestOutside62DSNVerifyOff: every DSN the driver reads as "TLS without checking the
// server" or "TLS that may fall back to plaintext" must be refused, however it is spelled
// (case, repetition, percent-encoding), from the config or the environment.
func TestOutside62DSNVerifyOff(t *testing.T) {
	base := "mysql://u:o62-pw@tcp(10.0.0.9:3306)/db?"
	var qs []string
	for _, v := range []string{"skip-verify", "SKIP-VERIFY", "Skip-Verify", "skip%2Dverify", "skip%2dverify", "%73kip-verify",
		"preferred", "PREFERRED", "Preferred", "pr%65ferred"} {
		qs = append(qs, "tls="+v, "tls=true&tls="+v, "timeout=1s&tls="+v+"&readTimeout=1s")
	}
	for _, v := range []string{"true", "1", "TRUE", "True"} {
		qs = append(qs, "allowFallbackToPlaintext="+v, "tls=true&allowFallbackToPlaintext="+v, "allowFallbackToPlaintext=false&allowFallbackToPlaintext="+v)
	}
	qs = append(qs, "tls=skip-verify&tls=true", "TLS=skip-verify", "tls=false", "tls=true") // the driver reads these as checked or no TLS
	refused := 0
	for _, q := range qs {
		dsn := base + q
		dc, perr := mysql.ParseDSN(dsn[len("mysql://"):])
		insecure := perr == nil && (dc.AllowFallbackToPlaintext || dc.TLS != nil && dc.TLS.InsecureSkipVerify)
		_, err := audit.ParseLogDSN(dsn)
		if insecure {
			refused++
			if err == nil {
				t.Errorf("%s: the driver would not check the server (skip %v, fallback %v) but ParseLogDSN accepts it",
					q, dc.TLS != nil && dc.TLS.InsecureSkipVerify, dc.AllowFallbackToPlaintext)
			}
		}
		if err != nil && strings.Contains(err.Error(), "o62-pw") {
			t.Errorf("%s: the refusal quotes the password: %v", q, err)
		}
	}
	if refused < 30 {
		t.Fatalf("only %d variants read as insecure by the driver: the table is wrong", refused)
	}

	// From the environment (STRONGROOM_LOG_DB) into a replica's Open, with log_db_tls set.
	ctx := context.Background()
	dir, path, c := a13Init(t, ctx)
	files := o62ClientFiles(t, testenv.NewCA(t, "fleet CA"), t.TempDir())
	c.Audit.LogDB = "mysql://u:o62-pw@tcp(127.0.0.1:1)/db"
	c.Audit.LogDBTLS = files
	if err := config.Write(path, c); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"tls=Skip-Verify", "tls=true&allowFallbackToPlaintext=1", "tls=pr%65ferred"} {
		t.Setenv("STRONGROOM_LOG_DB", "mysql://u:o62-pw@tcp(127.0.0.1:1)/db?"+q)
		var log testenv.LogBuffer
		a, err := Open(ctx, dir, "", slog.New(slog.NewTextHandler(&log, nil)))
		if err == nil {
			a.Close()
			t.Errorf("STRONGROOM_LOG_DB ?%s: Open succeeded", q)
			continue
		}
		if !strings.Contains(err.Error(), "tls=") && !strings.Contains(err.Error(), "allowFallbackToPlaintext") {
			t.Errorf("STRONGROOM_LOG_DB ?%s: refused, but not as unchecked TLS: %v", q, err)
		}
		if strings.Contains(err.Error()+log.String(), "o62-pw") {
			t.Errorf("STRONGROOM_LOG_DB ?%s: the password in the error or logs", q)
		}
	}
}

// TestOutside62RelativeTLSPaths: the configuration reference says relative paths are
// relative to the data directory. A ca_file written "fleet/ca.pem" must name
// DATA/fleet/ca.pem — not a file of that name under whatever directory the replica was
// started from, where someone with a file on the host can put their own CA. Attack: the
// working directory holds fleet/ca.pem of a rogue CA and fleet/client.* of nobody; the
// impostor engine has a certificate from the rogue CA.
func TestOutside62RelativeTLSPaths(t *testing.T) {
	ctx := context.Background()
	fleet, rogue := testenv.NewCA(t, "fleet CA"), testenv.NewCA(t, "rogue CA")
	dir, path, c := a13Init(t, ctx)
	os.Mkdir(filepath.Join(dir, "fleet"), 0o700)
	o62ClientFiles(t, fleet, filepath.Join(dir, "fleet"))
	cwd := t.TempDir()
	os.Mkdir(filepath.Join(cwd, "fleet"), 0o700)
	o62ClientFiles(t, rogue, filepath.Join(cwd, "fleet"))
	t.Chdir(cwd)
	rel := &config.ClientTLS{CAFile: "fleet/ca.pem", CertFile: "fleet/client.pem", KeyFile: "fleet/client.key"}

	t.Run("redis", func(t *testing.T) {
		impostor := newO62Redis(t, rogue.Leaf(t, "engine", []string{"127.0.0.1"}, nil).Pair(), nil)
		c := c
		c.Gateway.RedisURL = "rediss://:o62-redis-secret@" + impostor.addr + "/0"
		c.Gateway.RedisTLS = rel
		if err := config.Write(path, c); err != nil {
			t.Fatal(err)
		}
		a, err := Open(ctx, dir, "", nil)
		if err != nil {
			t.Fatalf("Open with redis_tls relative paths (DATA/fleet/* exist): %v", err)
		}
		defer a.Close()
		t.Logf("redis_tls as resolved by Open: %+v", *a.Config.Gateway.RedisTLS)
		rdb, err := a.Redis()
		if err != nil {
			t.Fatal(err)
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		perr := rdb.Ping(pctx).Err()
		cancel()
		ok, _, args := impostor.seen()
		if ok > 0 {
			t.Fatalf("redis_tls.ca_file \"fleet/ca.pem\" was read from the working directory (%s), not the data directory: "+
				"an impostor with the rogue CA's certificate completed %d handshakes (ping err %v) and received %q",
				cwd, ok, perr, args)
		}
	})

	t.Run("log database", func(t *testing.T) {
		rc := rogue.Leaf(t, "engine", []string{"127.0.0.1"}, nil).Pair()
		m := newO62MySQL(t, "tcp", &rc, nil)
		c := c
		c.Audit.LogDB = fmt.Sprintf("mysql://%s:%s@tcp(%s)/o62db?timeout=2s&readTimeout=3s", o62DBUser, o62DBPassword, m.addr)
		c.Audit.LogDBTLS = rel
		if err := config.Write(path, c); err != nil {
			t.Fatal(err)
		}
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		a, err := Open(octx, dir, "", nil)
		cancel()
		if err == nil {
			a.Close()
		}
		ok, users, pws, _ := m.seen()
		if ok > 0 || len(pws) > 0 {
			t.Fatalf("audit.log_db_tls.ca_file \"fleet/ca.pem\" was read from the working directory, not the data directory: "+
				"an impostor with the rogue CA's certificate completed %d TLS handshakes and received users %q and the password in clear %q (Open: %v)",
				ok, users, pws, err)
		}
	})
}

// o62Copy copies the scripts/test CA and client pair into a fresh directory (which the test
// may then tamper with).
func o62Copy(t *testing.T) *config.ClientTLS {
	t.Helper()
	src := fleetTLS(t)
	dir := t.TempDir()
	out := &config.ClientTLS{CAFile: src.CAFile, CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key")}
	for from, to := range map[string]string{src.CertFile: out.CertFile, src.KeyFile: out.KeyFile} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// o62FIFO replaces path by a named pipe without a writer; it returns a function that moves
// the pipe aside and puts saved back. At cleanup, a reader still waiting in open(2) on the
// pipe is given a writer (that closes at once).
func o62FIFO(t *testing.T, path string) (restore func()) {
	t.Helper()
	saved, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	where := path
	t.Cleanup(func() {
		mu.Lock()
		w := where
		mu.Unlock()
		for range 5 {
			f, err := os.OpenFile(w, os.O_WRONLY|syscall.O_NONBLOCK, 0)
			if err != nil {
				break
			}
			f.Close()
			time.Sleep(100 * time.Millisecond)
		}
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		where = path + ".aside"
		if err := os.Rename(path, where); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, saved, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// o62Within runs f and returns its error, or a timeout error after bound (f goes on).
func o62Within(bound time.Duration, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(bound):
		return fmt.Errorf("o62: still blocked after %v", bound)
	}
}

// TestOutside62KeyFIFOStopsRedisLink: on the real TLS Redis (tls-auth-clients yes), the
// replica's key file replaced by a named pipe (a broken rotation, or someone with write
// access to the certificate directory). Claimed: the last good certificate serves. A new
// connection must work within seconds — and once the key file is back, without a restart.
func TestOutside62KeyFIFOStopsRedisLink(t *testing.T) {
	files := o62Copy(t)
	a := &App{Config: config.Config{Gateway: config.Gateway{RedisURL: testenv.Get(t, "STRONGROOM_TEST_REDIS_TLS"), RedisTLS: files}},
		Log: slog.New(slog.DiscardHandler)}
	rdb, err := a.Redis()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	held := rdb.Conn() // keeps the first connection out of the pool: every later Conn dials
	defer held.Close()
	if err := held.Ping(ctx).Err(); err != nil {
		t.Fatalf("before the attack: %v", err)
	}
	restore := o62FIFO(t, files.KeyFile)
	ping := func() error {
		c := rdb.Conn()
		defer c.Close()
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		return c.Ping(pctx).Err()
	}
	t0 := time.Now()
	err1 := o62Within(6*time.Second, ping)
	took := time.Since(t0)
	restore()
	err2 := o62Within(6*time.Second, ping)
	if err1 != nil || err2 != nil {
		t.Fatalf("key file replaced by a FIFO: a new Redis connection: %v (after %v); after the key file was put back: %v "+
			"(a handshake blocks in the reloader's os.ReadFile of the pipe, holding its mutex: every later handshake of the link waits)",
			err1, took.Round(time.Millisecond), err2)
	}
}

// TestOutside62KeyFIFOStopsTheLog: the same on the real MariaDB (REQUIRE X509) under a
// running replica, after its connections to the engine were cut (a failover, a reset on the
// path). The replica must keep recording answers with its last good certificate, and
// certainly once the key file is back.
func TestOutside62KeyFIFOStopsTheLog(t *testing.T) {
	files := o62Copy(t)
	dsn, password := tlsLogDSN(t)
	admin, _, _, _, _ := a13DB(t)
	name := dsn[strings.LastIndex(dsn, "/")+1:]
	if i := strings.IndexByte(name, '?'); i >= 0 {
		name = name[:i]
	}
	e := a13OpenWith(t, dsn, password, func(c *config.Config) { c.Audit.LogDBTLS = files })
	if a := e.ask(false, 30*time.Second); a.status != 200 || !a.complete {
		t.Fatalf("before the attack: status %d, err %v", a.status, a.err)
	}
	restore := o62FIFO(t, files.KeyFile)
	// Cut every connection of the replica to its database (as a failover or the path would).
	n := testenv.KillSessions(t, admin, "CONNECTION", "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'strongroom_x509' AND DB = ?", name)
	t.Logf("cut %d connections of the replica", n)
	a1 := e.ask(false, 15*time.Second)
	restore()
	var a2 a13Answer
	deadline := time.Now().Add(20 * time.Second)
	for {
		a2 = e.ask(false, 10*time.Second)
		if a2.status == 200 && a2.complete || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	code, body := e.healthz()
	// /metrics reads the client certificate's expiry (strongroom_tls_client_cert_expiry_timestamp_seconds).
	merr := o62Within(5*time.Second, func() error { e.metrics(); return nil })
	if a1.status != 200 || a2.status != 200 || !a2.complete || merr != nil {
		t.Fatalf("key file replaced by a FIFO, connections cut: next request status %d (err %v, %v); after the key file "+
			"was put back, for 20 s: status %d (err %v); /healthz %d %q; /metrics: %v "+
			"(every new connection's handshake waits on the reloader, one of them blocked reading the pipe)",
			a1.status, a1.err, a1.took.Round(time.Millisecond), a2.status, a2.err, code, strings.TrimSpace(body), merr)
	}
	if strings.Contains(e.seen.String(), password) || strings.Contains(e.logs.String(), password) {
		t.Fatal("the log database's password in the replica's logs, answers, /healthz or /metrics")
	}
}

// TestOutside62RedisHandshakeStall: a path that accepts the connection to Redis and then
// says nothing (a held TLS handshake) must not hold a command beyond its deadline, at the
// first connection or the next.
func TestOutside62RedisHandshakeStall(t *testing.T) {
	ln := testenv.FakeRedis(t, func(net.Conn) {}) // accepted and held, never a byte
	files := o62ClientFiles(t, testenv.NewCA(t, "fleet CA"), t.TempDir())
	a := &App{Config: config.Config{Gateway: config.Gateway{RedisURL: "rediss://" + ln.Addr().String() + "/0", RedisTLS: files}},
		Log: slog.New(slog.DiscardHandler)}
	rdb, err := a.Redis()
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	for i := range 2 {
		t0 := time.Now()
		err := o62Within(10*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return rdb.Ping(ctx).Err()
		})
		if err == nil || time.Since(t0) > 7*time.Second {
			t.Fatalf("ping %d through a path that holds the TLS handshake: %v after %v", i, err, time.Since(t0).Round(time.Millisecond))
		}
	}
}

// TestOutside62PlaintextWarnings: plaintext to a host that only looks like loopback
// (127.0.0.1.example.com, localhost.example.com) is warned about; the warning (and the
// error) never quote the password, however it is written.
func TestOutside62PlaintextWarnings(t *testing.T) {
	for _, addr := range []string{"127.0.0.1.nip.io:6379", "localhost.example.com:6379", "localhost.:6379", "127.0.0.1.:6379",
		"[::ffff:10.0.0.1]:6379", "0x7f000001:6379", "2130706433:6379"} {
		if !plaintextRemote("tcp", addr) {
			t.Errorf("%s taken for loopback: no warning for plaintext to it", addr)
		}
	}
	for _, u := range []string{
		"redis://:o62%40pw%2Fx%3Fy@127.0.0.1.nip.io:6379/0",
		"redis://user:o62@pw@192.0.2.7:6379/0",
	} {
		var log testenv.LogBuffer
		a := &App{Config: config.Config{Gateway: config.Gateway{RedisURL: u}}, Log: slog.New(slog.NewTextHandler(&log, nil))}
		c, err := a.Redis()
		if c != nil {
			c.Close()
		}
		out := log.String()
		if err != nil {
			out += err.Error()
		}
		if err == nil && !strings.Contains(out, "no TLS") {
			t.Errorf("%s: no plaintext warning: %q", u, out)
		}
		for _, secret := range []string{"o62@pw", "o62%40pw", "pw/x", "pw%2Fx"} {
			if strings.Contains(out, secret) {
				t.Errorf("%s: %q in the warning or error: %s", u, secret, out)
			}
		}
	}
	// The log database: a password with @, : and / in it, to a TEST-NET host.
	ctx := context.Background()
	dir, path, c := a13Init(t, ctx)
	c.Audit.LogDB = "mysql://u:o62@p:w/rd@tcp(192.0.2.7:3306)/db?timeout=1s"
	if err := config.Write(path, c); err != nil {
		t.Fatal(err)
	}
	var log testenv.LogBuffer
	a, err := Open(ctx, dir, "", slog.New(slog.NewTextHandler(&log, nil)))
	if err == nil {
		a.Close()
	}
	out := log.String()
	if err != nil {
		out += err.Error()
	}
	if !strings.Contains(out, "no TLS") {
		t.Errorf("plaintext log database on 192.0.2.7: no warning: %s", out)
	}
	for _, secret := range []string{"o62@p", "p:w/rd", "w/rd"} {
		if strings.Contains(out, secret) {
			t.Errorf("log_db password fragment %q in the warning or error: %s", secret, out)
		}
	}
}

// TestOutside62NoKeyBytesInErrors: settings that point the wrong file at the wrong field
// (the key as the certificate, the key as the CA, the certificate as the key, a key file
// that holds the DSN) are refused at start without a byte of the key or the password.
func TestOutside62NoKeyBytesInErrors(t *testing.T) {
	dir := t.TempDir()
	f := o62ClientFiles(t, testenv.NewCA(t, "fleet CA"), dir)
	keyPEM, _ := os.ReadFile(f.KeyFile)
	block, _ := pem.Decode(keyPEM)
	b64 := strings.Split(string(keyPEM), "\n")[1]
	secretFile := filepath.Join(dir, "dsn.txt")
	os.WriteFile(secretFile, []byte("mysql://u:o62-in-file@tcp(db:3306)/x\n"), 0o600)
	for name, c := range map[string]*config.ClientTLS{
		"key as the certificate": {CAFile: f.CAFile, CertFile: f.KeyFile, KeyFile: f.KeyFile},
		"key as the CA":          {CAFile: f.KeyFile, CertFile: f.CertFile, KeyFile: f.KeyFile},
		"certificate as the key": {CAFile: f.CAFile, CertFile: f.CertFile, KeyFile: f.CertFile},
		"a key file of the DSN":  {CAFile: f.CAFile, CertFile: f.CertFile, KeyFile: secretFile},
		"a cert file of the DSN": {CAFile: f.CAFile, CertFile: secretFile, KeyFile: f.KeyFile},
		"a CA file of the DSN":   {CAFile: secretFile},
		"the key as every file":  {CAFile: f.KeyFile, CertFile: f.KeyFile, KeyFile: f.KeyFile},
	} {
		for _, setting := range []string{"gateway.redis_tls", "audit.log_db_tls"} {
			_, err := ClientTLS(setting, c)
			if err == nil {
				t.Errorf("%s %s: accepted", setting, name)
				continue
			}
			msg := err.Error()
			if strings.Contains(msg, b64[:16]) || strings.Contains(msg, "PRIVATE KEY") || strings.Contains(msg, "o62-in-file") ||
				strings.Contains(msg, fmt.Sprintf("%x", block.Bytes[:8])) {
				t.Errorf("%s %s: the error quotes the file: %v", setting, name, err)
			}
		}
	}
}
