package report

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// fixture is a real tessera log with request batches, written the way the producers
// (gateway, custody, inventory, detect) write their events.
type fixture struct {
	dir  string
	log  *audit.Log
	b    *audit.Batcher
	vkey note.Verifier
	idx  map[string]uint64 // name → log (or record) index
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	skey, vkey, err := note.GenerateKey(rand.Reader, "strongroom.test/report")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	l, err := audit.Open(context.Background(), audit.Config{Dir: dir, Signer: s, CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{dir: dir, log: l, b: audit.NewBatcher(l, audit.DirBundles{Dir: dir}, audit.BatcherConfig{MaxDelay: time.Millisecond}), vkey: v, idx: map[string]uint64{}}
}

func ev(at time.Duration, kind audit.Kind, decision, reason string, actor, subject, fields map[string]string) audit.Event {
	return audit.Event{V: 1, TS: t0.Add(at), Kind: kind, Decision: decision, Reason: reason, Actor: actor, Subject: subject, Fields: fields}
}

func (f *fixture) entry(t *testing.T, name string, e audit.Event) {
	t.Helper()
	i, err := f.log.Record(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	f.idx[name] = i
}

func (f *fixture) record(t *testing.T, name string, e audit.Event) {
	t.Helper()
	i, err := f.b.Submit(context.Background(), e)()
	if err != nil {
		t.Fatal(err)
	}
	f.idx[name] = i
}

func (f *fixture) close(t *testing.T) {
	t.Helper()
	f.b.Close()
	if err := f.log.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) src() Source {
	return Source{Fetch: client.FileFetcher{Root: f.dir}, Opts: audit.VerifyOptions{LogKey: f.vkey, Bundles: audit.DirBundles{Dir: f.dir}.Bundle}}
}

func request(at time.Duration, who, model, version, class, country, decision, reason string, pt, ct int, wm string) audit.Event {
	fields := map[string]string{"status": "200", "country": country, "prompt_tokens": itoa(pt), "completion_tokens": itoa(ct)}
	if class != "" {
		fields["classification"] = class
	}
	if wm != "" {
		fields["watermark_requested"], fields["watermarked"] = "true", wm
	}
	subject := map[string]string{"endpoint": "chat.completions", "model": model}
	if version != "" {
		subject["version"] = version
	}
	return ev(at, "gateway.request", decision, reason, map[string]string{"principal": who, "tenant": "t"}, subject, fields)
}

func itoa(i int) string { return strconv.Itoa(i) }

// populate writes a day of events; the period [t0+30m, t0+24h) is the one tests ask for.
func populate(t *testing.T) *fixture {
	f := newFixture(t)
	sys := map[string]string{"principal": "os:root@host"}
	f.entry(t, "init", ev(0, "deployment.init", audit.Allow, "", sys, map[string]string{"data_dir": "/d"}, nil))
	f.entry(t, "import", ev(time.Minute, "model.import", audit.Allow, "", sys, map[string]string{"model": "m1", "version": "1"}, map[string]string{"classification": "restricted"}))
	f.entry(t, "import-pub", ev(time.Minute, "model.import", audit.Allow, "", sys, map[string]string{"model": "pub", "version": "1"}, map[string]string{"classification": "public"}))
	f.entry(t, "policy-0", ev(2*time.Minute, "policy.load", audit.Allow, "", sys, map[string]string{"policy_set": "aaaa"}, map[string]string{"sha256:baseline.cedar": "b0"}))
	f.record(t, "r1", request(time.Hour, "p1", "m1", "1", "restricted", "DE", audit.Allow, "", 10, 20, "true"))
	f.record(t, "r2", request(time.Hour+time.Second, "p1", "m1", "1", "restricted", "DE", audit.Allow, "", 10, 20, "false"))
	f.record(t, "r3", request(time.Hour+2*time.Second, "p2", "m1", "1", "", "CN", audit.Deny, "country denied", 0, 0, ""))
	f.record(t, "r4", request(time.Hour+3*time.Second, "p2", "pub", "", "", "US", audit.Allow, "", 5, 5, ""))
	f.record(t, "xss", request(time.Hour+4*time.Second, "p3", `<script>alert(1)</script>`, "", "", "javascript:alert(1)", audit.Deny, "no such model", 0, 0, ""))
	f.entry(t, "hit", ev(90*time.Minute, "principal.screening_hit", audit.Deny, "denied-party list match; blocked pending review", sys,
		map[string]string{"principal": "acme-bad"}, map[string]string{"match": "ACME BAD LTD", "source": "list.csv", "score": "0.970"}))
	f.entry(t, "review", ev(100*time.Minute, "principal.put", audit.Allow, "", map[string]string{"principal": "os:alice@host"},
		map[string]string{"principal": "acme-bad"}, map[string]string{"screening": "denied", "tenant": "x"}))
	f.entry(t, "set", ev(2*time.Hour, "model.set", audit.Allow, "", sys, map[string]string{"model": "m1", "version": "1"},
		map[string]string{"by": "alice", "before": `{"classification":"restricted"}`, "after": `{"classification":"export-controlled"}`}))
	f.record(t, "r5", request(3*time.Hour, "p1", "m1", "1", "", "DE", audit.Deny, "rate limited", 0, 0, ""))
	lease := map[string]string{"jurisdiction": "DE", "attestation": "sev-snp", "classification": "export-controlled"}
	f.entry(t, "lease", ev(4*time.Hour, "lease.grant", audit.Allow, "", sys, map[string]string{"model": "m1", "version": "1", "lease": "l1"}, lease))
	f.entry(t, "lease-denied", ev(4*time.Hour, "lease.grant", audit.Deny, "no", sys, map[string]string{"model": "m1", "version": "1", "lease": "l2"}, lease))
	f.entry(t, "lease-pub", ev(4*time.Hour, "lease.grant", audit.Allow, "", sys, map[string]string{"model": "pub", "version": "1", "lease": "l3"},
		map[string]string{"jurisdiction": "US", "attestation": "none", "classification": "public"}))
	f.entry(t, "unauth", ev(5*time.Hour, "gateway.unauthenticated", audit.Deny, "refused before the caller was identified", nil, nil, map[string]string{"count": "7"}))
	f.entry(t, "policy-1", ev(5*time.Hour, "policy.load", audit.Allow, "", sys, map[string]string{"policy_set": "bbbb"},
		map[string]string{"sha256:baseline.cedar": "b0", "sha256:geo.cedar": "g1"}))
	detector := map[string]string{"principal": "strongroom/detect"}
	f.entry(t, "alert", ev(6*time.Hour, "detect.alert", audit.Deny, "logit harvesting: 40 top-logprob requests", detector, map[string]string{"principal": "p2"},
		map[string]string{"detector": "logit", "score": "0.9900", "action": "suspend"}))
	f.entry(t, "action", ev(6*time.Hour, "detect.action", audit.Deny, "suspend for 1h0m0s", detector, map[string]string{"principal": "p2"},
		map[string]string{"detector": "logit", "action": "suspend", "until": "2026-11-01T07:00:00Z"}))
	f.entry(t, "close", ev(7*time.Hour, "incident.close", audit.Allow, "false positive <b>checked</b>", map[string]string{"principal": "os:bob@host"},
		map[string]string{"incident": "inc-1"}, nil))
	f.record(t, "late", request(30*time.Hour, "p1", "m1", "1", "restricted", "DE", audit.Allow, "", 1, 1, ""))
	f.close(t)
	return f
}

var day = Period{From: t0.Add(30 * time.Minute), To: t0.Add(24 * time.Hour)}

func TestCompliance(t *testing.T) {
	f := populate(t)
	ctx := context.Background()
	now := t0.Add(48 * time.Hour)
	r, err := Compliance(ctx, f.src(), day, now, "strongroom test")
	if err != nil {
		t.Fatal(err)
	}
	want := Figures{
		LogStart: t0, Entries: 17, Unauthenticated: 7,
		Traffic: []Traffic{
			{Model: "m1", Classification: "export-controlled", Country: "DE", Requests: 1, Denied: 1, Denials: map[string]int{"rate limited": 1}},
			{Model: "pub", Classification: "public", Country: "US", Requests: 1, Allowed: 1, PromptTokens: 5, CompletionTokens: 5, Denials: map[string]int{}},
			{Model: "m1", Classification: "restricted", Country: "CN", Requests: 1, Denied: 1, Denials: map[string]int{"country denied": 1}},
			{Model: "m1", Classification: "restricted", Country: "DE", Requests: 2, Allowed: 2, PromptTokens: 20, CompletionTokens: 40, Denials: map[string]int{}},
			{Model: "<script>alert(1)</script>", Classification: "unknown", Country: "javascript:alert(1)", Requests: 1, Denied: 1, Denials: map[string]int{"no such model": 1}},
		},
		Screening: []Hit{{At: t0.Add(90 * time.Minute), Principal: "acme-bad", Match: "ACME BAD LTD", Source: "list.csv", Score: "0.970", LogIndex: f.idx["hit"],
			Review: "denied", ReviewedAt: t0.Add(100 * time.Minute), ReviewedBy: "os:alice@host", ReviewIndex: f.idx["review"]}},
		Deployments: []Deploy{{Model: "m1", Version: "1", Classification: "export-controlled", Jurisdiction: "DE", Attestation: "sev-snp", Leases: 1, First: t0.Add(4 * time.Hour), Last: t0.Add(4 * time.Hour)}},
		Watermark:   []Mark{{Model: "m1", Answers: 2, Requested: 2, Watermarked: 1, Coverage: 0.5}, {Model: "pub", Answers: 1, Coverage: 1}},
		Policies: []Policy{
			{At: t0.Add(2 * time.Minute), LogIndex: f.idx["policy-0"], Set: "aaaa", Files: map[string]string{"baseline.cedar": "b0"}},
			{At: t0.Add(5 * time.Hour), LogIndex: f.idx["policy-1"], Set: "bbbb", Files: map[string]string{"baseline.cedar": "b0", "geo.cedar": "g1"}},
		},
		ModelChanges: []Change{{At: t0.Add(2 * time.Hour), LogIndex: f.idx["set"], Kind: "model.set", Model: "m1:1", By: "alice"}},
	}
	if d := cmp.Diff(want, r.Figures); d != "" {
		t.Fatalf("figures (-want +got):\n%s", d)
	}
	if r.Log.Size == 0 || r.Log.Origin != "strongroom.test/report" || !strings.Contains(r.Log.Checkpoint, "— strongroom.test/report") {
		t.Fatalf("log reference %+v", r.Log)
	}

	// The JSON report verifies; a changed figure, checkpoint or log entry does not.
	var buf bytes.Buffer
	if err := r.Write(&buf, "json"); err != nil {
		t.Fatal(err)
	}
	decode := func() *ComplianceReport {
		c, err := ParseCompliance(buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if err := Verify(ctx, f.src(), decode()); err != nil {
		t.Fatalf("verify: %v", err)
	}
	// A duplicated key (a reader taking the first would see 999 allowed, one taking the
	// last the true figure) is refused before anything is verified.
	dup := bytes.Replace(buf.Bytes(), []byte(`"allowed": 2,`), []byte(`"allowed": 999, "allowed": 2,`), 1)
	if bytes.Equal(dup, buf.Bytes()) {
		t.Fatal("the duplicate was not planted")
	}
	if _, err := ParseCompliance(dup); err == nil {
		t.Fatal("a report with a duplicated key was accepted")
	}
	c := decode()
	c.Figures.Traffic[3].Allowed++
	if err := Verify(ctx, f.src(), c); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "traffic") {
		t.Fatalf("verify of an altered figure: %v", err)
	}
	c = decode()
	c.Period.To = c.Period.To.Add(7 * time.Hour) // the late record (t0+30h) is not in the report
	if err := Verify(ctx, f.src(), c); !errors.Is(err, ErrMismatch) {
		t.Fatalf("verify of an altered period: %v", err)
	}
	c = decode()
	c.Log.Checkpoint = strings.Replace(c.Log.Checkpoint, "\n"+itoaU(c.Log.Size)+"\n", "\n"+itoaU(c.Log.Size-1)+"\n", 1)
	if err := Verify(ctx, f.src(), c); !errors.Is(err, audit.ErrSecurity) {
		t.Fatalf("verify with an altered checkpoint: %v", err)
	}
	// A request record changed in its bundle, then an entry changed in the log.
	bundles, _ := filepath.Glob(filepath.Join(f.dir, "batches", "*", "*"))
	if len(bundles) == 0 {
		t.Fatal("no bundles")
	}
	replaceInFiles(t, bundles, `"country":"CN"`, `"country":"DE"`)
	if err := Verify(ctx, f.src(), decode()); !errors.Is(err, audit.ErrSecurity) {
		t.Fatalf("verify with an altered request record: %v", err)
	}
	replaceInFiles(t, bundles, `"country":"DE"`, `"country":"CN"`) // undo: records of another country in those bundles would be found in the next check
	entries, _ := filepath.Glob(filepath.Join(f.dir, "tile", "entries", "*"))
	var files []string
	for _, e := range entries {
		filepath.Walk(e, func(p string, fi os.FileInfo, _ error) error {
			if fi != nil && !fi.IsDir() {
				files = append(files, p)
			}
			return nil
		})
	}
	replaceInFiles(t, files, `"by":"alice"`, `"by":"mallo"`)
	if err := Verify(ctx, f.src(), decode()); !errors.Is(err, audit.ErrSecurity) {
		t.Fatalf("verify with an altered log entry: %v", err)
	}
}

func itoaU(n uint64) string { b, _ := json.Marshal(n); return string(b) }

// replaceInFiles replaces old with new in every file that has it.
func replaceInFiles(t *testing.T, files []string, old, new string) {
	t.Helper()
	n := 0
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(old)) {
			continue
		}
		os.Chmod(p, 0o644)
		if err := os.WriteFile(p, bytes.ReplaceAll(b, []byte(old), []byte(new)), 0o644); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n == 0 {
		t.Fatalf("%q in none of %d files", old, len(files))
	}
}

// TestPeriods: a period the log does not cover is refused with its reason; a covered
// period with no events says so.
func TestPeriods(t *testing.T) {
	f := populate(t)
	ctx := context.Background()
	now := t0.Add(48 * time.Hour)
	for _, c := range []struct {
		p    Period
		want string
	}{
		{Period{t0.Add(-time.Hour), t0.Add(time.Hour)}, "the log begins at 2026-11-01T00:00:00Z"},
		{Period{t0, t0.Add(72 * time.Hour)}, "after now"},
		{Period{t0.Add(time.Hour), t0.Add(time.Hour)}, "the period is empty"},
	} {
		_, err := Compliance(ctx, f.src(), c.p, now, "t")
		if !errors.Is(err, ErrPeriod) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want ErrPeriod with %q", c.p, err, c.want)
		}
	}
	r, err := Compliance(ctx, f.src(), Period{t0.Add(40 * time.Hour), t0.Add(41 * time.Hour)}, now, "t")
	if err != nil {
		t.Fatal(err)
	}
	if !r.Figures.Empty || r.Figures.Entries != 0 || len(r.Figures.Traffic) != 0 {
		t.Fatalf("empty period: %+v", r.Figures)
	}
	// The policy in force is still named for an empty period.
	if len(r.Figures.Policies) != 1 || r.Figures.Policies[0].Set != "bbbb" {
		t.Fatalf("policies in force: %+v", r.Figures.Policies)
	}
	for _, format := range []string{"html", "pdf", "csv"} {
		var b bytes.Buffer
		if err := r.Write(&b, format); err != nil {
			t.Fatal(err)
		}
		if format == "html" && !strings.Contains(b.String(), "No events were recorded in this period") {
			t.Fatal("the empty HTML report does not say so")
		}
	}
	// From the log's start to now.
	r, err = Compliance(ctx, f.src(), Period{}, now, "t")
	if err != nil {
		t.Fatal(err)
	}
	if !r.Period.From.Equal(t0) || !r.Period.To.Equal(now) || r.Figures.Traffic == nil {
		t.Fatalf("whole log: %v %+v", r.Period, r.Figures)
	}
}

// TestRender: every format renders; data from the log is escaped in HTML; the PDF is a
// PDF that pdftoppm (poppler) renders.
func TestRender(t *testing.T) {
	f := populate(t)
	r, err := Compliance(context.Background(), f.src(), day, t0.Add(48*time.Hour), "strongroom test")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Write(&bytes.Buffer{}, "docx"); err == nil {
		t.Fatal("an unknown format was accepted")
	}
	out := artifacts(t)
	for _, format := range []string{"json", "csv", "html", "pdf"} {
		var b bytes.Buffer
		if err := r.Write(&b, format); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(out, "compliance."+format)
		os.WriteFile(p, b.Bytes(), 0o644)
		s := b.String()
		switch format {
		case "html":
			if strings.Contains(s, "<script>alert") || !strings.Contains(s, "&lt;script&gt;alert(1)&lt;/script&gt;") {
				t.Fatal("a model name from the log reached the HTML unescaped")
			}
			if strings.Contains(s, `href="javascript:`) || strings.Contains(s, "<script") {
				t.Fatal("the HTML report has a script or a javascript: link")
			}
		case "csv":
			if !strings.Contains(s, "traffic,m1,restricted,DE,2,2,0,20,40,") {
				t.Fatalf("csv:\n%s", s)
			}
		case "pdf":
			if !strings.HasPrefix(s, "%PDF-") {
				t.Fatal("not a PDF")
			}
		}
	}
	renderPDF(t, filepath.Join(out, "compliance.pdf"))
}

// artifacts is where tests leave files to look at: $STRONGROOM_TEST_ARTIFACTS/report, or
// a temporary directory.
func artifacts(t *testing.T) string {
	if d := os.Getenv("STRONGROOM_TEST_ARTIFACTS"); d != "" {
		d = filepath.Join(d, "report")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// renderPDF renders a PDF's first page to PNG with pdftoppm (poppler-utils, which
// scripts/test installs; a bare `go test` without it skips here, at the test's end).
func renderPDF(t *testing.T, p string) {
	t.Helper()
	bin := testenv.Program(t, "pdftoppm")
	if out, err := exec.Command(bin, "-png", "-r", "60", p, strings.TrimSuffix(p, ".pdf")).CombinedOutput(); err != nil {
		t.Fatalf("pdftoppm: %v\n%s", err, out)
	}
	pngs, _ := filepath.Glob(strings.TrimSuffix(p, ".pdf") + "*.png")
	if len(pngs) == 0 {
		t.Fatal("pdftoppm made no page")
	}
}

// TestIncident: the incident report names what happened from the log, proves every
// entry it cites, and is valid against the published schema.
func TestIncident(t *testing.T) {
	f := populate(t)
	in := store.Incident{ID: "inc-1", Principal: "p2", Detector: "logit", Action: "suspend", Score: 0.99,
		Summary: `p2 harvested logits <img src=x onerror=alert(1)>`, State: "closed", OpenedAt: t0.Add(6 * time.Hour),
		ClosedAt: t0.Add(7 * time.Hour), Note: "false positive <b>checked</b>",
		Evidence: []uint64{f.idx["alert"], f.idx["action"], f.idx["r3"], f.idx["r4"]}}
	r, err := Incident(context.Background(), f.src(), IncidentInput{Incident: in, Related: []uint64{f.idx["close"]}, Now: t0.Add(8 * time.Hour), Tool: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Entries) != 5 || r.Detection.LogIndex == nil || *r.Detection.LogIndex != f.idx["alert"] || r.Detection.Evidence != "logit harvesting: 40 top-logprob requests" {
		t.Fatalf("entries %d, detection %+v", len(r.Entries), r.Detection)
	}
	if d := cmp.Diff([]string{"p2"}, r.Affected.Principals); d != "" {
		t.Fatal(d)
	}
	if d := cmp.Diff([]ModelRef{{Model: "m1", Version: "1"}, {Model: "pub"}}, r.Affected.Models); d != "" {
		t.Fatal(d)
	}
	var acts []string
	for _, a := range r.Actions {
		acts = append(acts, string(a.Kind)+"="+a.Action)
	}
	if d := cmp.Diff([]string{"detect.action=suspend", "incident.close=close incident"}, acts); d != "" {
		t.Fatal(d)
	}
	for i := 1; i < len(r.Timeline); i++ {
		if r.Timeline[i].At.Before(r.Timeline[i-1].At) {
			t.Fatal("timeline out of order")
		}
	}
	// Each entry's proof checks against the report's checkpoint, and each record's against
	// its batch root.
	for _, e := range r.Entries {
		proof := decodeProof(t, e.Proof)
		if err := audit.VerifyInclusion(e.Event, e.Index, r.Log.Size, proof, r.Log.Root); err != nil {
			t.Fatal(err)
		}
		if e.Record != nil {
			_, pos, _ := audit.SplitRecordIndex(e.Record.Index)
			root, _ := hex.DecodeString(e.Record.BatchRoot)
			if err := audit.VerifyRecord(e.Record.Event, uint64(pos), uint64(e.Record.Records), decodeProof(t, e.Record.Proof), root); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The JSON is valid against docs/incident-report.schema.json; so is an open incident
	// with no evidence; a report missing a required field is not (the check can fail).
	sch := schema(t)
	validate := func(r *IncidentReport) error {
		var b bytes.Buffer
		r.Write(&b, "json")
		v, err := jsonschema.UnmarshalJSON(&b)
		if err != nil {
			t.Fatal(err)
		}
		return sch.Validate(v)
	}
	if err := validate(r); err != nil {
		t.Fatalf("schema: %v", err)
	}
	open, err := Incident(context.Background(), f.src(), IncidentInput{Incident: store.Incident{ID: "inc-2", State: "open", OpenedAt: t0}, Now: t0, Tool: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if err := validate(open); err != nil {
		t.Fatalf("schema of an incident without evidence: %v", err)
	}
	open.Incident.State = "pending"
	if err := validate(open); err == nil {
		t.Fatal("the schema accepted a state it does not define")
	}
	var b bytes.Buffer
	if err := r.Write(&b, "pdf"); err != nil {
		t.Fatal(err)
	}
	// An index the log does not have is an error, not a report without it.
	in.Evidence = append(in.Evidence, 1<<40)
	if _, err := Incident(context.Background(), f.src(), IncidentInput{Incident: in, Now: t0, Tool: "t"}); err == nil {
		t.Fatal("a report was made with evidence the log does not hold")
	}
	p := filepath.Join(artifacts(t), "incident.pdf")
	os.WriteFile(p, b.Bytes(), 0o644)
	renderPDF(t, p)
}

func decodeProof(t *testing.T, p []string) [][]byte {
	out := make([][]byte, len(p))
	for i, s := range p {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = b
	}
	return out
}

func schema(t *testing.T) *jsonschema.Schema {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	s, err := c.Compile("../../docs/incident-report.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// FuzzPDF: text from the log (any bytes, any script) never stops a PDF from rendering.
func FuzzPDF(f *testing.F) {
	f.Add("m1", "Жёлтый 模型 — \u2028 \xff\xfe", "<script>")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		d := newDoc(a, t0)
		d.heading(b)
		d.para(c)
		d.mono(a + b)
		d.fields(a, b, c, a)
		d.table([]float64{30, 60, 90}, []string{a, b, c}, [][]string{{c, a, b}, {b + b + b + b, c, a}})
		if err := d.write(&bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
	})
}
