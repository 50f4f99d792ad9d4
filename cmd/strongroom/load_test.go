package main

import (
	"bytes"
	"context"
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

// loadGen sends chat requests to one gateway from conns clients until stopped, counting the
// answers by status; 200 is an acknowledged (complete) answer.
type loadGen struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	acked  atomic.Int64
	mu     sync.Mutex
	other  map[string]int // status or error → count
}

var (
	loadsMu sync.Mutex
	loads   = map[*testscript.TestScript]map[string]*loadGen{}
)

func (l *loadGen) run(ctx context.Context, key, model, base string, conns int) {
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: conns}}
	for c := range conns {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				body := fmt.Sprintf(`{"model":%q,"max_tokens":4,"messages":[{"role":"user","content":"c%d-%d"}]}`, model, c, i)
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+key)
				resp, err := client.Do(req)
				what := ""
				if err != nil {
					what = "error"
				} else {
					// An answer is acknowledged only when its whole body arrived.
					b, rerr := io.ReadAll(resp.Body)
					resp.Body.Close()
					switch {
					case rerr != nil:
						what = "truncated"
					case resp.StatusCode == 200 && bytes.Contains(b, []byte(`"choices"`)):
						l.acked.Add(1)
					default:
						what = strconv.Itoa(resp.StatusCode)
					}
				}
				if what != "" && ctx.Err() == nil {
					l.mu.Lock()
					l.other[what]++
					l.mu.Unlock()
					time.Sleep(5 * time.Millisecond) // a refused or dead gateway is not spun on
				}
			}
		}()
	}
}

func init() {
	// Background load for crash and fleet tests.
	// load start NAME KEYFILE MODEL URL CONNS: CONNS clients send chat requests to the
	// gateway at URL until stopped, each counting the answers it got in full.
	// load wait NAME N: until NAME has N acknowledged answers (+N: N more than now).
	// load stop NAME: stop; $ACKED_NAME is the number of acknowledged answers.
	scriptCmds["load"] = func(ts *testscript.TestScript, neg bool, args []string) {
		loadsMu.Lock()
		if loads[ts] == nil {
			loads[ts] = map[string]*loadGen{}
		}
		l := loads[ts][args[1]]
		loadsMu.Unlock()
		switch args[0] {
		case "start":
			key, err := os.ReadFile(ts.MkAbs(args[2]))
			ts.Check(err)
			ctx, cancel := context.WithCancel(context.Background())
			l = &loadGen{cancel: cancel, other: map[string]int{}}
			ts.Defer(func() { cancel(); l.wg.Wait() })
			loadsMu.Lock()
			loads[ts][args[1]] = l
			loadsMu.Unlock()
			conns, _ := strconv.Atoi(args[5])
			l.run(ctx, strings.TrimSpace(string(key)), args[3], args[4], conns)
		case "wait":
			n, _ := strconv.ParseInt(strings.TrimPrefix(args[2], "+"), 10, 64)
			target := n
			if strings.HasPrefix(args[2], "+") {
				target += l.acked.Load()
			}
			for deadline := time.Now().Add(readyLimit); l.acked.Load() < target; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					ts.Fatalf("load %s: %d acknowledged answers, waited for %d", args[1], l.acked.Load(), target)
				}
			}
		case "stop":
			l.cancel()
			l.wg.Wait()
			ts.Setenv("ACKED_"+args[1], strconv.FormatInt(l.acked.Load(), 10))
			l.mu.Lock()
			fmt.Fprintf(ts.Stdout(), "load %s: %d acknowledged, others %v\n", args[1], l.acked.Load(), l.other)
			l.mu.Unlock()
		default:
			ts.Fatalf("load start|wait|stop")
		}
	}
	// atleast A B: A ≥ B, each a number or a file holding one.
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
