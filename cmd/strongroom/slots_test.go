package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

// holdUpstream is an engine that holds its first chat requests without an answer until the
// script ends, and answers the rest with a small chat completion.
type holdUpstream struct {
	hold, held atomic.Int64
	release    chan struct{}
}

var holdUpstreams sync.Map // address → *holdUpstream

// chatBody is the chat request the scripts' load commands send.
const chatBody = `{"model":"demo","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`

func init() {
	// holdupstream ADDR N: an engine on ADDR that holds its first N chat requests
	// unanswered until the script ends, and answers every later one (and any other path).
	scriptCmds["holdupstream"] = func(ts *testscript.TestScript, neg bool, args []string) {
		u := &holdUpstream{release: make(chan struct{})}
		n, _ := strconv.Atoi(args[1])
		u.hold.Store(int64(n))
		ln, err := net.Listen("tcp", args[0])
		ts.Check(err)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			if !strings.HasSuffix(r.URL.Path, "/chat/completions") { // the gateway's own probes
				w.Write([]byte(`{"object":"list","data":[{"id":"demo","object":"model"}]}`))
				return
			}
			if u.hold.Add(-1) >= 0 {
				u.held.Add(1)
				select {
				case <-u.release:
				case <-r.Context().Done():
				}
				return
			}
			w.Write([]byte(`{"id":"c","object":"chat.completion","created":0,"model":"demo","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
		})}
		go srv.Serve(ln)
		holdUpstreams.Store(args[0], u)
		ts.Defer(func() {
			close(u.release)
			srv.Close()
			holdUpstreams.Delete(args[0])
		})
	}
	// upstreamheld ADDR N: wait until the holdupstream on ADDR holds N requests.
	scriptCmds["upstreamheld"] = func(ts *testscript.TestScript, neg bool, args []string) {
		v, ok := holdUpstreams.Load(args[0])
		if !ok {
			ts.Fatalf("no holdupstream on %s", args[0])
		}
		n, _ := strconv.ParseInt(args[1], 10, 64)
		for deadline := time.Now().Add(readyLimit); v.(*holdUpstream).held.Load() < n; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				ts.Fatalf("the engine on %s holds %d requests after %s, want %d", args[0], v.(*holdUpstream).held.Load(), readyLimit, n)
			}
		}
	}
	// holdreq KEYFILE URL: a chat request to the gateway at URL, left in flight (its answer
	// never awaited; it ends with the script).
	scriptCmds["holdreq"] = func(ts *testscript.TestScript, neg bool, args []string) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			postChat(ctx, ts, args[1], args[0], chatBody)
		}()
		ts.Defer(func() { cancel(); <-done })
	}

}

// TestScriptCmdNamesUnique: no script command is defined twice. The commands are set in
// scriptCmds's literal and by several files' init functions, so a second definition
// silently replaces the first — the scripts that used it then run another command (a
// "waitstatus" of a different form did, and logdb_down failed).
func TestScriptCmdNamesUnique(t *testing.T) {
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	set := regexp.MustCompile(`scriptCmds\["([a-z0-9]+)"\]\s*=`)
	literal := regexp.MustCompile(`(?m)^\t"([a-z0-9]+)": func\(ts \*testscript\.TestScript`)
	where := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, re := range []*regexp.Regexp{set, literal} {
			for _, m := range re.FindAllSubmatch(b, -1) {
				name := string(m[1])
				if prev, dup := where[name]; dup {
					t.Errorf("script command %q defined in %s and again in %s", name, prev, f)
				}
				where[name] = f
			}
		}
	}
	if len(where) < len(scriptCmds) {
		t.Fatalf("found %d command definitions, but scriptCmds has %d: the patterns miss some", len(where), len(scriptCmds))
	}
}
