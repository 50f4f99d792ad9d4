package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pquerna/otp/totp"
	"github.com/rogpeppe/go-internal/testscript"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/detect"
	"github.com/strongroom/strongroom/internal/store"
)

func init() {
	// canarymodel DIR: a model directory whose weights hold a random canary; sets $CANARY
	// and $WEIGHTS_SHA (the weights file's SHA-256).
	scriptCmds["canarymodel"] = func(ts *testscript.TestScript, neg bool, args []string) {
		dir := ts.MkAbs(args[0])
		ts.Check(os.MkdirAll(dir, 0o755))
		c := make([]byte, 16)
		rand.Read(c)
		canary := "CANARY-" + hex.EncodeToString(c)
		w := make([]byte, 3<<20)
		rand.Read(w)
		copy(w[1<<20+12345:], canary)
		ts.Check(os.WriteFile(filepath.Join(dir, "weights.safetensors"), w, 0o644))
		ts.Check(os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"model_type":"canary"}`), 0o644))
		sum := sha256.Sum256(w)
		ts.Setenv("CANARY", canary)
		ts.Setenv("WEIGHTS_SHA", hex.EncodeToString(sum[:]))
	}
	// setenvfile NAME FILE: $NAME = the file's first line.
	scriptCmds["setenvfile"] = func(ts *testscript.TestScript, neg bool, args []string) {
		line, _, _ := strings.Cut(ts.ReadFile(args[1]), "\n")
		ts.Setenv(args[0], strings.TrimSpace(line))
	}
	// pendingapproval NAME: wait for a pending approval request in $STRONGROOM_DATA; $NAME = its id.
	scriptCmds["pendingapproval"] = func(ts *testscript.TestScript, neg bool, args []string) {
		st, err := store.OpenSQLite(context.Background(), filepath.Join(ts.Getenv("STRONGROOM_DATA"), "strongroom.db"))
		ts.Check(err)
		defer st.Close()
		for deadline := time.Now().Add(readyLimit); time.Now().Before(deadline); {
			rs, err := st.ListApprovals(context.Background(), store.StatePending)
			ts.Check(err)
			if len(rs) > 0 {
				ts.Setenv(args[0], rs[len(rs)-1].ID)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		ts.Fatalf("no pending approval request")
	}
	// totpcode FILE NAME: $NAME = the current code of the otpauth:// URL in FILE.
	scriptCmds["totpcode"] = func(ts *testscript.TestScript, neg bool, args []string) {
		u, err := url.Parse(strings.TrimSpace(ts.ReadFile(args[0])))
		ts.Check(err)
		code, err := totp.GenerateCode(u.Query().Get("secret"), time.Now())
		ts.Check(err)
		ts.Setenv(args[1], code)
	}
	// waitfile FILE: wait until FILE exists and is not empty.
	scriptCmds["waitfile"] = func(ts *testscript.TestScript, neg bool, args []string) {
		for deadline := time.Now().Add(readyLimit); time.Now().Before(deadline); {
			if fi, err := os.Stat(ts.MkAbs(args[0])); err == nil && fi.Size() > 0 {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		ts.Fatalf("%s never appeared", args[0])
	}
	// heldcanary: some process holds $CANARY in an open memfd (negated: none does — every
	// process's fds are searched).
	scriptCmds["heldcanary"] = func(ts *testscript.TestScript, neg bool, args []string) {
		canary := []byte(ts.Getenv("CANARY"))
		procs, err := os.ReadDir("/proc")
		ts.Check(err)
		var held []string
		for _, p := range procs {
			if _, err := strconv.Atoi(p.Name()); err != nil {
				continue
			}
			fds, _ := os.ReadDir("/proc/" + p.Name() + "/fd")
			for _, fd := range fds {
				f := "/proc/" + p.Name() + "/fd/" + fd.Name()
				if t, err := os.Readlink(f); err != nil || !strings.HasPrefix(t, "/memfd:") {
					continue
				}
				if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, canary) {
					held = append(held, "pid "+p.Name()+" fd "+fd.Name())
				}
			}
		}
		if neg && len(held) > 0 {
			ts.Fatalf("the canary is held: %s", strings.Join(held, ", "))
		}
		if !neg && len(held) == 0 {
			ts.Fatalf("no process holds the canary")
		}
	}
	// waitnolease MODEL: wait (up to 30 s) until no lease on MODEL is live in $STRONGROOM_DATA.
	scriptCmds["waitnolease"] = func(ts *testscript.TestScript, neg bool, args []string) {
		st, err := store.OpenSQLite(context.Background(), filepath.Join(ts.Getenv("STRONGROOM_DATA"), "strongroom.db"))
		ts.Check(err)
		defer st.Close()
		for deadline := time.Now().Add(readyLimit); time.Now().Before(deadline); {
			ls, err := st.ListLeases(context.Background(), store.LeaseQuery{Model: args[0], LiveAt: time.Now()})
			ts.Check(err)
			if len(ls) == 0 {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		ts.Fatalf("a lease on %s is still live", args[0])
	}
	// dead PIDFILE: the process whose pid is in PIDFILE is gone (within 5 seconds).
	scriptCmds["dead"] = func(ts *testscript.TestScript, neg bool, args []string) {
		pid, err := strconv.Atoi(strings.TrimSpace(ts.ReadFile(args[0])))
		ts.Check(err)
		for range 50 {
			if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		ts.Fatalf("process %d is still alive", pid)
	}
}

func init() {
	// detectconfig DATA UPSTREAM: route model demo to UPSTREAM and set a logit-harvest
	// threshold of 20 biased tokens (the script imports demo and sets its record).
	scriptCmds["detectconfig"] = func(ts *testscript.TestScript, neg bool, args []string) {
		path := filepath.Join(ts.MkAbs(args[0]), "config.json")
		c, err := config.ReadRaw(path)
		ts.Check(err)
		c.Gateway.Routes = []config.Route{{Model: "demo", Upstreams: []string{args[1]}}}
		dc, err := detect.ParseConfig(c.Detect)
		ts.Check(err)
		dc.HarvestTokens = 20
		c.Detect = dc.JSON()
		if len(args) > 2 {
			// Replicas share detection; the prefix is this run's, so that history another
			// run left in the same Redis is not replayed into this one.
			c.Gateway.RedisURL = args[2]
			c.Gateway.RedisPrefix = fmt.Sprintf("test:%x:", sha256.Sum256([]byte(ts.Getenv("WORK"))))[:24] + ":"
		}
		ts.Check(config.Write(path, c))
	}
	// harvest KEYFILE URL[,URL...] N [PAUSE]: N one-token requests, each biasing 5 new token
	// ids and reading top-5 logprobs (a logit-harvesting sweep), spread round-robin over the
	// gateways, PAUSE apart; prints how many were answered with logprobs.
	scriptCmds["harvest"] = func(ts *testscript.TestScript, neg bool, args []string) {
		key, err := os.ReadFile(ts.MkAbs(args[0]))
		ts.Check(err)
		urls := strings.Split(args[1], ",")
		n, _ := strconv.Atoi(args[2])
		var pause time.Duration
		if len(args) > 3 {
			pause, err = time.ParseDuration(args[3])
			ts.Check(err)
		}
		withLogprobs := 0
		for i := range n {
			time.Sleep(pause)
			bias := map[string]int{}
			for k := range 5 {
				bias[strconv.Itoa((i*5+k)%256)] = 100
			}
			b, _ := json.Marshal(map[string]any{"model": "demo", "max_tokens": 1, "logprobs": true, "top_logprobs": 5, "logit_bias": bias,
				"messages": []any{map[string]string{"role": "user", "content": "the same prompt"}}})
			req, _ := http.NewRequest(http.MethodPost, urls[i%len(urls)]+"/v1/chat/completions", bytes.NewReader(b))
			req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
			resp, err := http.DefaultClient.Do(req)
			ts.Check(err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && bytes.Contains(body, []byte(`"top_logprobs":[{`)) {
				withLogprobs++
			}
		}
		fmt.Fprintf(ts.Stdout(), "answered with logprobs: %d of %d\n", withLogprobs, n)
	}
}

func init() {
	// wmdetect URL KEYFILE TEXTFILE: POST the text to the control API's watermark endpoint
	// with --all-tenants; prints the status and the body.
	scriptCmds["wmdetect"] = func(ts *testscript.TestScript, neg bool, args []string) {
		key := strings.TrimSpace(ts.ReadFile(args[1]))
		body, _ := json.Marshal(map[string]any{"text": ts.ReadFile(args[2]), "all_tenants": true, "model": "strongroom-demo:2.0.0"})
		req, _ := http.NewRequest(http.MethodPost, args[0]+"/v1/watermark/detect", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		ts.Check(err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		fmt.Fprintf(ts.Stdout(), "status %d\n%s\n", resp.StatusCode, b)
	}
}

func init() {
	// hostileconfig DATA UPSTREAM: routes echo-public and echo-restricted to UPSTREAM (the
	// script imports them); listeners close idle and silent connections after 1 s.
	scriptCmds["hostileconfig"] = func(ts *testscript.TestScript, neg bool, args []string) {
		path := filepath.Join(ts.MkAbs(args[0]), "config.json")
		c, err := config.ReadRaw(path)
		ts.Check(err)
		c.Gateway.Routes = []config.Route{{Model: "echo-public", Upstreams: []string{args[1]}},
			{Model: "echo-restricted", Upstreams: []string{args[1]}}}
		c.Gateway.Connections = config.Connections{HeaderTimeout: config.Duration{Duration: time.Second}, IdleTimeout: config.Duration{Duration: time.Second}}
		ts.Check(config.Write(path, c))
	}
	// rawpost URL KEYFILE|- BODY STATUS: POST BODY as it is to URL/v1/chat/completions; the
	// status must be STATUS; the response body goes to stdout.
	scriptCmds["rawpost"] = func(ts *testscript.TestScript, neg bool, args []string) {
		status, b := rawPost(ts, args)
		ts.Stdout().Write(b)
		if want, _ := strconv.Atoi(args[3]); status != want {
			ts.Fatalf("status %d, want %d: %s", status, want, b)
		}
	}
	// rawpostuntil URL KEYFILE BODY STATUS [TEXT]: rawpost until the status is the wanted
	// one, and the answer holds TEXT when given (up to readyLimit), for changes other
	// processes make that a gateway applies within its watch interval — one 503 can turn
	// into another as the gateway notices a service come back.
	scriptCmds["rawpostuntil"] = func(ts *testscript.TestScript, neg bool, args []string) {
		want, _ := strconv.Atoi(args[3])
		deadline := time.Now().Add(readyLimit)
		for {
			status, b := rawPost(ts, args)
			if status == want && (len(args) < 5 || bytes.Contains(b, []byte(args[4]))) {
				ts.Stdout().Write(b)
				return
			}
			if time.Now().After(deadline) {
				ts.Fatalf("status %d after %s, want %d: %s", status, readyLimit, want, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// idleclosed ADDR: a connection that sends nothing is closed by the server (within 20 s).
	scriptCmds["idleclosed"] = func(ts *testscript.TestScript, neg bool, args []string) {
		c, err := net.Dial("tcp", args[0])
		ts.Check(err)
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err = io.Copy(io.Discard, c)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			ts.Fatalf("silent connection to %s still open after 20 s", args[0])
		}
	}
}

// rawPost posts body args[2] to args[0]'s chat completions with the key in file args[1]
// ("-": none).
func rawPost(ts *testscript.TestScript, args []string) (int, []byte) {
	status, b, err := postChat(context.Background(), ts, args[0], args[1], args[2])
	ts.Check(err)
	return status, b
}

// postChat posts body to the chat endpoint of the gateway at base, with the API key in
// keyFile ("-": none), on a fresh connection (the server closes idle ones after 1 s here);
// ctx may end it unanswered.
func postChat(ctx context.Context, ts *testscript.TestScript, base, keyFile, body string) (int, []byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
	req.Close = true
	if keyFile != "-" {
		key, err := os.ReadFile(ts.MkAbs(keyFile))
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, nil
}
