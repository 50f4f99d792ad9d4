package main

// Outside round 57 (helper): credentials an operator gives a replica in its configuration —
// the store's PostgreSQL DSN, the shared log's MariaDB DSN (audit.log_db /
// STRONGROOM_LOG_DB), the Redis URL (gateway.redis_url / STRONGROOM_REDIS_URL), witness
// URLs, the OTLP endpoint, the console's OIDC client secret, a route's upstream key, the
// HSM PIN — must never appear in what an attacker or a log collector reads: the CLI's
// stdout (--json included) and stderr (startup errors for malformed values included), the
// log lines of `serve`, its HTTP answers (/v1/, /healthz, /metrics, /log/), the audit trail
// and the files written into the data directory (the config file aside).
//
// Every command under test runs as a separate process (this test binary again, as the
// strongroom command: TestOutside57Helper), so that whatever a dependency writes to the
// process's stderr on its own (go-redis's logger, klog, a panic) is captured too. Each
// secret kind has its own marker; every output is searched for it raw, fully
// percent-encoded and in base64. O57_DEBUG=1 logs every output (secrets masked).
//
// Found (each test fails while it lasts): a store DSN not recognised as a postgres:// URL
// (a stray leading space, the scheme in capitals or misspelt, libpq's keyword/value form)
// is taken for a SQLite path and printed whole (app.Open's ErrStoreMissing, store.start's
// "unreachable"), and `init --store` in keyword/value form creates a SQLite file named
// with the password; audit.RedactDSN hides nothing in a log DSN without an "@"; a
// malformed Redis URL, witness URL or OTLP endpoint is quoted by net/url's (or tessera's,
// or app.Tracer's own) error; the console's OIDC issuer is logged as written; a malformed
// gateway.oidc.jwks_url is quoted in the gateway's "unauthenticated" log line.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/testenv"
	"github.com/strongroom/strongroom/internal/witness"
	f_note "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

// The markers: one password a secret kind.
const (
	o57PG    = "S3cretMarker57pg"    // the store's PostgreSQL password
	o57My    = "S3cretMarker57my"    // the shared log's MariaDB password
	o57Redis = "S3cretMarker57redis" // gateway.redis_url's password
	o57Wit   = "S3cretMarker57wit"   // a witness URL's password
	o57OTLP  = "S3cretMarker57otlp"  // telemetry.otlp_endpoint's password
	o57Up    = "S3cretMarker57upkey" // a route's upstream key
	o57Pin   = "S3cretMarker57pin"   // the PKCS#11 PIN
	o57OIDC  = "S3cretMarker57oidc"  // the console's OIDC client secret
	o57JWKS  = "S3cretMarker57jwks"  // a password in gateway.oidc.jwks_url
	o57Iss   = "S3cretMarker57iss"   // a password in console.oidc.issuer
)

var o57Markers = []string{o57PG, o57My, o57Redis, o57Wit, o57OTLP, o57Up, o57Pin, o57OIDC, o57JWKS, o57Iss}

// o57Forms are the spellings of a marker searched for: as written, every byte
// percent-encoded (upper- and lower-case hex), and base64 (alone and as HTTP Basic
// credentials' password after any user).
func o57Forms(m string) []string {
	var up, low strings.Builder
	for _, b := range []byte(m) {
		fmt.Fprintf(&up, "%%%02X", b)
		fmt.Fprintf(&low, "%%%02x", b)
	}
	return []string{m, up.String(), low.String(), base64.StdEncoding.EncodeToString([]byte(m)),
		base64.RawStdEncoding.EncodeToString([]byte(m))}
}

// o57Mask hides every marker in s.
func o57Mask(s string) string {
	for _, m := range o57Markers {
		for _, f := range o57Forms(m) {
			s = strings.ReplaceAll(s, f, "<SECRET>")
		}
	}
	return s
}

// o57Check fails the test for each marker found in text, naming the channel and quoting
// the text around it with the secret masked.
func o57Check(t *testing.T, channel, text string, markers ...string) {
	t.Helper()
	for _, m := range markers {
		for _, f := range o57Forms(m) {
			i := strings.Index(text, f)
			if i < 0 {
				continue
			}
			lo, hi := max(0, i-160), min(len(text), i+len(f)+120)
			t.Errorf("LEAK: the %s secret is in %s: …%s…", o57Kind(m), channel, o57Mask(text[lo:hi]))
			break
		}
	}
}

func o57Kind(m string) string {
	return map[string]string{o57PG: "PostgreSQL store", o57My: "MariaDB log", o57Redis: "Redis", o57Wit: "witness",
		o57OTLP: "OTLP endpoint", o57Up: "upstream key", o57Pin: "PKCS#11 PIN", o57OIDC: "OIDC client", o57JWKS: "JWKS URL",
		o57Iss: "console OIDC issuer"}[m]
}

// o57ScanDir checks every file name under dir and every file's content but the config's.
func o57ScanDir(t *testing.T, dir string, markers ...string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		o57Check(t, "the name of data directory entry "+o57Mask(rel), rel, markers...)
		if rel == config.FileName || !d.Type().IsRegular() {
			return nil
		}
		if st, err := d.Info(); err != nil || st.Size() > 64<<20 {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil {
			o57Check(t, "data directory file "+o57Mask(rel), string(b), markers...)
		}
		return nil
	})
}

// TestOutside57Helper is the strongroom command in a process of its own, for the tests
// below (O57_HELPER_ARGS: its arguments as JSON); it skips otherwise.
func TestOutside57Helper(t *testing.T) {
	raw := os.Getenv("O57_HELPER_ARGS")
	if raw == "" {
		t.Skip("the outside57 tests' helper process")
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	os.Exit(run(args, os.Stdout, os.Stderr))
}

// o57Proc is a strongroom process started by o57Start.
type o57Proc struct {
	cmd       *exec.Cmd
	out, errb testenv.LogBuffer
	done      chan struct{}
	code      int
}

func o57Start(t *testing.T, env []string, args ...string) *o57Proc {
	t.Helper()
	b, _ := json.Marshal(args)
	p := &o57Proc{done: make(chan struct{})}
	p.cmd = testenv.HelperCmd(t, "TestOutside57Helper", append(env, "O57_HELPER_ARGS="+string(b))...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.errb
	p.cmd.Dir = t.TempDir() // what a command writes in its working directory (audit verify's state) stays there
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	return p
}

// wait waits (at most 60 s) for the process to end and returns its exit code.
func (p *o57Proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(60 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("strongroom %s did not end within 60 s; stderr: %s", p.cmd.Env[len(p.cmd.Env)-1], o57Mask(p.errb.String()))
		return -1
	}
}

// o57Run runs one strongroom command to its end and checks its stdout and stderr for the
// markers; it returns the exit code and stderr.
func o57Run(t *testing.T, env []string, markers []string, args ...string) (int, string) {
	t.Helper()
	p := o57Start(t, env, args...)
	code := p.wait(t)
	what := "`strongroom " + o57Mask(strings.Join(args, " ")) + "`"
	o57Check(t, "the stdout of "+what, p.out.String(), markers...)
	o57Check(t, "the stderr of "+what, p.errb.String(), markers...)
	o57ScanDir(t, p.cmd.Dir, markers...) // files it wrote in its working directory
	if os.Getenv("O57_DEBUG") != "" {
		t.Logf("%s: exit %d\nstdout: %.300s\nstderr: %.600s", what, code, o57Mask(p.out.String()), o57Mask(p.errb.String()))
	}
	return code, p.errb.String()
}

// o57In runs a strongroom command in this process on data directory dir; it must succeed.
func o57In(t *testing.T, dir string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(append([]string{"--data", dir}, args...), &out, &errb); code != 0 {
		t.Fatalf("strongroom %s: exit %d: %s", o57Mask(strings.Join(args, " ")), code, o57Mask(errb.String()))
	}
	return out.String()
}

// o57Variant writes dir's config changed by mod to a file of its own (for --config).
func o57Variant(t *testing.T, dir string, mod func(*config.Config)) string {
	t.Helper()
	c, err := config.ReadRaw(filepath.Join(dir, config.FileName))
	if err != nil {
		t.Fatal(err)
	}
	mod(&c)
	p := filepath.Join(t.TempDir(), "variant.json")
	if err := config.Write(p, c); err != nil {
		t.Fatal(err)
	}
	return p
}

func o57Host(t *testing.T, envName string) string {
	t.Helper()
	u, err := url.Parse(testenv.Get(t, envName))
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// TestOutside57StoreDSN: store DSNs with the password, good but unreachable and malformed,
// through STRONGROOM_STORE and the config file, for a command that opens the data
// directory (`--json principal ls`).
func TestOutside57StoreDSN(t *testing.T) {
	dir := t.TempDir()
	o57In(t, dir, "init")
	pw := o57PG
	cases := []struct{ name, dsn string }{
		{"unreachable", "postgres://strongroom:" + pw + "@127.0.0.1:1/o57?sslmode=disable"},
		{"bad_port", "postgres://strongroom:" + pw + "@127.0.0.1:54x32/o57?sslmode=disable"},
		{"bad_escape", "postgres://strongroom:" + pw + "%zz@127.0.0.1:1/o57"},
		{"space_in_password", "postgres://strongroom:" + pw + " x@127.0.0.1:1/o57"},
		{"password_in_query", "postgres://strongroom@127.0.0.1:1/o57?password=" + pw + "&sslmode=bogus"},
		{"at_in_password", "postgresql://strongroom:" + pw + "@x@127.0.0.1:notaport/o57"},
		{"trailing_newline", "postgres://strongroom:" + pw + "@127.0.0.1:1/o57?sslmode=disable\n"},
		// Not recognised as a URL: read as a SQLite path relative to the data directory.
		{"leading_space", " postgres://strongroom:" + pw + "@127.0.0.1:1/o57"},
		{"scheme_in_capitals", "Postgres://strongroom:" + pw + "@127.0.0.1:1/o57"},
		{"scheme_misspelt", "postgre://strongroom:" + pw + "@127.0.0.1:1/o57"},
		// PostgreSQL's other DSN form (libpq keyword/value), which pgx reads too.
		{"keyword_value", "host=127.0.0.1 port=1 user=strongroom password=" + pw + " dbname=o57"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := []string{"STRONGROOM_DATA=" + dir, "STRONGROOM_STORE=" + c.dsn}
			if code, _ := o57Run(t, env, []string{o57PG}, "--json", "principal", "ls"); code == 0 {
				t.Errorf("principal ls with store %q succeeded", o57Mask(c.dsn))
			}
			// The same value in the config file.
			cfg := o57Variant(t, dir, func(cf *config.Config) { cf.Store = c.dsn })
			o57Run(t, []string{"STRONGROOM_DATA=" + dir}, []string{o57PG}, "--config", cfg, "principal", "ls")
			o57ScanDir(t, dir, o57PG)
		})
	}
}

// TestOutside57InitStoreDSN: `init --store` with the password (unreachable; and written with
// a stray leading space): nothing printed or written but the config holds it.
func TestOutside57InitStoreDSN(t *testing.T) {
	for _, c := range []struct{ name, dsn string }{
		{"unreachable", "postgres://strongroom:" + o57PG + "@127.0.0.1:1/o57?sslmode=disable"},
		{"leading_space", " postgres://strongroom:" + o57PG + "@127.0.0.1:1/o57"},
		{"keyword_value", "host=127.0.0.1 port=1 user=strongroom password=" + o57PG + " dbname=o57"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			o57Run(t, nil, []string{o57PG}, "--data", dir, "--json", "init", "--store", c.dsn)
			o57ScanDir(t, dir, o57PG)
		})
	}
}

// TestOutside57LogDB: the shared log's DSN with the password through STRONGROOM_LOG_DB,
// unreachable, rejected by the engine and malformed, for a command that opens the data
// directory and for `audit verify` (which reads it without opening the store).
func TestOutside57LogDB(t *testing.T) {
	maria := testenv.Get(t, "STRONGROOM_TEST_MARIADB")
	maria = maria[strings.Index(maria, "@tcp(")+len("@tcp(") : strings.LastIndex(maria, ")")]
	dir := t.TempDir()
	o57In(t, dir, "init")
	pw := o57My
	cases := []struct{ name, dsn string }{
		{"unreachable", "mysql://strongroom:" + pw + "@tcp(127.0.0.1:1)/o57"},
		{"wrong_password", "mysql://strongroom:" + pw + "@tcp(" + maria + ")/strongroom"},
		{"unclosed_address", "mysql://strongroom:" + pw + "@tcp(127.0.0.1:1/o57"},
		{"bad_parameter", "mysql://strongroom:" + pw + "@tcp(127.0.0.1:1)/o57?timeout=x"},
		{"leading_space", " mysql://strongroom:" + pw + "@tcp(127.0.0.1:1)/o57"},
		// Malformed without an "@": RedactDSN finds no credentials to hide.
		{"no_address", "mysql://strongroom:" + pw},
		{"space_for_at", "mysql://strongroom:" + pw + " tcp(127.0.0.1:1)/o57"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := []string{"STRONGROOM_DATA=" + dir, "STRONGROOM_LOG_DB=" + c.dsn}
			if code, _ := o57Run(t, env, []string{o57My}, "--json", "principal", "ls"); code == 0 {
				t.Errorf("principal ls with log_db %q succeeded", o57Mask(c.dsn))
			}
			o57Run(t, env, []string{o57My}, "--json", "audit", "verify")
			o57ScanDir(t, dir, o57My)
		})
	}
}

// o57ServeArgs are `serve` on free loopback ports.
var o57ServeArgs = []string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--custody-listen", "127.0.0.1:0"}

// o57ServeFails runs `serve` with a value that must stop it at startup; the process must
// end (not serve) and print nothing of the secret.
func o57ServeFails(t *testing.T, env []string, markers []string, args ...string) {
	t.Helper()
	code, stderr := o57Run(t, env, markers, append(args, o57ServeArgs...)...)
	if code == 0 {
		t.Errorf("serve ended without an error: %s", o57Mask(stderr))
	}
}

// TestOutside57RedisURLMalformed: a malformed gateway.redis_url (STRONGROOM_REDIS_URL)
// stops `serve` — and is warned about by `key revoke`, which announces revocations through
// Redis — without printing the password.
func TestOutside57RedisURLMalformed(t *testing.T) {
	dir := t.TempDir()
	o57In(t, dir, "init")
	pw := o57Redis
	cases := []struct{ name, u string }{
		{"bad_escape", "redis://o57:" + pw + "%zz@127.0.0.1:6379/0"},
		{"bad_port", "redis://o57:" + pw + "@127.0.0.1:63x79/0"},
		{"space_in_host", "redis://o57:" + pw + "@127.0.0.1 :6379/0"},
		{"unknown_scheme", "http://o57:" + pw + "@127.0.0.1:6379/0"},
		{"bad_database", "redis://o57:" + pw + "@127.0.0.1:6379/x"},
		{"bad_option", "redis://o57:" + pw + "@127.0.0.1:6379/0?dial_timeout=abc"},
	}
	for _, c := range cases {
		t.Run("serve/"+c.name, func(t *testing.T) {
			o57ServeFails(t, []string{"STRONGROOM_DATA=" + dir, "STRONGROOM_REDIS_URL=" + c.u}, []string{o57Redis})
		})
	}
	o57In(t, dir, "principal", "add", "p", "--tenant", "t", "--country", "US")
	o57In(t, dir, "key", "create", "--principal", "p")
	t.Run("key_revoke/bad_escape", func(t *testing.T) {
		env := []string{"STRONGROOM_DATA=" + dir, "STRONGROOM_REDIS_URL=" + cases[0].u}
		if code, stderr := o57Run(t, env, []string{o57Redis}, "key", "revoke", "--principal", "p"); code != 0 {
			t.Fatalf("key revoke: exit %d: %s", code, o57Mask(stderr))
		}
	})
	o57ScanDir(t, dir, o57Redis)
}

// TestOutside57WitnessURL: a witness URL with a password, malformed (a bad port; a stray
// trailing space) for any command that opens the data directory, and good but answering
// 500 for a command that appends an event (its checkpoint goes to the witness).
func TestOutside57WitnessURL(t *testing.T) {
	dir := t.TempDir()
	o57In(t, dir, "init")
	skey, vkey, err := note.GenerateKey(rand.Reader, "witness.o57.example")
	if err != nil {
		t.Fatal(err)
	}
	cvkey, err := cosignatureVKey(vkey)
	if err != nil {
		t.Fatal(err)
	}
	// The witness: its first answer is a 500 (the log says so, naming the witness's URL),
	// then it cosigns, so that the command's checkpoint is published and it ends at once.
	logPub, err := os.ReadFile(filepath.Join(dir, "keys", "log.pub"))
	if err != nil {
		t.Fatal(err)
	}
	logV, err := note.NewVerifier(strings.TrimSpace(string(logPub)))
	if err != nil {
		t.Fatal(err)
	}
	csigner, err := f_note.NewSignerForCosignatureV1(skey)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := witness.New(witness.Config{Signer: csigner, Logs: map[string]note.Verifier{logV.Name(): logV}, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var hits, basic atomic.Int32
	wit := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pw, ok := r.BasicAuth(); ok && pw == o57Wit {
			basic.Add(1)
		}
		if hits.Add(1) == 1 {
			http.Error(w, "no", http.StatusInternalServerError)
			return
		}
		ws.ServeHTTP(w, r)
	}))
	defer wit.Close()
	good := strings.Replace(wit.URL, "http://", "http://o57:"+o57Wit+"@", 1) + "/"
	cases := []struct {
		name, u string
		args    []string
	}{
		{"bad_port", "https://o57:" + o57Wit + "@127.0.0.1:44x3/", []string{"principal", "ls"}},
		{"trailing_space", "https://o57:" + o57Wit + "@witness.example/ ", []string{"principal", "ls"}},
		{"space_in_password", "https://o57:" + o57Wit + " x@witness.example/", []string{"principal", "ls"}},
		{"answers_500", good, []string{"-v", "principal", "add", "w", "--tenant", "t"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := o57Variant(t, dir, func(cf *config.Config) {
				cf.Audit.Witnesses = []config.Witness{{VKey: cvkey, URL: c.u}}
				cf.Audit.Quorum = 1
			})
			_, stderr := o57Run(t, []string{"STRONGROOM_DATA=" + dir}, []string{o57Wit}, append([]string{"--config", cfg}, c.args...)...)
			if c.name == "answers_500" && !strings.Contains(stderr, "answered HTTP 500") {
				t.Errorf("no log line about the witness's 500: the path was not exercised: %s", o57Mask(stderr))
			}
		})
	}
	if hits.Load() < 2 || basic.Load() == 0 {
		t.Errorf("the witness was asked %d times, %d with the URL's credentials: the good URL's path was not exercised", hits.Load(), basic.Load())
	}
	o57ScanDir(t, dir, o57Wit)
}

// TestOutside57OTLPEndpoint: a malformed telemetry.otlp_endpoint with a password stops
// `serve` without printing it.
func TestOutside57OTLPEndpoint(t *testing.T) {
	dir := t.TempDir()
	o57In(t, dir, "init")
	for _, c := range []struct{ name, u string }{
		{"bad_port", "https://o57:" + o57OTLP + "@127.0.0.1:43x18"},
		{"unknown_scheme", "otlp://o57:" + o57OTLP + "@127.0.0.1:4318"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := o57Variant(t, dir, func(cf *config.Config) { cf.Telemetry.OTLPEndpoint = c.u })
			o57ServeFails(t, []string{"STRONGROOM_DATA=" + dir}, []string{o57OTLP}, "--config", cfg)
		})
	}
}

// TestOutside57PKCS11PIN: `init --kms pkcs11` with a wrong PIN (the token refuses it):
// the PIN is in no output and no file.
func TestOutside57PKCS11PIN(t *testing.T) {
	mod := testenv.Get(t, "STRONGROOM_TEST_PKCS11_MODULE")
	tok := testenv.Get(t, "STRONGROOM_TEST_PKCS11_TOKEN")
	dir := t.TempDir()
	code, stderr := o57Run(t, []string{"STRONGROOM_PKCS11_PIN=" + o57Pin}, []string{o57Pin}, "--data", dir, "-v", "--json", "init", "--kms", "pkcs11",
		"--pkcs11-module", mod, "--pkcs11-token", tok, "--pkcs11-key-label", "o57-kek")
	if code == 0 {
		t.Errorf("init with a wrong PIN succeeded")
	}
	if !strings.Contains(stderr, "CKR_PIN_INCORRECT") {
		t.Errorf("init did not reach the token's login: the path was not exercised: %s", o57Mask(stderr))
	}
	o57ScanDir(t, dir, o57Pin)
}

// o57Serving is a `serve` process whose listeners are bound.
type o57Serving struct {
	*o57Proc
	gw, admin string
}

// o57Serve starts `serve` and waits (at most 60 s) for its gateway and control-plane URLs.
func o57Serve(t *testing.T, env []string, args ...string) *o57Serving {
	t.Helper()
	p := o57Start(t, env, append(args, o57ServeArgs...)...)
	s := &o57Serving{o57Proc: p}
	for deadline := time.Now().Add(60 * time.Second); s.gw == "" || s.admin == ""; {
		sc := bufio.NewScanner(strings.NewReader(p.out.String()))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "STRONGROOM_URL="); ok {
				s.gw = strings.TrimSuffix(v, "/v1")
			}
			if v, ok := strings.CutPrefix(sc.Text(), "STRONGROOM_ADMIN_URL="); ok {
				s.admin = v
			}
		}
		select {
		case <-p.done:
			t.Fatalf("serve ended (exit %d) before serving: %s", p.code, o57Mask(p.errb.String()))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not listening after 60 s: %s", o57Mask(p.errb.String()))
		}
	}
	return s
}

// stop ends serve with SIGTERM and waits for it.
func (s *o57Serving) stop(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	s.wait(t)
}

// o57Header is a header's first value in an o57Do exchange's text.
func o57Header(exchange, name string) string {
	for _, l := range strings.Split(exchange, "\r\n") {
		if v, ok := strings.CutPrefix(l, name+": "); ok {
			return v
		}
	}
	return ""
}

// o57Do is one HTTP exchange: its status line, headers and body as text.
func o57Do(t *testing.T, method, u, key, body string) string {
	t.Helper()
	req, _ := http.NewRequest(method, u, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	c := &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	var h bytes.Buffer
	resp.Header.Write(&h)
	return resp.Status + "\n" + h.String() + "\n" + string(b)
}

// TestOutside57ServeRuntime: a replica configured with secrets that serves: its store on
// PostgreSQL with a password, Redis with a password the server refuses, a route whose
// upstream key is secret and whose engine is down, the console's OIDC client secret (from
// the environment). Requests with a good key, a bad key and none; the control plane's
// /healthz, /metrics, /log/ and console; `key revoke` and `--json audit search` beside it.
// No secret may be in any answer, log line, output, the audit trail or a file.
func TestOutside57ServeRuntime(t *testing.T) {
	pgURL, dbName := testenv.PostgresDB(t, "o57_")
	redisHost := o57Host(t, "STRONGROOM_TEST_REDIS")
	pu, _ := url.Parse(pgURL)
	store := "postgres://strongroom:" + o57PG + "@" + pu.Host + "/" + dbName + "?sslmode=disable"

	dir := t.TempDir()
	o57In(t, dir, "init", "--store", store, "--internal-country", "US")
	o57In(t, dir, "model", "register", "ext:1", "--classification", "public", "--owner", "o57")
	o57In(t, dir, "principal", "add", "p", "--tenant", "t", "--roles", "researcher", "--country", "US")
	key := strings.TrimSpace(o57In(t, dir, "key", "create", "--principal", "p"))
	t.Setenv("O57_UPSTREAM_KEY", o57Up)
	o57In(t, dir, "route", "set", "ext:1", "--upstream", "http://127.0.0.1:1/v1", "--upstream-key-env", "O57_UPSTREAM_KEY")
	c, err := config.ReadRaw(filepath.Join(dir, config.FileName))
	if err != nil {
		t.Fatal(err)
	}
	// A provider that is discovered and whose token endpoint refuses every code (and says
	// whether the client secret reached it).
	var idp *httptest.Server
	var sent atomic.Bool
	idp = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			json.NewEncoder(w).Encode(map[string]any{"issuer": idp.URL, "authorization_endpoint": idp.URL + "/auth",
				"token_endpoint": idp.URL + "/token", "jwks_uri": idp.URL + "/jwks", "id_token_signing_alg_values_supported": []string{"RS256"}})
		case "/token":
			r.ParseForm()
			if r.PostForm.Get("client_secret") == o57OIDC {
				sent.Store(true)
			}
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"invalid_grant"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer idp.Close()
	c.Console.OIDC = &config.ConsoleOIDC{Issuer: idp.URL, ClientID: "strongroom", ClientSecretEnv: "O57_OIDC_SECRET",
		RedirectURL: "http://127.0.0.1/console/oidc/callback"}
	if err := config.Write(filepath.Join(dir, config.FileName), c); err != nil {
		t.Fatal(err)
	}
	markers := []string{o57PG, o57Redis, o57Up, o57OIDC}
	env := []string{"STRONGROOM_DATA=" + dir, "STRONGROOM_REDIS_URL=redis://o57:" + o57Redis + "@" + redisHost + "/0",
		"O57_OIDC_SECRET=" + o57OIDC}

	s := o57Serve(t, env, "-v")
	chat := `{"model":"ext:1","messages":[{"role":"user","content":"hello"}],"max_tokens":4}`
	answers := map[string]string{
		"chat, good key": o57Do(t, "POST", s.gw+"/v1/chat/completions", key, chat),
		"chat, bad key":  o57Do(t, "POST", s.gw+"/v1/chat/completions", "sk-o57-wrong", chat),
		"chat, no key":   o57Do(t, "POST", s.gw+"/v1/chat/completions", "", chat),
		"models":         o57Do(t, "GET", s.gw+"/v1/models", key, ""),
		"healthz":        o57Do(t, "GET", s.admin+"/healthz", "", ""),
		"log checkpoint": o57Do(t, "GET", s.admin+"/log/checkpoint", "", ""),
		"console":        o57Do(t, "GET", s.admin+"/console/", "", ""),
	}
	// The console's sign-in through the provider: start, then the callback with a code the
	// provider refuses (the client secret is sent to its token endpoint).
	start := o57Do(t, "GET", s.admin+"/console/oidc/start", "", "")
	answers["console oidc start"] = start
	if loc, ck := o57Header(start, "Location"), o57Header(start, "Set-Cookie"); loc != "" && ck != "" {
		lu, _ := url.Parse(loc)
		req, _ := http.NewRequest("GET", s.admin+"/console/oidc/callback?code=o57code&state="+url.QueryEscape(lu.Query().Get("state")), nil)
		req.Header.Set("Cookie", strings.SplitN(ck, ";", 2)[0])
		if resp, err := http.DefaultClient.Do(req); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answers["console oidc callback"] = resp.Status + "\n" + string(b)
		}
		if !sent.Load() {
			t.Errorf("the console's code exchange never sent the client secret: the path was not exercised")
		}
	} else {
		t.Errorf("console oidc start did not redirect with a cookie: %.300s", start)
	}
	// Beside the running replica: a revocation (announced through Redis) and the trail.
	o57Run(t, env, markers, "-v", "key", "revoke", "--principal", "p")
	answers["chat, revoked key"] = o57Do(t, "POST", s.gw+"/v1/chat/completions", key, chat)
	answers["metrics"] = o57Do(t, "GET", s.admin+"/metrics", "", "")
	o57Run(t, env, markers, "--json", "route", "ls")
	s.stop(t)
	o57Run(t, env, markers, "--json", "audit", "search")
	o57Run(t, env, markers, "--json", "audit", "verify")
	for what, a := range answers {
		o57Check(t, "the HTTP answer to "+what, a, markers...)
	}
	if !strings.HasPrefix(answers["chat, good key"], "5") {
		t.Logf("chat with a good key: %.200s", answers["chat, good key"])
	}
	o57Check(t, "serve's stdout", s.out.String(), markers...)
	o57Check(t, "serve's stderr (its log)", s.errb.String(), markers...)
	o57ScanDir(t, dir, markers...)
	if os.Getenv("O57_DEBUG") != "" {
		for what, a := range answers {
			t.Logf("%s: %.400s", what, o57Mask(a))
		}
		t.Logf("serve stderr: %s", o57Mask(s.errb.String()))
	}
	// The audit trail as the store indexes it (what the console's explorer serves).
	db, err := sql.Open("pgx", strings.Replace(store, o57PG, "x", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	o57CheckTables(t, context.Background(), db, markers)
}

// o57CheckTables searches every text or binary column of every table in the public schema.
func o57CheckTables(t *testing.T, ctx context.Context, db *sql.DB, markers []string) {
	t.Helper()
	rows, err := db.QueryContext(ctx, `SELECT table_name, column_name, data_type FROM information_schema.columns
		WHERE table_schema = 'public' AND data_type IN ('text', 'bytea', 'character varying', 'jsonb', 'json')`)
	if err != nil {
		t.Fatal(err)
	}
	type col struct{ table, column, typ string }
	var cols []col
	for rows.Next() {
		var c col
		rows.Scan(&c.table, &c.column, &c.typ)
		cols = append(cols, c)
	}
	rows.Close()
	if len(cols) == 0 {
		t.Fatal("the store has no text columns")
	}
	for _, c := range cols {
		val := fmt.Sprintf("convert_to(%q::text, 'UTF8')", c.column)
		if c.typ == "bytea" {
			val = fmt.Sprintf("%q", c.column)
		}
		q := fmt.Sprintf(`SELECT count(*) FROM %q WHERE position($1::bytea in %s) > 0`, c.table, val)
		for _, m := range markers {
			var n int
			if err := db.QueryRowContext(ctx, q, []byte(m)).Scan(&n); err != nil {
				t.Fatalf("%s.%s: %v", c.table, c.column, err)
			}
			if n > 0 {
				t.Errorf("LEAK: the %s secret is in the store's %s.%s (%d rows)", o57Kind(m), c.table, c.column, n)
			}
		}
	}
}

// TestOutside57ServeOIDCURLs: identity-provider URLs that carry a password. gateway.oidc's
// jwks_url malformed (a bad port): any client that sends a JWT with the configured issuer
// and audience (both public) makes the gateway fetch the keys, and the failure is logged
// (`serve -v`). console.oidc's issuer unreachable: the console's sign-in is turned off with
// an ALERT naming the issuer.
func TestOutside57ServeOIDCURLs(t *testing.T) {
	dir := t.TempDir()
	o57In(t, dir, "init", "--internal-country", "US")
	const iss, aud = "https://idp.o57.example", "strongroom"
	// A malformed JWKS URL: refused at start, in one line that does not quote it (go-oidc
	// quoted it in every token's error, which the gateway logs).
	bad := o57Variant(t, dir, func(c *config.Config) {
		c.Gateway.OIDC = &config.OIDC{Issuer: iss, Audience: aud, JWKSURL: "https://o57:" + o57JWKS + "@127.0.0.1:44x3/jwks"}
	})
	if code, stderr := o57Run(t, []string{"STRONGROOM_DATA=" + dir}, []string{o57JWKS}, "serve", "--config", bad); code == 0 || !strings.Contains(stderr, "jwks_url is not an http(s) URL") {
		t.Errorf("serve with a malformed jwks_url: exit %d, stderr %.300s; want refused, saying why", code, o57Mask(stderr))
	}
	// A well-formed one with a password, on a port where nothing answers: served, and every
	// token's error is logged.
	cfg := o57Variant(t, dir, func(c *config.Config) {
		c.Gateway.OIDC = &config.OIDC{Issuer: iss, Audience: aud, JWKSURL: "https://o57:" + o57JWKS + "@127.0.0.1:1/jwks"}
		c.Console.OIDC = &config.ConsoleOIDC{Issuer: "http://o57:" + o57Iss + "@127.0.0.1:1/", ClientID: "strongroom",
			RedirectURL: "http://127.0.0.1/console/oidc/callback"}
	})
	markers := []string{o57JWKS, o57Iss}
	s := o57Serve(t, []string{"STRONGROOM_DATA=" + dir}, "-v", "--config", cfg)
	b64 := func(v any) string {
		j, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(j)
	}
	sig := make([]byte, 256)
	rand.Read(sig)
	now := time.Now().Unix()
	jwt := b64(map[string]string{"alg": "RS256", "typ": "JWT", "kid": "o57"}) + "." +
		b64(map[string]any{"iss": iss, "aud": aud, "sub": "p", "iat": now, "exp": now + 600}) + "." + base64.RawURLEncoding.EncodeToString(sig)
	answers := map[string]string{
		"models with a JWT": o57Do(t, "GET", s.gw+"/v1/models", jwt, ""),
		"chat with a JWT":   o57Do(t, "POST", s.gw+"/v1/chat/completions", jwt, `{"model":"m","messages":[{"role":"user","content":"hi"}]}`),
		"console login":     o57Do(t, "GET", s.admin+"/console/login", "", ""),
	}
	s.stop(t)
	for what, a := range answers {
		o57Check(t, "the HTTP answer to "+what, a, markers...)
	}
	o57Check(t, "serve's stdout", s.out.String(), markers...)
	o57Check(t, "serve's stderr (its log)", s.errb.String(), markers...)
	o57ScanDir(t, dir, markers...)
}
