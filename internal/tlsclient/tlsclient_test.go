package tlsclient

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"strings"
	"testing"

	"github.com/strongroom/strongroom/internal/testenv"
)

// server is a TLS listener on loopback with a certificate from ca that requires a client
// certificate from clientCA; each connection's client common name is sent on names.
func server(t *testing.T, ca, clientCA *testenv.CA) (addr string, names <-chan string) {
	t.Helper()
	certFile, keyFile := ca.Issue(t, "server", "server", "127.0.0.1")
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(clientCA.CAFile)
	pool.AppendCertsFromPEM(pem)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				ch <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
				tc.Write([]byte("ok"))
			}
			c.Close()
		}
	}()
	return ln.Addr().String(), ch
}

// dial connects with c and reads the server's "ok" (TLS 1.3 reports a refused client
// certificate only at the first read).
func dial(c *tls.Config, addr string) error {
	c = c.Clone()
	c.ServerName = "127.0.0.1"
	conn, err := tls.Dial("tcp", addr, c)
	if err != nil {
		return err
	}
	defer conn.Close()
	var b [2]byte
	_, err = conn.Read(b[:])
	return err
}

// presents connects with c and fails unless the server saw the client certificate of
// common name want.
func presents(t *testing.T, c *tls.Config, addr string, names <-chan string, want, when string) {
	t.Helper()
	if err := dial(c, addr); err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	if got := <-names; got != want {
		t.Fatalf("%s: the server saw %q, want %q", when, got, want)
	}
}

func TestClientCertificateAndPrivateCA(t *testing.T) {
	ca := testenv.NewCA(t, "fleet CA")
	addr, names := server(t, ca, ca)
	cert, key := ca.Issue(t, "client", "replica-1")

	c, err := Config(Files{CA: ca.CAFile, Cert: cert, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	presents(t, c, addr, names, "replica-1", "with the CA and a client certificate")

	// No client certificate: the server refuses.
	noCert, err := Config(Files{CA: ca.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	if err := dial(noCert, addr); err == nil {
		t.Fatal("a server that requires a client certificate accepted none")
	}

	// Another CA's file: the server's certificate is not trusted (only the file's CA is).
	other := testenv.NewCA(t, "other CA")
	wrong, err := Config(Files{CA: other.CAFile, Cert: cert, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if err := dial(wrong, addr); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("server certificate from an untrusted CA: err %v", err)
	}
}

func TestClientCertificateRotates(t *testing.T) {
	ca := testenv.NewCA(t, "fleet CA")
	addr, names := server(t, ca, ca)
	cert, key := ca.Issue(t, "client", "replica-old")
	c, err := Config(Files{CA: ca.CAFile, Cert: cert, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	presents(t, c, addr, names, "replica-old", "first")

	// A rotation half done: the new certificate is in place, its key not yet. The old pair
	// (still valid) serves; nothing fails.
	oldKey, _ := os.ReadFile(key)
	ca.Issue(t, "client", "replica-new") // rewrites client.pem and client.key
	newKey, _ := os.ReadFile(key)
	if err := os.WriteFile(key, oldKey, 0o600); err != nil {
		t.Fatal(err)
	}
	presents(t, c, addr, names, "replica-old", "mid-rotation (the last good certificate)")

	// The rotation done: the next handshake presents the new certificate, no restart.
	if err := os.WriteFile(key, newKey, 0o600); err != nil {
		t.Fatal(err)
	}
	presents(t, c, addr, names, "replica-new", "after the rotation")
}

func TestConfigRefusesBadFiles(t *testing.T) {
	ca := testenv.NewCA(t, "fleet CA")
	cert, key := ca.Issue(t, "client", "replica-1")
	_, otherKey := ca.Issue(t, "other", "replica-2")
	notPEM := ca.CAFile + ".txt"
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	for name, f := range map[string]Files{
		"cert without key":  {CA: ca.CAFile, Cert: cert},
		"key without cert":  {CA: ca.CAFile, Key: key},
		"mismatched pair":   {CA: ca.CAFile, Cert: cert, Key: otherKey},
		"CA file missing":   {CA: ca.CAFile + ".gone"},
		"CA file not PEM":   {CA: notPEM},
		"cert file missing": {Cert: cert + ".gone", Key: key},
	} {
		if _, err := Config(f); err == nil {
			t.Errorf("%s: no error", name)
		} else if strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("%s: the error quotes the key: %v", name, err)
		}
	}
}
