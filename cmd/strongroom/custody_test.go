package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pquerna/otp/totp"
	"github.com/rogpeppe/go-internal/testscript"
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
		for range 300 {
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
		for range 600 {
			if fi, err := os.Stat(ts.MkAbs(args[0])); err == nil && fi.Size() > 0 {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		ts.Fatalf("%s never appeared", args[0])
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
