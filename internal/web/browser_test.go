package web_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/launcher"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
	"github.com/strongroom/strongroom/internal/web"
	"golang.org/x/mod/sumdb/note"
)

// artifacts is where the browser test leaves its screenshots and rendered PDF pages:
// $STRONGROOM_TEST_ARTIFACTS/console, else a temporary directory.
func artifacts(t *testing.T) string {
	dir := os.Getenv("STRONGROOM_TEST_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	dir = filepath.Join(dir, "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestBrowser drives the console in a real headless Chromium: sign in with key and TOTP,
// see the inventory, approve a pending lease (TOTP), watch the lease appear (live update),
// revoke it and see the engine die, open an incident whose evidence the browser verifies
// against the log's key, and download its PDF report. Each page is saved as a screenshot.
func TestBrowser(t *testing.T) {
	chrome := testenv.Program(t, "chromium")
	pdftoppm := testenv.Program(t, "pdftoppm")
	out := artifacts(t)
	t.Logf("screenshots in %s", out)
	h := newHarnessConfig(t, nil, func(c *config.Config, _ string) { c.Custody.Approvals = map[string]int{"confidential": 1} })
	ctx := context.Background()
	h.e.Import(t, "llama-guard", "3", "confidential", map[string][]byte{"model.safetensors": make([]byte, 4096), "config.json": []byte(`{}`)})
	id := h.e.Join(t, "prod")

	// A runtime asks for the weights: the request waits for one approval.
	work := t.TempDir()
	pidFile := filepath.Join(work, "engine.pid")
	type result struct {
		out launcher.Outcome
		err error
	}
	runDone := make(chan result, 1)
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	go func() {
		o, err := launcher.Run(runCtx, launcher.Config{Identity: id, Model: "llama-guard", Version: "3", TempDir: t.TempDir(),
			Command: []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 300"}})
		runDone <- result{o, err}
	}()
	var pending store.ApprovalRequest
	waitFor(t, 20*time.Second, "the approval request", func() bool {
		ps, _ := h.e.App.Store.ListApprovals(ctx, store.StatePending)
		if len(ps) == 1 {
			pending = ps[0]
		}
		return len(ps) == 1
	})

	// An incident whose evidence is a detector alert and a request record in a batch.
	alert, err := h.e.App.AuditLog.Record(ctx, audit.Event{V: 1, TS: time.Now().UTC(), Kind: "detect.alert", Decision: audit.Deny, Reason: "probing: 16 edits of one prompt family",
		Actor: map[string]string{"principal": "strongroom/detect"}, Subject: map[string]string{"principal": "mallory"}, Fields: map[string]string{"detector": "probing", "score": "0.97"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.e.App.RequestRecords().Submit(ctx, audit.Event{V: 1, TS: time.Now().UTC(), Kind: "gateway.request", Decision: audit.Allow,
		Actor: map[string]string{"principal": "mallory"}, Subject: map[string]string{"model": "llama-guard"}, Fields: map[string]string{"country": "DE"}})(); err != nil {
		t.Fatal(err)
	}
	reqs := h.events(t, store.AuditQuery{Kind: "gateway.request"})
	if err := h.e.App.Store.CreateIncident(ctx, store.Incident{ID: "inc-0001", Principal: "mallory", Detector: "probing", Action: "alert", Score: 0.97,
		Summary: "probing: 16 near-duplicate prompts around one family", Evidence: []uint64{alert, reqs[0].Index}, State: "open", OpenedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}

	dl := t.TempDir()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.WindowSize(1400, 1000),
		chromedp.DisableGPU, chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancel := chromedp.NewExecAllocator(ctx, opts...)
	defer cancel()
	bctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	defer cancel()
	bctx, cancel = context.WithTimeout(bctx, 2*time.Minute)
	defer cancel()
	shot := 0
	screenshot := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			png, err := again(chromedp.FullScreenshot(100), nil)(ctx, tg)
			if err != nil {
				return err
			}
			shot++
			return os.WriteFile(filepath.Join(out, fmt.Sprintf("%02d-%s.png", shot, name)), png, 0o644)
		})
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(bctx, 30*time.Second)
		defer cancel()
		for i, step := range steps {
			err := chromedp.Do(sctx, step)
			if err == nil {
				continue
			}
			err = fmt.Errorf("step %d of %d: %w", i+1, len(steps), err)
			chromedp.Do(bctx, screenshot("FAILED-"+strings.ReplaceAll(what, " ", "-")))
			page, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText.slice(0, 2000)`))
			t.Fatalf("%s: %v (screenshot in %s); the page:\n%s", what, err, out, page)
		}
	}
	// open navigates to url and makes sure the browser stays there: a live page's reload
	// that began before the navigation cancels it and brings the old page back (seen under
	// load: the approvals page, reloading as the runtime took its lease, won over the
	// navigation to the leases page), so the navigation is made again until it holds.
	open := func(url string) chromedp.Action[chromedp.Void] {
		return func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
			for {
				if _, err := chromedp.Navigate(url)(ctx, tg); err != nil {
					return chromedp.Void{}, err
				}
				href, err := chromedp.Evaluate[string](`location.href`)(ctx, tg)
				if err == nil && href == url {
					return chromedp.Void{}, nil
				}
				if ctx.Err() != nil {
					return chromedp.Void{}, fmt.Errorf("%w (at %q, not %q)", ctx.Err(), href, url)
				}
				t.Logf("open %s: the browser is at %q (err %v); navigating again", url, href, err)
			}
		}
	}
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	// ask evaluates js in the page until its value satisfies ok.
	ask := func(js string, ok func(string) bool) chromedp.Action[string] {
		return again(chromedp.Evaluate[string](js), ok)
	}
	// shown waits for an element to be shown, across reloads.
	shown := func(sel string) chromedp.Action[chromedp.Void] {
		js := `(() => { const e = document.querySelector(` + strconv.Quote(sel) + `); return e !== null && e.getClientRects().length > 0 ? "shown" : "" })()`
		return func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
			_, err := ask(js, func(v string) bool { return v == "shown" })(ctx, tg)
			return chromedp.Void{}, err
		}
	}
	// text is an element's text, across reloads.
	text := func(sel string) string {
		t.Helper()
		sctx, cancel := context.WithTimeout(bctx, 30*time.Second)
		defer cancel()
		s, err := chromedp.Run(sctx, ask(`(() => { const e = document.querySelector(`+strconv.Quote(sel)+`); return e === null ? null : e.innerText })()`, nil))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return s
	}
	u := h.srv.URL
	// The browser lives as long as the context of the first call: bctx, not a step's.
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatal(err)
	}

	do("sign in",
		chromedp.Navigate(u+"/console/"),
		chromedp.WaitVisible(css("#login-form")),
		screenshot("login"),
		chromedp.SendKeys(css("#api_key"), h.admin.Key),
		chromedp.SendKeys(css("#totp"), h.admin.Code(t)),
		chromedp.Click(css("#login")),
		chromedp.WaitVisible(css("#live")),
		screenshot("overview"))
	go func() {
		for m, err := range chromedp.Console(bctx) {
			if err != nil {
				return
			}
			t.Logf("browser console: %+v", m)
		}
	}()
	if got := text("#user"); got != h.admin.ID {
		t.Fatalf("signed in as %q", got)
	}

	do("inventory", open(u+"/console/inventory"), chromedp.WaitVisible(css("#inventory")), screenshot("inventory"))
	if inv := text("#inventory"); !strings.Contains(inv, "llama-guard:3") || !strings.Contains(inv, "confidential") || !strings.Contains(inv, "verified (OMS v1.0)") {
		t.Fatalf("inventory shows:\n%s", inv)
	}

	row := `tr.approval[data-approval="` + pending.ID + `"] `
	do("approve",
		open(u+"/console/approvals"),
		chromedp.WaitVisible(css(row+"form")),
		screenshot("approvals-pending"),
		chromedp.SetValue(css(row+`select[name=decision]`), "approve"),
		chromedp.SendKeys(css(row+`input[name=justification]`), "scheduled evaluation run"),
		chromedp.SendKeys(css(row+`input[name=totp]`), h.admin.Code(t)),
		chromedp.SendKeys(css(row+`input[name=confirm]`), pending.ID),
		chromedp.Submit(css(row+`form`)),
		// The request leaves the pending list (the page may reload live once more as the
		// runtime takes its lease, so the one-time message is not waited for).
		shown("#no-pending"),
		screenshot("approvals-approved"))
	if d := text("#decided"); !strings.Contains(d, pending.ID) || !strings.Contains(d, h.admin.ID+":approve") {
		t.Fatalf("after approving: %q", d)
	}

	// The leases page, opened before the runtime has its lease, shows it once it has: the
	// live update reloads it.
	do("leases", open(u+"/console/leases"), chromedp.WaitVisible(css("#leases")),
		shown("tr.lease"), screenshot("leases-live"))
	var pid int
	waitFor(t, 10*time.Second, "the engine", func() bool {
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return pid > 0
	})
	attr, err := chromedp.Run(bctx, chromedp.AttributeValue(css("tr.lease"), "data-lease"))
	if err != nil || attr.Value == "" {
		t.Fatalf("lease id: %v", err)
	}
	leaseID := attr.Value
	start := time.Now()
	do("revoke",
		chromedp.SendKeys(css(`tr.lease input[name=reason]`), "end of evaluation"),
		chromedp.SendKeys(css(`tr.lease input[name=confirm]`), leaseID),
		chromedp.Submit(css(`tr.lease form`)),
		shown("#no-leases"),
		screenshot("leases-revoked"))
	select {
	case r := <-runDone:
		if r.err != nil || r.out.Code != launcher.ExitRevoked {
			t.Fatalf("runtime outcome: %+v %v", r.out, r.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the runtime did not stop within 15 s of the revocation")
	}
	if syscall.Kill(pid, 0) == nil {
		t.Fatal("engine alive after revocation")
	}
	t.Logf("revoked in the browser: page updated and engine dead %v after the click", time.Since(start).Round(time.Millisecond))

	do("incident",
		open(u+"/console/incidents"),
		chromedp.WaitVisible(css("#incidents")),
		screenshot("incidents"),
		chromedp.Click(css(`a[href="/console/incidents/inc-0001"]`)),
		chromedp.WaitReady(css(`body[data-verified="done"]`)),
		screenshot("incident"))
	proofs, err := chromedp.Run(bctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("td.proof")).map(e => e.className + " | " + e.textContent)`))
	if err != nil || len(proofs) != 2 {
		t.Fatalf("evidence rows: %q %v", proofs, err)
	}
	for _, p := range proofs {
		if !strings.HasPrefix(p, "proof verified | verified:") {
			t.Fatalf("evidence not verified in the browser: %q", proofs)
		}
	}
	if !strings.Contains(strings.Join(proofs, "\n"), "record 0 of batch entry") {
		t.Fatalf("the request record was not checked in its batch: %q", proofs)
	}

	// The report downloads as a PDF; its pages are rendered to PNG next to the screenshots.
	done := make(chan string, 1)
	go func() {
		for e, err := range chromedp.BrowserEvents(bctx, cdpbrowser.DownloadProgress) {
			if err != nil {
				return
			}
			if e.State == cdpbrowser.DownloadProgressStateCompleted {
				done <- e.GUID
				return
			}
		}
	}()
	yes := true
	if _, err := chromedp.CallBrowser(bctx, cdpbrowser.SetDownloadBehavior, cdpbrowser.SetDownloadBehaviorParams{
		Behavior: cdpbrowser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: dl, EventsEnabled: &yes}); err != nil {
		t.Fatal(err)
	}
	do("download", chromedp.Click(css("#report")))
	var guid string
	select {
	case guid = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the report did not download")
	}
	pdf, err := os.ReadFile(filepath.Join(dl, guid))
	if err != nil || !strings.HasPrefix(string(pdf), "%PDF-") {
		t.Fatalf("report: %v, starts %q", err, pdf[:min(len(pdf), 8)])
	}
	pdfPath := filepath.Join(out, "incident-report.pdf")
	os.WriteFile(pdfPath, pdf, 0o644)
	if b, err := exec.Command(pdftoppm, "-png", "-r", "60", pdfPath, filepath.Join(out, "incident-report")).CombinedOutput(); err != nil {
		t.Fatalf("pdftoppm: %v\n%s", err, b)
	}

	h.events(t, store.AuditQuery{Kind: "lease.revoke"}) // the search index trails the log by up to a second
	do("audit", open(u+"/console/audit?kind=lease.revoke"), chromedp.WaitVisible(css("#audit")), screenshot("audit"))
	if a := text("#audit"); !strings.Contains(a, "lease.revoke") || !strings.Contains(a, h.admin.ID) {
		t.Fatalf("the revocation is not in the audit explorer under its actor:\n%s", a)
	}
	do("principals and policies",
		open(u+"/console/principals"), chromedp.WaitVisible(css("#principals")), screenshot("principals"),
		chromedp.Click(css(`a[href="/console/principals/`+h.admin.ID+`"]`)), chromedp.WaitVisible(css("#keys")), screenshot("principal-keys"),
		open(u+"/console/policies"), chromedp.WaitVisible(css("#validation")), screenshot("policies"))
	// The same page served with another key than the log's: the browser refuses the proofs.
	_, otherVKey, err := note.GenerateKey(nil, "strongroom.local/impostor")
	if err != nil {
		t.Fatal(err)
	}
	impostor, err := web.New(web.Config{Ops: h.e.App, Store: h.e.App.Store, LogVKey: otherVKey})
	if err != nil {
		t.Fatal(err)
	}
	isrv := httptest.NewServer(impostor.Handler())
	t.Cleanup(isrv.Close) // after the browser has gone, taking its event stream
	do("impostor key",
		chromedp.Navigate(isrv.URL+"/console/login"),
		chromedp.WaitVisible(css("#login-form")),
		chromedp.SendKeys(css("#api_key"), h.admin.Key),
		chromedp.SendKeys(css("#totp"), h.admin.Code(t)),
		chromedp.Click(css("#login")),
		chromedp.WaitVisible(css("#live")),
		chromedp.Navigate(isrv.URL+"/console/incidents/inc-0001"),
		chromedp.WaitReady(css(`body[data-verified="done"]`)),
		screenshot("incident-wrong-key"))
	bad, err := chromedp.Run(bctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("td.proof")).map(e => e.className + " | " + e.textContent)`))
	if err != nil || len(bad) != 2 || !strings.HasPrefix(bad[0], "proof failed | NOT VERIFIED: checkpoint is not signed by the log key") {
		t.Fatalf("proofs under another key: %q %v", bad, err)
	}

}

// again runs a until it succeeds and ok (if not nil) accepts its value, or ctx ends. Console
// pages reload themselves (the live update) at any moment, and a reload landing in the
// middle of a chromedp action can swallow its answer for good (node queries that never see
// the new document, a screenshot that never returns): each attempt gets a few seconds (twice
// as many as the last: a slow machine is not a swallowed answer), and the pages that follow
// live state are read by asking the page itself, again.
func again[T any](a chromedp.Action[T], ok func(T) bool) chromedp.Action[T] {
	return func(ctx context.Context, tg *chromedp.Target) (T, error) {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for try := 5 * time.Second; ; try *= 2 {
			actx, cancel := context.WithTimeout(ctx, try)
			v, err := a(actx, tg)
			cancel()
			if err == nil && (ok == nil || ok(v)) {
				return v, nil
			}
			select {
			case <-ctx.Done():
				return v, fmt.Errorf("%w (last attempt: %v)", ctx.Err(), err)
			case <-tick.C:
			}
		}
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
