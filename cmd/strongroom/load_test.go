package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

// background load for crash tests: loadstart starts it, loadwait waits for acknowledged
// answers, loadstop stops it and writes how many answers were acknowledged (200 with the
// whole body).
type load struct {
	acked atomic.Int64
	stop  chan struct{}
	wg    sync.WaitGroup
}

var (
	loadsMu sync.Mutex
	loads   = map[*testscript.TestScript]*load{}
)

func init() {
	// loadstart KEYFILE URL CONNS: CONNS clients send chat requests for model demo to URL
	// until loadstop, each counting the answers it got in full.
	scriptCmds["loadstart"] = func(ts *testscript.TestScript, neg bool, args []string) {
		key, err := os.ReadFile(ts.MkAbs(args[0]))
		ts.Check(err)
		conns, _ := strconv.Atoi(args[2])
		l := &load{stop: make(chan struct{})}
		client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: conns}}
		for c := range conns {
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				for i := 0; ; i++ {
					select {
					case <-l.stop:
						return
					default:
					}
					body := fmt.Sprintf(`{"model":"demo","max_tokens":4,"messages":[{"role":"user","content":"c%d-%d"}]}`, c, i)
					req, _ := http.NewRequest(http.MethodPost, args[1]+"/v1/chat/completions", strings.NewReader(body))
					req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
					resp, err := client.Do(req)
					if err != nil {
						time.Sleep(10 * time.Millisecond) // the gateway is gone: keep trying until loadstop
						continue
					}
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode == 200 && bytes.Contains(b, []byte(`"choices"`)) {
						l.acked.Add(1)
					}
				}
			}()
		}
		loadsMu.Lock()
		loads[ts] = l
		loadsMu.Unlock()
	}
	// loadwait N: wait until the load has N acknowledged answers.
	scriptCmds["loadwait"] = func(ts *testscript.TestScript, neg bool, args []string) {
		n, _ := strconv.ParseInt(args[0], 10, 64)
		loadsMu.Lock()
		l := loads[ts]
		loadsMu.Unlock()
		for deadline := time.Now().Add(readyLimit); l.acked.Load() < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				ts.Fatalf("only %d answers acknowledged", l.acked.Load())
			}
		}
	}
	// loadstop FILE: stop the load; FILE gets the number of acknowledged answers.
	scriptCmds["loadstop"] = func(ts *testscript.TestScript, neg bool, args []string) {
		loadsMu.Lock()
		l := loads[ts]
		delete(loads, ts)
		loadsMu.Unlock()
		close(l.stop)
		l.wg.Wait()
		ts.Check(os.WriteFile(ts.MkAbs(args[0]), []byte(strconv.FormatInt(l.acked.Load(), 10)+"\n"), 0o644))
	}
	// atleast FILE N: FILE holds a number ≥ the number in file N (or N itself).
	scriptCmds["atleast"] = func(ts *testscript.TestScript, neg bool, args []string) {
		read := func(s string) int64 {
			if b, err := os.ReadFile(ts.MkAbs(s)); err == nil {
				s = strings.TrimSpace(string(b))
			}
			n, err := strconv.ParseInt(s, 10, 64)
			ts.Check(err)
			return n
		}
		if a, b := read(args[0]), read(args[1]); a < b {
			ts.Fatalf("%s = %d < %s = %d", args[0], a, args[1], b)
		}
	}
}
