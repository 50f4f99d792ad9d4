package gateway

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
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
