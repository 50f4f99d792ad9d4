package gateway

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/rawsock"
)

// The engine client's connections read and write with raw system calls (package rawsock),
// and the pool's peek at an idle one still tells open from closed through them.
func TestEngineConnsRaw(t *testing.T) {
	e := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte(`{"ok":true}`))
	}))
	defer e.Close()
	cl := newEngineClient(time.Minute, http.DefaultClient)
	for i := range 3 {
		code, body, err := engineDo(t, cl, context.Background(), e.URL, `{"n":1}`)
		if err != nil || code != 200 || body != `{"ok":true}` {
			t.Fatalf("request %d: %d %q %v", i, code, body, err)
		}
	}
	addr := strings.TrimPrefix(e.URL, "http://")
	ec := cl.a3Pooled(addr)
	if ec == nil {
		t.Fatal("no pooled engine connection after three requests on one")
	}
	if _, ok := ec.c.(*rawsock.Conn); !ok {
		t.Fatalf("engine connection is %T, not raw", ec.c)
	}
	if !ec.idleOpen() {
		t.Fatal("an idle open engine connection peeked as closed")
	}
	e.CloseClientConnections()
	deadline := time.Now().Add(10 * time.Second)
	for ec.idleOpen() {
		if time.Now().After(deadline) {
			t.Fatal("a connection the engine closed still peeks as open")
		}
		time.Sleep(time.Millisecond)
	}
}

// An https engine's connection (engineTransport, under TLS) is raw underneath, and an
// answer comes through it whole.
func TestEngineTLSConnsRaw(t *testing.T) {
	big := strings.Repeat("a", 3<<20) // past the sockets' buffers: writes and reads wait
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, big)
	}))
	defer srv.Close()
	tr := engineTransport(time.Minute)
	tr.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	defer tr.CloseIdleConnections()
	var under []net.Conn
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if tc, ok := info.Conn.(*tls.Conn); ok {
			under = append(under, tc.NetConn())
		}
	}}
	for i := range 2 {
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodPost, srv.URL, strings.NewReader(big))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != big {
			t.Fatalf("request %d: %d bytes, %v", i, len(b), err)
		}
	}
	if len(under) != 2 {
		t.Fatalf("saw %d TLS connections' sockets", len(under))
	}
	for _, c := range under {
		if _, ok := c.(*rawsock.Conn); !ok {
			t.Fatalf("under TLS the engine connection is %T, not raw", c)
		}
	}
}
