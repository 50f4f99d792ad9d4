package main

import (
	"bytes"
	"context"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/rogpeppe/go-internal/testscript"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/testenv"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"strongroom": func() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) },
	})
}

// TestScripts runs the CLI end to end from testdata/*.txt.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{Dir: "testdata", Cmds: scriptCmds})
}

var scriptCmds = map[string]func(ts *testscript.TestScript, neg bool, args []string){
	// flipbyte DIR N OFFSET: flip one byte of the sealed blob N.srs under DIR.
	"flipbyte": func(ts *testscript.TestScript, neg bool, args []string) {
		if len(args) != 3 {
			ts.Fatalf("usage: flipbyte DIR N OFFSET")
		}
		matches, _ := filepath.Glob(filepath.Join(ts.MkAbs(args[0]), "*", args[1]+".srs"))
		if len(matches) != 1 {
			ts.Fatalf("want one blob %s.srs, found %d", args[1], len(matches))
		}
		off, _ := strconv.Atoi(args[2])
		b, err := os.ReadFile(matches[0])
		ts.Check(err)
		b[off] ^= 0x01
		ts.Check(os.WriteFile(matches[0], b, 0o600))
	},
	// chmodkeys MODE: chmod every local key file of $STRONGROOM_DATA.
	"chmodkeys": func(ts *testscript.TestScript, neg bool, args []string) {
		mode, _ := strconv.ParseUint(args[0], 8, 32)
		keys, _ := filepath.Glob(filepath.Join(ts.Getenv("STRONGROOM_DATA"), "keys", "*.kek"))
		if len(keys) == 0 {
			ts.Fatalf("no key files")
		}
		for _, k := range keys {
			ts.Check(os.Chmod(k, os.FileMode(mode)))
		}
	},
	// swapkek DATA OTHER: put OTHER's local key file in place of DATA's.
	"swapkek": func(ts *testscript.TestScript, neg bool, args []string) {
		ours, _ := filepath.Glob(filepath.Join(ts.MkAbs(args[0]), "keys", "*.kek"))
		theirs, _ := filepath.Glob(filepath.Join(ts.MkAbs(args[1]), "keys", "*.kek"))
		if len(ours) != 1 || len(theirs) != 1 {
			ts.Fatalf("want one key file in each data directory")
		}
		b, err := os.ReadFile(theirs[0])
		ts.Check(err)
		ts.Check(os.WriteFile(ours[0], b, 0o600))
	},
	// waitbig DIR BYTES: wait (up to 60s) until a file under DIR is at least BYTES long.
	"waitbig": func(ts *testscript.TestScript, neg bool, args []string) {
		want, _ := strconv.ParseInt(args[1], 10, 64)
		for range 12000 {
			found := false
			filepath.WalkDir(ts.MkAbs(args[0]), func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					if fi, err := d.Info(); err == nil && fi.Size() >= want {
						found = true
					}
				}
				return nil
			})
			if found {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		ts.Fatalf("no file of %d bytes under %s", want, args[0])
	},
	// waithttp URL: wait until GET URL answers 200 (the limit, readyLimit, is generous: a
	// loaded 2-core machine running race-enabled binaries starts slowly).
	"waithttp": func(ts *testscript.TestScript, neg bool, args []string) {
		for deadline := time.Now().Add(readyLimit); time.Now().Before(deadline); {
			if resp, err := http.Get(args[0]); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		ts.Fatalf("%s never answered 200", args[0])
	},
	// editentry DIR OLD NEW: replace text in the first entry bundle of the log in DIR.
	"editentry": func(ts *testscript.TestScript, neg bool, args []string) {
		matches, _ := filepath.Glob(filepath.Join(ts.MkAbs(args[0]), "tile", "entries", "000*"))
		if len(matches) == 0 {
			ts.Fatalf("no entry bundle under %s", args[0])
		}
		p := matches[0]
		if st, _ := os.Stat(p); st.IsDir() {
			inner, _ := filepath.Glob(filepath.Join(p, "*"))
			p = inner[len(inner)-1]
		}
		b, err := os.ReadFile(p)
		ts.Check(err)
		if !bytes.Contains(b, []byte(args[1])) {
			ts.Fatalf("%s does not contain %q", p, args[1])
		}
		ts.Check(os.WriteFile(p, bytes.Replace(b, []byte(args[1]), []byte(args[2]), 1), 0o644))
	},
	// waitport ADDR: wait (up to readyLimit) until a TCP connection to ADDR succeeds.
	"waitport": func(ts *testscript.TestScript, neg bool, args []string) {
		for deadline := time.Now().Add(readyLimit); time.Now().Before(deadline); {
			if c, err := net.Dial("tcp", args[0]); err == nil {
				c.Close()
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		ts.Fatalf("nothing listens on %s", args[0])
	},
	// witnessconfig DATA QUORUM URL VKEYFILE [URL VKEYFILE]... [stall DURATION]: set the
	// log's witness policy (and audit.checkpoint_stall).
	"witnessconfig": func(ts *testscript.TestScript, neg bool, args []string) {
		path := filepath.Join(ts.MkAbs(args[0]), "config.json")
		c, err := config.ReadRaw(path)
		ts.Check(err)
		if n := len(args); n >= 2 && args[n-2] == "stall" {
			d, err := time.ParseDuration(args[n-1])
			ts.Check(err)
			c.Audit.CheckpointStall.Duration = d
			args = args[:n-2]
		}
		c.Audit.Quorum, _ = strconv.Atoi(args[1])
		c.Audit.Witnesses = nil
		for i := 2; i+1 < len(args); i += 2 {
			vk, err := os.ReadFile(ts.MkAbs(args[i+1]))
			ts.Check(err)
			c.Audit.Witnesses = append(c.Audit.Witnesses, config.Witness{URL: args[i], VKey: strings.TrimSpace(string(vk))})
		}
		ts.Check(config.Write(path, c))
	},
	// corruptstate LOGDIR: make the log's tree state unreadable, so nothing can be recorded.
	"corruptstate": func(ts *testscript.TestScript, neg bool, args []string) {
		ts.Check(os.WriteFile(filepath.Join(ts.MkAbs(args[0]), ".state", "treeState"), []byte("not json"), 0o644))
	},
	// chat ENVFILE TEXT: a chat completion through the gateway described by a dev.env file,
	// with the official openai-go client; fails unless it answers.
	"chat": func(ts *testscript.TestScript, neg bool, args []string) {
		c, model := devClient(ts, args[0])
		resp, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
			Model: model, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(args[1])}, MaxTokens: openai.Int(8)})
		if (err == nil) == neg {
			ts.Fatalf("chat: %v", err)
		}
		if err == nil && len(resp.Choices) != 1 {
			ts.Fatalf("chat: %d choices", len(resp.Choices))
		}
	},
	// screeninglist DATA FILE: configure FILE as the data directory's denied-party list.
	"screeninglist": func(ts *testscript.TestScript, neg bool, args []string) {
		path := filepath.Join(ts.MkAbs(args[0]), "config.json")
		c, err := config.ReadRaw(path)
		ts.Check(err)
		c.Gateway.ScreeningList = ts.MkAbs(args[1])
		ts.Check(config.Write(path, c))
	},
	// chatsave ENVFILE PROMPT TOKENS OUTFILE: a sampled (temperature 1.5) chat completion of
	// TOKENS tokens through the dev gateway, its text saved to OUTFILE.
	"chatsave": func(ts *testscript.TestScript, neg bool, args []string) {
		n, _ := strconv.Atoi(args[2])
		c, model := devClient(ts, args[0])
		resp, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
			Model: model, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(args[1])},
			MaxTokens: openai.Int(int64(n)), Temperature: openai.Float(1.5)})
		ts.Check(err)
		ts.Check(os.WriteFile(ts.MkAbs(args[3]), []byte(resp.Choices[0].Message.Content), 0o644))
	},
	// gatewayconfig DATA REDIS_URL UPSTREAM RPM [CONCURRENT]: route model demo to UPSTREAM,
	// key limits RPM per minute (0: none) and CONCURRENT requests at once, limits in Redis.
	"gatewayconfig": func(ts *testscript.TestScript, neg bool, args []string) {
		path := filepath.Join(ts.MkAbs(args[0]), "config.json")
		c, err := config.ReadRaw(path)
		ts.Check(err)
		rpm, _ := strconv.Atoi(args[3])
		conc := 0
		if len(args) > 4 {
			conc, _ = strconv.Atoi(args[4])
		}
		c.Gateway.RedisURL = args[1]
		c.Gateway.Routes = []config.Route{{Model: "demo", Upstreams: []string{args[2]}}}
		c.Gateway.KeyLimits = config.Limits{RPM: rpm, Concurrent: conc}
		ts.Check(config.Write(path, c))
	},
	// hammer KEYFILE N RPM URL...: N chat requests, one after another, spread over the
	// gateways, for a key limited to RPM a minute. The bucket starts full and refills RPM a
	// minute, so the first RPM are admitted (200), and of the rest, only as many as refilled
	// while the hammer ran (one every minute/RPM); every other request is refused with 429.
	// A slow machine lengthens the run and so may admit a few more, never more than refilled.
	"hammer": func(ts *testscript.TestScript, neg bool, args []string) {
		n, _ := strconv.Atoi(args[1])
		want, _ := strconv.Atoi(args[2])
		urls := args[3:]
		ok, limited := 0, 0
		start := time.Now()
		for i := range n {
			code, _ := rawPost(ts, []string{urls[i%len(urls)], args[0], chatBody})
			switch code {
			case 200:
				ok++
			case 429:
				if i < want {
					ts.Fatalf("request %d refused while the bucket still held %d", i, want-i)
				}
				limited++
			default:
				ts.Fatalf("request %d: status %d", i, code)
			}
		}
		// The key's bucket is made full at its first request, after start: no more than
		// this can have refilled by the last.
		elapsed := time.Since(start)
		refilled := int(elapsed * time.Duration(want) / time.Minute)
		ts.Logf("admitted %d, limited %d of %d in %v (%d may have refilled)", ok, limited, n, elapsed, refilled)
		if ok < want || ok > want+refilled || ok+limited != n {
			ts.Fatalf("admitted %d and limited %d of %d in %v, want %d admitted, plus at most %d refilled", ok, limited, n, elapsed, want, refilled)
		}
	},
	// grepr TEXT DIR: whether any file under DIR contains TEXT.
	"grepr": func(ts *testscript.TestScript, neg bool, args []string) {
		found := ""
		filepath.WalkDir(ts.MkAbs(args[1]), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(args[0])) {
					found = p
				}
			}
			return nil
		})
		if (found != "") != !neg {
			ts.Fatalf("grepr %q %s: found in %q", args[0], args[1], found)
		}
	},
}

// TestScriptsHSM runs the scripts that need the SoftHSM2 token and PostgreSQL from scripts/test.
func TestScriptsHSM(t *testing.T) {
	vars := []string{"SOFTHSM2_CONF", "STRONGROOM_TEST_PKCS11_MODULE", "STRONGROOM_TEST_PKCS11_TOKEN", "STRONGROOM_TEST_PKCS11_PIN", "STRONGROOM_TEST_POSTGRES", "STRONGROOM_TEST_REDIS", "STRONGROOM_TEST_MARIADB",
		"STRONGROOM_TEST_MARIADB_TLS", "STRONGROOM_TEST_TLS_DIR"}
	vals := map[string]string{}
	for _, v := range vars {
		vals[v] = testenv.Get(t, v)
	}
	testscript.Run(t, testscript.Params{Dir: "testdata/integration", Cmds: scriptCmds, Setup: func(e *testscript.Env) error {
		for k, v := range vals {
			e.Setenv(k, v)
		}
		return nil
	}})
}

// readyLimit bounds every wait for a service to become ready in the scripts.
const readyLimit = 5 * time.Minute

// devClient is an openai-go client for the gateway a dev.env file describes, and its model.
func devClient(ts *testscript.TestScript, envFile string) (openai.Client, string) {
	env := devEnv(ts, envFile)
	c := openai.NewClient(option.WithBaseURL(env["STRONGROOM_URL"]+"/"), option.WithAPIKey(env["STRONGROOM_API_KEY"]), option.WithMaxRetries(0))
	return c, env["STRONGROOM_MODEL"]
}
