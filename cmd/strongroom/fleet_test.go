package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/report"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

func init() {
	// waitmetric URL LINE: wait until the /metrics page at URL has the line LINE (e.g.
	// "strongroom_audit_log_signer 1"), and print how long that took.
	scriptCmds["waitmetric"] = func(ts *testscript.TestScript, neg bool, args []string) {
		start := time.Now()
		for deadline := start.Add(readyLimit); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			b, err := httpGet(context.Background(), args[0])
			if err == nil && slices.Contains(strings.Split(string(b), "\n"), args[1]) {
				fmt.Fprintf(ts.Stdout(), "%s: %q after %s\n", args[0], args[1], time.Since(start).Round(10*time.Millisecond))
				return
			}
		}
		ts.Fatalf("%s never showed %q", args[0], args[1])
	}
	// recorded LOGURL VKEYFILE MODEL N...: wait until the log served at LOGURL, in a signed
	// checkpoint, holds at least the sum of N... allowed requests for MODEL (a compliance
	// report from the log's start), and print how long the wait was.
	scriptCmds["recorded"] = func(ts *testscript.TestScript, neg bool, args []string) {
		u, err := url.Parse(args[0])
		ts.Check(err)
		f, err := client.NewHTTPFetcher(u, nil)
		ts.Check(err)
		vkey, err := os.ReadFile(ts.MkAbs(args[1]))
		ts.Check(err)
		v, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
		ts.Check(err)
		src := report.Source{Fetch: f, Opts: audit.VerifyOptions{LogKey: v, Bundles: func(ctx context.Context, name string) ([]byte, error) {
			return httpGet(ctx, u.JoinPath("batches", name).String())
		}}}
		want := 0
		for _, a := range args[3:] {
			n, _ := strconv.Atoi(a)
			want += n
		}
		start := time.Now()
		got := -1
		for deadline := start.Add(readyLimit); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			r, err := report.Compliance(context.Background(), src, report.Period{}, time.Now(), "test")
			if err != nil {
				continue // the checkpoint may be between signers
			}
			got = 0
			for _, t := range r.Figures.Traffic {
				if t.Model == args[2] {
					got += t.Allowed
				}
			}
			if got >= want {
				fmt.Fprintf(ts.Stdout(), "recorded: %d allowed %s requests in checkpoint %d (acknowledged %d), after %s\n", got, args[2], r.Log.Size, want, time.Since(start).Round(10*time.Millisecond))
				return
			}
		}
		ts.Fatalf("only %d of %d acknowledged %s answers are in the log's signed checkpoint after %s", got, want, args[2], readyLimit)
	}
}
