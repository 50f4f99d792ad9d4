package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/report"
	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

func init() {
	// cosigned save URL FILE: keep the checkpoint served at URL (a log's /checkpoint) in FILE.
	// cosigned grows URL LOGVKEYFILE WVKEYFILE FILE: wait until the checkpoint served at URL
	// is larger than the one in FILE and carries the log key's signature and the witness's
	// cosignature (WVKEYFILE), and print how long that took.
	scriptCmds["cosigned"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if args[0] == "save" {
			b, err := httpGet(context.Background(), args[1])
			ts.Check(err)
			ts.Check(os.WriteFile(ts.MkAbs(args[2]), b, 0o644))
			return
		}
		key := func(f string) note.Verifier {
			b, err := os.ReadFile(ts.MkAbs(f))
			ts.Check(err)
			v, err := note.NewVerifier(strings.TrimSpace(string(b)))
			if err != nil { // a witness's cosignature/v1 key
				v, err = f_note.NewVerifierForCosignatureV1(strings.TrimSpace(string(b)))
			}
			ts.Check(err)
			return v
		}
		logKey, wKey := key(args[2]), key(args[3])
		old, err := os.ReadFile(ts.MkAbs(args[4]))
		ts.Check(err)
		size := func(cp []byte) uint64 {
			lines := strings.SplitN(string(cp), "\n", 3)
			if len(lines) < 3 {
				return 0
			}
			n, _ := strconv.ParseUint(lines[1], 10, 64)
			return n
		}
		start := time.Now()
		for deadline := start.Add(readyLimit); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			cp, err := httpGet(context.Background(), args[1])
			if err != nil || size(cp) <= size(old) {
				continue
			}
			if _, err := note.Open(cp, note.VerifierList(logKey)); err != nil {
				ts.Fatalf("checkpoint of size %d not signed by the log key: %v", size(cp), err)
			}
			if _, err := note.Open(cp, note.VerifierList(wKey)); err != nil {
				ts.Fatalf("checkpoint of size %d served without the witness's cosignature: %v", size(cp), err)
			}
			fmt.Fprintf(ts.Stdout(), "cosigned checkpoint of size %d (was %d) after %s\n", size(cp), size(old), time.Since(start).Round(10*time.Millisecond))
			return
		}
		ts.Fatalf("no checkpoint larger than %d at %s after %s", size(old), args[1], readyLimit)
	}
	// waitmetric URL LINE: wait until the /metrics page at URL has the line LINE (e.g.
	// "strongroom_audit_log_signer 1"), and print how long that took.
	scriptCmds["waitmetric"] = func(ts *testscript.TestScript, neg bool, args []string) {
		waitLine(ts, args[0], args[1], func(line string) bool { return line == args[1] })
	}
	// waitline URL REGEXP: wait until a line of the page at URL (answering 200) matches
	// REGEXP, and print it and how long that took.
	scriptCmds["waitline"] = func(ts *testscript.TestScript, neg bool, args []string) {
		re, err := regexp.Compile(args[1])
		ts.Check(err)
		waitLine(ts, args[0], args[1], re.MatchString)
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

// waitLine waits until a line of the page at u satisfies match, and prints it.
func waitLine(ts *testscript.TestScript, u, what string, match func(string) bool) {
	start := time.Now()
	for deadline := start.Add(readyLimit); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, err := httpGet(context.Background(), u)
		lines := strings.Split(string(b), "\n")
		if i := slices.IndexFunc(lines, match); err == nil && i >= 0 {
			fmt.Fprintf(ts.Stdout(), "%s: %q after %s\n", u, lines[i], time.Since(start).Round(10*time.Millisecond))
			return
		}
	}
	ts.Fatalf("%s never showed %q", u, what)
}
