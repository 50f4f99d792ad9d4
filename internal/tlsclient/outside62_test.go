package tlsclient

// Outside round 62: attacks on the client TLS of the links to the shared engines, as
// someone who controls the network path (an impostor server) or a file on the host (the
// certificate and key files a rotation agent writes). Claims attacked (README, DESIGN "TLS
// to the shared engines"): only the configured CA vouches for the server, the server's name
// and usage are checked, TLS 1.2 at least; the client certificate is read again when its
// files change and a rotation that does not load keeps the last good certificate; nothing
// makes the link hang or the replica exhaust its memory.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/testenv"
)

func serverShape(hosts ...string) func(*x509.Certificate) {
	return func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				c.IPAddresses = append(c.IPAddresses, ip)
			} else {
				c.DNSNames = append(c.DNSNames, h)
			}
		}
	}
}

func write(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// o62Server is a TLS listener on loopback presenting chain; it asks for (and, with
// clientCA, verifies) a client certificate. Each accepted connection reports its
// handshake's outcome and the client certificate's common name.
type o62Server struct {
	addr    string
	results chan o62Result
}

type o62Result struct {
	err error
	cn  string
}

func newO62Server(t *testing.T, chain tls.Certificate, clientCA *testenv.CA, tune func(*tls.Config)) *o62Server {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{chain}, ClientAuth: tls.RequestClientCert}
	if clientCA != nil {
		pool := x509.NewCertPool()
		pool.AddCert(clientCA.Cert)
		cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, pool
	}
	if tune != nil {
		tune(cfg)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &o62Server{addr: ln.Addr().String(), results: make(chan o62Result, 64)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				tc.SetDeadline(time.Now().Add(20 * time.Second))
				err := tc.Handshake()
				r := o62Result{err: err}
				if err == nil {
					if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
						r.cn = pc[0].Subject.CommonName
					}
					tc.Write([]byte("ok"))
				}
				select {
				case s.results <- r:
				default:
				}
			}()
		}
	}()
	return s
}

// o62Dial connects with c as a driver would (ServerName from the address) and reads the
// server's "ok", within bound; it returns the error, or a timeout error if the dial did not
// end within bound (the dial goes on in the background).
func o62Dial(c *tls.Config, addr, serverName string, bound time.Duration) error {
	c = c.Clone()
	c.ServerName = serverName
	done := make(chan error, 1)
	go func() {
		d := &net.Dialer{Timeout: bound}
		conn, err := tls.DialWithDialer(d, "tcp", addr, c)
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(bound))
		var b [2]byte
		_, err = conn.Read(b[:])
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(bound + 2*time.Second):
		return fmt.Errorf("o62: the handshake did not end within %v (still blocked)", bound+2*time.Second)
	}
}

// o62Files writes a client pair into a fresh directory and returns the paths.
func o62Files(t *testing.T, ca *testenv.CA, l testenv.Leaf) (caFile, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
	write(t, caFile, ca.PEM())
	write(t, certFile, l.CertPEM)
	write(t, keyFile, l.KeyPEM)
	return
}

// TestOutside62ServerIdentity: an impostor on the path with a certificate the configured CA
// must not let through — another name, a client-auth-only certificate, an expired or
// not-yet-valid one, one issued by a replica's own client certificate (every replica holds
// such a key), one from a look-alike CA of the same name — and a server that only speaks
// TLS 1.0/1.1. Control: the right certificate is accepted.
func TestOutside62ServerIdentity(t *testing.T) {
	ca := testenv.NewCA(t, "fleet CA")
	client := ca.Leaf(t, "replica-1", nil, nil)
	caFile, certFile, keyFile := o62Files(t, ca, client)
	c, err := Config(Files{CA: caFile, Cert: certFile, Key: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	good := ca.Leaf(t, "engine", nil, serverShape("127.0.0.1", "db.internal"))
	lookalike := testenv.NewCA(t, "fleet CA") // same subject, another key
	// A server certificate signed with the replica's client certificate's key, the chain
	// sent whole: a leaf is no CA.
	byClient := testenv.IssueBy(t, client.Cert, client.Key, 99, "engine", nil, serverShape("127.0.0.1"))
	byClientChain := tls.Certificate{Certificate: [][]byte{byClient.DER, client.DER}, PrivateKey: byClient.Key}
	// The client certificate itself, given the server's address as a name (client-auth only).
	clientAuthOnly := ca.Leaf(t, "engine", nil, func(x *x509.Certificate) {
		serverShape("127.0.0.1")(x)
		x.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
	for _, tc := range []struct {
		name       string
		chain      tls.Certificate
		serverName string
		tune       func(*tls.Config)
		ok         bool
	}{
		{"control: the fleet CA's certificate for the address", good.Pair(), "127.0.0.1", nil, true},
		{"control: by DNS name", good.Pair(), "db.internal", nil, true},
		{"another name (same CA)", ca.Leaf(t, "evil", nil, serverShape("evil.internal", "10.9.9.9")).Pair(), "127.0.0.1", nil, false},
		{"right name in the CN only", ca.Leaf(t, "127.0.0.1", nil, serverShape()).Pair(), "127.0.0.1", nil, false},
		{"client-auth-only certificate as the server's", clientAuthOnly.Pair(), "127.0.0.1", nil, false},
		{"expired", ca.Leaf(t, "engine", nil, func(x *x509.Certificate) {
			serverShape("127.0.0.1")(x)
			x.NotBefore, x.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)
		}).Pair(), "127.0.0.1", nil, false},
		{"not yet valid", ca.Leaf(t, "engine", nil, func(x *x509.Certificate) {
			serverShape("127.0.0.1")(x)
			x.NotBefore, x.NotAfter = time.Now().Add(time.Hour), time.Now().Add(48*time.Hour)
		}).Pair(), "127.0.0.1", nil, false},
		{"issued by a replica's client certificate", byClientChain, "127.0.0.1", nil, false},
		{"look-alike CA of the same name", lookalike.Leaf(t, "engine", nil, serverShape("127.0.0.1")).Pair(), "127.0.0.1", nil, false},
		{"TLS 1.1 at most", good.Pair(), "127.0.0.1", func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 }, false},
		{"TLS 1.0 only", good.Pair(), "127.0.0.1", func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS10 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newO62Server(t, tc.chain, ca, tc.tune)
			err := o62Dial(c, s.addr, tc.serverName, 5*time.Second)
			var r o62Result
			select {
			case r = <-s.results:
			case <-time.After(5 * time.Second):
				r.err = fmt.Errorf("no handshake reached the server")
			}
			t.Logf("client: %v; server: %v", err, r.err)
			accepted := err == nil && r.err == nil
			if accepted != tc.ok {
				t.Fatalf("client err %v, server handshake err %v: accepted %v, want %v", err, r.err, accepted, tc.ok)
			}
			if tc.ok && r.cn != "replica-1" {
				t.Fatalf("the server saw client certificate %q, want replica-1", r.cn)
			}
		})
	}
}

// TestOutside62CAFileContents: a CA file that holds no certificate (empty, junk, a key, a
// DER certificate) is refused at start — never an empty pool or the system's roots — and
// one with junk and several PEM certificates trusts exactly those certificates.
func TestOutside62CAFileContents(t *testing.T) {
	dir := t.TempDir()
	a, b, other := testenv.NewCA(t, "CA a"), testenv.NewCA(t, "CA b"), testenv.NewCA(t, "CA other")
	client := a.Leaf(t, "replica-1", nil, nil)
	for name, content := range map[string][]byte{
		"empty":                  nil,
		"junk":                   []byte("-----BEGIN GARBAGE-----\nnot base64 !!\n-----END GARBAGE-----\n"),
		"a private key only":     client.KeyPEM,
		"a DER certificate":      a.DER,
		"a CERTIFICATE of junk":  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")}),
		"a directory":            nil, // replaced below by a directory
		"PEM with a bad trailer": []byte(strings.Replace(string(a.PEM()), "-----END CERTIFICATE-----", "-----END CERT-----", 1)),
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if name == "a directory" {
			os.Mkdir(p, 0o700)
		} else {
			write(t, p, content)
		}
		if _, err := Config(Files{CA: p}); err == nil {
			t.Errorf("CA file %s: accepted", name)
		} else if bytes.Contains([]byte(err.Error()), []byte("PRIVATE KEY")) || (len(content) > 40 && strings.Contains(err.Error(), string(content[30:40]))) {
			t.Errorf("CA file %s: the error quotes the file: %v", name, err)
		}
	}

	// Junk, then two CAs: both vouch, a third does not.
	mixed := filepath.Join(dir, "mixed.pem")
	write(t, mixed, bytes.Join([][]byte{[]byte("junk line\n"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("x")}), a.PEM(), []byte("more junk\n"), b.PEM()}, nil))
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "c.key")
	write(t, certFile, client.CertPEM)
	write(t, keyFile, client.KeyPEM)
	c, err := Config(Files{CA: mixed, Cert: certFile, Key: keyFile})
	if err != nil {
		t.Fatalf("a CA file with junk and two CAs: %v", err)
	}
	for _, tc := range []struct {
		ca *testenv.CA
		ok bool
	}{{a, true}, {b, true}, {other, false}} {
		s := newO62Server(t, tc.ca.Leaf(t, "engine", nil, serverShape("127.0.0.1")).Pair(), nil, nil)
		err := o62Dial(c, s.addr, "127.0.0.1", 5*time.Second)
		if (err == nil) != tc.ok {
			t.Errorf("server certificate from %s: err %v, want accepted %v", tc.ca.Cert.Subject.CommonName, err, tc.ok)
		}
	}
}

// o62Rotating is a Config on a client pair in a directory the test rewrites, and a
// server of the same CA that reports which client certificate each handshake presented.
type o62Rotating struct {
	ca                *testenv.CA
	c                 *tls.Config
	s                 *o62Server
	certFile, keyFile string
	dir               string
}

func newO62Rotating(t *testing.T) *o62Rotating {
	t.Helper()
	ca := testenv.NewCA(t, "fleet CA")
	caFile, certFile, keyFile := o62Files(t, ca, ca.Leaf(t, "replica-old", nil, nil))
	c, err := Config(Files{CA: caFile, Cert: certFile, Key: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	s := newO62Server(t, ca.Leaf(t, "engine", nil, serverShape("127.0.0.1")).Pair(), ca, nil)
	r := &o62Rotating{ca: ca, c: c, s: s, certFile: certFile, keyFile: keyFile, dir: filepath.Dir(certFile)}
	r.presents(t, "replica-old", "before the attack", 5*time.Second)
	return r
}

// presents dials once and fails unless the server saw the client certificate want, the
// whole within bound.
func (r *o62Rotating) presents(t *testing.T, want, when string, bound time.Duration) {
	t.Helper()
	t0 := time.Now()
	if err := o62Dial(r.c, r.s.addr, "127.0.0.1", bound); err != nil {
		t.Fatalf("%s: the link failed after %v: %v", when, time.Since(t0).Round(time.Millisecond), err)
	}
	select {
	case got := <-r.s.results:
		if got.err != nil || got.cn != want {
			t.Fatalf("%s: the server saw %q (err %v), want %q", when, got.cn, got.err, want)
		}
	case <-time.After(bound):
		t.Fatalf("%s: no handshake at the server", when)
	}
}

// fifo replaces path by a named pipe with no writer; the cleanup unblocks any reader
// left waiting on it (it opens the pipe for writing from wherever it was moved to).
func o62FIFO(t *testing.T, path string) (aside func() string) {
	t.Helper()
	os.Remove(path)
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	where := path
	t.Cleanup(func() {
		// A reader blocked in open(2) waits for a writer: give it one, which closes at once.
		for range 3 {
			f, err := os.OpenFile(where, os.O_WRONLY|syscall.O_NONBLOCK, 0)
			if err != nil {
				break
			}
			f.Close()
			time.Sleep(50 * time.Millisecond)
		}
	})
	return func() string { // moves the pipe aside (its blocked readers still wait on it)
		where = path + ".fifo-aside"
		if err := os.Rename(path, where); err != nil {
			t.Fatal(err)
		}
		return where
	}
}

// TestOutside62KeyFileBecomesFIFO: whoever can write the certificate directory (a rotation
// agent, a sidecar) replaces the key file — or the certificate file — by a named pipe. The
// claim: a pair that does not load leaves the last good one in use. The next handshake
// must present the last good certificate within seconds, and once the file is put back the
// link must work again without a restart.
func TestOutside62KeyFileBecomesFIFO(t *testing.T) {
	for _, which := range []string{"key", "cert"} {
		t.Run(which, func(t *testing.T) {
			r := newO62Rotating(t)
			path := r.keyFile
			if which == "cert" {
				path = r.certFile
			}
			saved, _ := os.ReadFile(path)
			aside := o62FIFO(t, path)
			err := o62Dial(r.c, r.s.addr, "127.0.0.1", 3*time.Second)
			// Put the file back (the pipe moved aside, still without a writer): a restored
			// file must bring the link back.
			aside()
			write(t, path, saved)
			err2 := o62Dial(r.c, r.s.addr, "127.0.0.1", 3*time.Second)
			if err != nil || err2 != nil {
				t.Fatalf("%s file replaced by a FIFO: the next handshake: %v; after the file was restored: %v "+
					"(the reloader reads the files with os.ReadFile at every handshake, under its mutex: open(2) of a "+
					"FIFO blocks until a writer comes, and every later handshake waits on the mutex)", which, err, err2)
			}
		})
	}
}

// TestOutside62HugeKeyFile: the key file replaced by a large file (a sparse 64 MiB one here;
// a symlink to /dev/zero is the unbounded case, TestOutside62KeySymlinkDevZero). The last
// good pair must serve, and a handshake must not read the whole file into memory: every
// handshake re-reads both files.
func TestOutside62HugeKeyFile(t *testing.T) {
	r := newO62Rotating(t)
	const size = 64 << 20
	for _, p := range []string{r.keyFile, r.certFile} {
		os.Remove(p)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r.presents(t, "replica-old", "after the files became 64 MiB each", 10*time.Second)
	r.presents(t, "replica-old", "a second handshake", 10*time.Second)
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Fatalf("two handshakes with 64 MiB certificate and key files allocated %d MiB: the files are read whole, "+
			"at every handshake, without a bound (a key file that is a symlink to /dev/zero exhausts memory)", alloc>>20)
	}
}

// TestOutside62KeySymlinkDevZero: the key file replaced by a symlink to /dev/zero. Run in a
// child process that exits as soon as its heap passes 256 MiB.
func TestOutside62KeySymlinkDevZero(t *testing.T) {
	if os.Getenv("O62_DEVZERO_CHILD") == "1" {
		t.Skip("the child runs TestOutside62DevZeroChild")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestOutside62DevZeroChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "O62_DEVZERO_CHILD=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil || !strings.Contains(out.String(), "O62 handshake ok") {
			t.Fatalf("key file -> /dev/zero: the child (one handshake) failed: %v\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("key file -> /dev/zero: the child did not finish in 60 s\n%s", out.String())
	}
}

func TestOutside62DevZeroChild(t *testing.T) {
	if os.Getenv("O62_DEVZERO_CHILD") != "1" {
		t.Skip("run by TestOutside62KeySymlinkDevZero")
	}
	r := newO62Rotating(t)
	os.Remove(r.keyFile)
	if err := os.Symlink("/dev/zero", r.keyFile); err != nil {
		t.Fatal(err)
	}
	var peak atomic.Uint64
	go func() {
		var m runtime.MemStats
		for {
			time.Sleep(5 * time.Millisecond)
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peak.Load() {
				peak.Store(m.HeapAlloc)
			}
			if m.HeapAlloc > 256<<20 {
				fmt.Printf("O62 heap exceeded %d MiB during one handshake with key_file -> /dev/zero (the reloader reads it until EOF, which never comes)\n", m.HeapAlloc>>20)
				os.Exit(3)
			}
		}
	}()
	t0 := time.Now()
	if err := o62Dial(r.c, r.s.addr, "127.0.0.1", 20*time.Second); err != nil {
		fmt.Printf("O62 no handshake after %v with key_file -> /dev/zero (heap peak %d MiB, still reading): %v\n",
			time.Since(t0).Round(time.Millisecond), peak.Load()>>20, err)
		os.Exit(4)
	}
	fmt.Println("O62 handshake ok")
}

// TestOutside62KeyFileGoneOrDirectory: removed files and a directory in the key's place
// keep the last good pair (control for the FIFO and size attacks).
func TestOutside62KeyFileGoneOrDirectory(t *testing.T) {
	r := newO62Rotating(t)
	saved, _ := os.ReadFile(r.keyFile)
	os.Remove(r.keyFile)
	r.presents(t, "replica-old", "key file removed", 5*time.Second)
	os.Remove(r.certFile)
	r.presents(t, "replica-old", "both files removed", 5*time.Second)
	os.Mkdir(r.keyFile, 0o700)
	r.presents(t, "replica-old", "a directory in the key's place", 5*time.Second)
	os.Remove(r.keyFile)
	write(t, r.keyFile, bytes.Repeat([]byte("x"), len(saved)))
	r.presents(t, "replica-old", "a key file of junk", 5*time.Second)
}

// TestOutside62RotationEvenIfStampsLie: a rotation that keeps each file's size and
// modification time (cp -p, a restore, a clock step) must still be seen; so must one done
// in two steps (certificate first, key later) and one by symlink swap (Kubernetes' ..data).
func TestOutside62RotationEvenIfStampsLie(t *testing.T) {
	r := newO62Rotating(t)
	oldCert, _ := os.ReadFile(r.certFile)
	oldKey, _ := os.ReadFile(r.keyFile)
	st, _ := os.Stat(r.certFile)
	kst, _ := os.Stat(r.keyFile)
	var next testenv.Leaf
	for i := 0; ; i++ { // a certificate of exactly the old one's length (P-256 keys' PEM always is)
		next = r.ca.Leaf(t, "replica-new", nil, nil)
		if len(next.CertPEM) == len(oldCert) && len(next.KeyPEM) == len(oldKey) {
			break
		}
		if i > 200 {
			t.Fatal("no same-length certificate")
		}
	}
	// Two steps: the certificate, then the key; time stamps put back after each.
	write(t, r.certFile, next.CertPEM)
	os.Chtimes(r.certFile, st.ModTime(), st.ModTime())
	r.presents(t, "replica-old", "half rotated (certificate only)", 5*time.Second)
	write(t, r.keyFile, next.KeyPEM)
	os.Chtimes(r.keyFile, kst.ModTime(), kst.ModTime())
	r.presents(t, "replica-new", "rotated, same sizes and time stamps", 5*time.Second)

	// Symlink swap of a directory, as Kubernetes projects secrets.
	third := r.ca.Leaf(t, "replica-third", nil, nil)
	d1, d2 := filepath.Join(r.dir, "..v1"), filepath.Join(r.dir, "..v2")
	os.Mkdir(d1, 0o700)
	os.Mkdir(d2, 0o700)
	write(t, filepath.Join(d1, "client.pem"), next.CertPEM)
	write(t, filepath.Join(d1, "client.key"), next.KeyPEM)
	write(t, filepath.Join(d2, "client.pem"), third.CertPEM)
	write(t, filepath.Join(d2, "client.key"), third.KeyPEM)
	data := filepath.Join(r.dir, "..data")
	os.Symlink("..v1", data)
	for _, p := range []string{r.certFile, r.keyFile} {
		os.Remove(p)
		if err := os.Symlink(filepath.Join("..data", filepath.Base(p)), p); err != nil {
			t.Fatal(err)
		}
	}
	r.presents(t, "replica-new", "files now symlinks into ..data", 5*time.Second)
	tmp := filepath.Join(r.dir, "..data_tmp")
	os.Symlink("..v2", tmp)
	if err := os.Rename(tmp, data); err != nil {
		t.Fatal(err)
	}
	r.presents(t, "replica-third", "..data swapped to the next version", 5*time.Second)
}

// TestOutside62StartWithFIFO: at start, a CA, certificate or key file that is a named pipe
// (or a symlink to one) must be an error within seconds, not a replica that never starts
// and never says why.
func TestOutside62StartWithFIFO(t *testing.T) {
	for _, which := range []string{"ca", "cert", "key"} {
		t.Run(which, func(t *testing.T) {
			ca := testenv.NewCA(t, "fleet CA")
			caFile, certFile, keyFile := o62Files(t, ca, ca.Leaf(t, "replica-1", nil, nil))
			p := map[string]string{"ca": caFile, "cert": certFile, "key": keyFile}[which]
			o62FIFO(t, p)
			done := make(chan error, 1)
			go func() {
				_, err := Config(Files{CA: caFile, Cert: certFile, Key: keyFile})
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Fatalf("%s file a FIFO: Config succeeded", which)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s file a FIFO: Config (the replica's start) still blocked after 5 s, with no error "+
					"(os.ReadFile on a FIFO without a writer blocks in open(2))", which)
			}
		})
	}
}

// TestRotationToInvalidPairKeepsTheValidOne (round 62's observation, fixed): a rotation
// to a pair that has expired, or is not valid yet, does not replace the valid pair in use
// (the engines would refuse it); and such a pair is refused at start.
func TestRotationToInvalidPairKeepsTheValidOne(t *testing.T) {
	for name, shape := range map[string]func(*x509.Certificate){
		"expired": func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)
		},
		"not yet valid": func(c *x509.Certificate) { c.NotBefore = time.Now().Add(time.Hour) },
	} {
		t.Run(name, func(t *testing.T) {
			r := newO62Rotating(t)
			bad := r.ca.Leaf(t, "replica-"+name, nil, shape)
			write(t, r.certFile, bad.CertPEM)
			write(t, r.keyFile, bad.KeyPEM)
			r.presents(t, "replica-old", "after a rotation to a pair that is not valid now", 5*time.Second)
			if _, err := Config(Files{Cert: r.certFile, Key: r.keyFile}); err == nil || !strings.Contains(err.Error(), "not now") {
				t.Fatalf("a pair that is not valid now, at start: err %v", err)
			}
		})
	}
}
