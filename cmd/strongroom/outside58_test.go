package main

// Outside round 58 (users' secrets in every output), the whole assembly: `strongroom serve
// -v --record-trace` (its own process, outside57's helpers) with a route to an engine in
// this test process, driven over HTTP with prompts, completions, API keys (good, unknown,
// wrong, malformed, revoked, expired) and join tokens (malformed, a wrong secret) that each
// carry a marker of their own. Every output is searched for every marker: serve's stdout
// and its log on stderr (-v), every HTTP answer but the secret's owner's own, /healthz,
// /metrics, the transparency log read over HTTP (/log/checkpoint, the entry bundle, every
// request batch at /log/batches/), the trace file (prompts as keyed digests: no
// --record-prompts), `audit search --json` and every file of the data directory.
//
// And the CLI given a key where a key id is asked for (`key revoke`, `key rotate`): the
// natural thing to do with a key found leaked is to paste it.
//
// Found (each fails while it lasts):
//   - TestOutside58ServeAssembly/"duplicate member name": a body the gateway's parser
//     refuses puts caller content (a member name; the JSON pointer above a syntax error)
//     into the request record's reason, served at /log/batches/ and listed by `audit
//     search`, and into serve -v's "request denied" line (gateway.go infer: the parser's
//     error is the reason; internal/gateway outside58 has every variant).
//   - TestOutside58KeyGivenWhole: `strongroom key revoke sr_ID.SECRET` writes the whole key
//     into the transparency log (app/gateway.go RevokeKey records key.revoke with
//     subject.key_id = the argument before it looks the key up) and leaves the key live; it
//     and `key rotate sr_ID.SECRET` print the key back on stderr in the store's "api key
//     sr_ID.SECRET: not found" (store/sql.go GetAPIKey/UpdateAPIKey: `"api key "+id`).

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/testenv"
)

// o58Outputs is every output collected, by channel.
type o58Outputs struct{ names, texts []string }

func (o *o58Outputs) add(name, text string) {
	o.names, o.texts = append(o.names, name), append(o.texts, text)
}

// check searches every output for secrets; files (names starting "file ") report a secret
// once, in the first that holds it.
func (o *o58Outputs) check(t *testing.T, secrets, all []testenv.Secret) {
	t.Helper()
	for _, s := range secrets {
		fileSeen := false
		for i, name := range o.names {
			if strings.HasPrefix(name, "file ") {
				if fileSeen {
					continue
				}
				for _, f := range testenv.SecretForms(s.Text) {
					if strings.Contains(o.texts[i], f) {
						fileSeen = true
					}
				}
			}
			testenv.CheckNoSecrets(t, name, o.texts[i], []testenv.Secret{s}, all)
		}
	}
}

// addDir adds every file of dir but the config (its name and content).
func (o *o58Outputs) addDir(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		o.add("the name of the data directory entry "+rel, rel)
		if rel == config.FileName || !d.Type().IsRegular() {
			return nil
		}
		if st, err := d.Info(); err != nil || st.Size() > 64<<20 {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil {
			o.add("file "+rel+" of the data directory", string(b))
		}
		return nil
	})
}

// o58Run runs a strongroom command as its own process and returns its exit code, stdout
// and stderr (outside57's o57Start).
func o58Run(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	p := o57Start(t, env, args...)
	code := p.wait(t)
	return code, p.out.String(), p.errb.String()
}

// o58Completion is the test engine's completion for a body: "CMPL58" and the body's first
// marker reversed (its own, holding none of the prompt's markers).
func o58Completion(body string) string {
	r := []byte(regexp.MustCompile(`[A-Za-z0-9]*Marker58[A-Za-z0-9]*`).FindString(body))
	slices.Reverse(r)
	return "CMPL58" + string(r)
}

// TestOutside58ServeAssembly: see the file's comment.
func TestOutside58ServeAssembly(t *testing.T) {
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		c := o58Completion(string(b))
		if bytes.Contains(b, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"ext:1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"%s\"}}]}\n\n", c)
			fmt.Fprint(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"ext:1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":4,\"total_tokens\":9}}\n\n")
			fmt.Fprint(w, "data: [DONE]\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"c2","object":"chat.completion","created":0,"model":"ext:1","choices":[{"index":0,"message":{"role":"assistant","content":"%s"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}`, c)
	}))
	defer engine.Close()

	dir := t.TempDir()
	o57In(t, dir, "init", "--internal-country", "US")
	o57In(t, dir, "model", "register", "ext:1", "--classification", "public", "--owner", "o58")
	o57In(t, dir, "route", "set", "ext:1", "--upstream", engine.URL+"/v1")
	o57In(t, dir, "principal", "add", "p", "--tenant", "t", "--roles", "researcher", "--country", "US")
	o57In(t, dir, "principal", "add", "q", "--tenant", "u", "--roles", "researcher", "--country", "US")
	o57In(t, dir, "principal", "add", "r", "--tenant", "t", "--roles", "researcher", "--country", "US")
	key := strings.TrimSpace(o57In(t, dir, "key", "create", "--principal", "p"))
	keyQ := strings.TrimSpace(o57In(t, dir, "key", "create", "--principal", "q"))
	revoked := strings.TrimSpace(o57In(t, dir, "key", "create", "--principal", "r"))
	o57In(t, dir, "key", "revoke", "--principal", "r")
	expired := strings.TrimSpace(o57In(t, dir, "key", "create", "--principal", "p", "--expires", "1ms"))
	joinTok := strings.TrimSpace(o57In(t, dir, "runtime", "token", "--owner", "p", "--env", "dev"))
	secretOf := func(tok string) string { _, s, _ := strings.Cut(tok, "."); return s }
	// A join token with the real id and CA pin and a wrong secret (43 base64url characters).
	jp := strings.Split(joinTok, ".")
	if len(jp) != 3 {
		t.Fatalf("premise: join token %q", testenv.MaskSecrets(joinTok, nil))
	}
	wrongJoin := jp[0] + "." + "JoinWrongMarker58" + strings.Repeat("A", 43-len("JoinWrongMarker58")) + "." + jp[2]
	trace := filepath.Join(t.TempDir(), "trace.jsonl")

	env := []string{"STRONGROOM_DATA=" + dir}
	p := o57Start(t, env, "-v", "serve", "--record-trace", trace, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--custody-listen", "127.0.0.1:0")
	urls := map[string]string{}
	for deadline := time.Now().Add(60 * time.Second); len(urls) < 3; {
		sc := bufio.NewScanner(strings.NewReader(p.out.String()))
		for sc.Scan() {
			for _, k := range []string{"STRONGROOM_URL", "STRONGROOM_ADMIN_URL", "STRONGROOM_CUSTODY_URL"} {
				if v, ok := strings.CutPrefix(sc.Text(), k+"="); ok {
					urls[k] = strings.TrimSuffix(v, "/v1")
				}
			}
		}
		select {
		case <-p.done:
			t.Fatalf("serve ended (exit %d) before serving: %s", p.code, p.errb.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not listening after 60 s: %s", p.errb.String())
		}
	}
	gw, admin, custodyURL := urls["STRONGROOM_URL"], urls["STRONGROOM_ADMIN_URL"], urls["STRONGROOM_CUSTODY_URL"]

	S := func(text, kind string) testenv.Secret { return testenv.Secret{Text: text, Kind: kind} }
	chat := func(content string) string {
		return `{"model":"ext:1","max_tokens":4,"messages":[{"role":"user","content":"` + content + `"}]}`
	}
	type req struct {
		name, method, path, key, body string
		secrets                       []testenv.Secret
		want                          int
	}
	reqs := []req{
		{name: "chat served", path: "/v1/chat/completions", key: key, want: 200, body: `{"model":"ext:1","max_tokens":4,"messages":[` +
			`{"role":"user","name":"NameFieldMarker58","content":"PromptMarker58srv"},` +
			`{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"q\":\"ToolArgMarker58\"}"}}]},` +
			`{"role":"tool","tool_call_id":"c","content":"ToolResultMarker58"}]}`,
			secrets: []testenv.Secret{S("NameFieldMarker58", "a message's name"), S("PromptMarker58srv", "a prompt"), S("ToolArgMarker58", "tool arguments"),
				S("ToolResultMarker58", "a tool result"), S(o58Completion("NameFieldMarker58"), "a completion")}},
		{name: "chat stream served", path: "/v1/chat/completions", key: key, want: 200,
			body:    `{"model":"ext:1","max_tokens":4,"stream":true,"messages":[{"role":"user","content":"StreamPromptMarker58"}]}`,
			secrets: []testenv.Secret{S("StreamPromptMarker58", "a streamed request's prompt"), S(o58Completion("StreamPromptMarker58"), "a streamed completion")}},
		{name: "duplicate member name", path: "/v1/chat/completions", key: key, want: 400,
			body:    `{"model":"ext:1","messages":[{"role":"user","content":"hi","DupNameMarker58":1,"DupNameMarker58":2}]}`,
			secrets: []testenv.Secret{S("DupNameMarker58", "a member name written twice in a message")}},
		{name: "truncated body", path: "/v1/chat/completions", key: key, want: 400,
			body: `{"model":"ext:1","messages":[{"role":"user","content":"TruncPromptMarker58`, secrets: []testenv.Secret{S("TruncPromptMarker58", "a truncated body's prompt")}},
		{name: "oversized body", path: "/v1/chat/completions", key: key, want: 413,
			body: chat("BigPromptMarker58 " + strings.Repeat("x", 5<<20)), secrets: []testenv.Secret{S("BigPromptMarker58", "an oversized body's prompt")}},
		{name: "unknown model", path: "/v1/chat/completions", key: key, want: 404,
			body: `{"model":"nosuch","messages":[{"role":"user","content":"UnroutedPromptMarker58"}]}`, secrets: []testenv.Secret{S("UnroutedPromptMarker58", "a prompt for an unrouted model")}},
		{name: "unknown key", path: "/v1/chat/completions", key: "sr_0123456789abcdef." + "TokUnknownMarker58" + strings.Repeat("A", 43-18), want: 401,
			body: chat("UnauthPromptMarker58"), secrets: []testenv.Secret{S("TokUnknownMarker58", "an unknown key's secret"), S("UnauthPromptMarker58", "an unauthenticated prompt")}},
		{name: "malformed key", path: "/v1/chat/completions", key: "sr_TokMalformedMarker58", want: 401, body: chat("hi"),
			secrets: []testenv.Secret{S("TokMalformedMarker58", "a malformed key")}},
		{name: "revoked key", path: "/v1/chat/completions", key: revoked, want: 401, body: chat("hi"),
			secrets: []testenv.Secret{S(secretOf(revoked), "a revoked key's secret")}},
		{name: "expired key", path: "/v1/chat/completions", key: expired, want: 401, body: chat("hi"),
			secrets: []testenv.Secret{S(secretOf(expired), "an expired key's secret")}},
		{name: "models, malformed key", method: "GET", path: "/v1/models", key: "sr_TokModelsMarker58", want: 401,
			secrets: []testenv.Secret{S("TokModelsMarker58", "a malformed key on /v1/models")}},
		{name: "models, revoked key", method: "GET", path: "/v1/models", key: revoked, want: 401,
			secrets: []testenv.Secret{S(secretOf(revoked), "a revoked key's secret on /v1/models")}},
		{name: "watermark detect, malformed key", path: "ADMIN/v1/watermark/detect", key: "sr_TokWmMarker58", want: 401,
			body: `{"text":"WmTextMarker58"}`, secrets: []testenv.Secret{S("TokWmMarker58", "a malformed key on the control API"), S("WmTextMarker58", "a text sent for watermark detection")}},
		{name: "watermark detect", path: "ADMIN/v1/watermark/detect", key: key, want: 0,
			body: `{"text":"WmCompletionMarker58 is what the model said"}`, secrets: []testenv.Secret{S("WmCompletionMarker58", "a completion sent for watermark detection")}},
		{name: "another tenant, served", path: "/v1/chat/completions", key: keyQ, want: 200, body: chat("OtherTenantMarker58"),
			secrets: []testenv.Secret{S("OtherTenantMarker58", "another tenant's prompt"), S(o58Completion("OtherTenantMarker58"), "another tenant's completion")}},
	}
	answers := make([]string, len(reqs))
	hc := &http.Client{Timeout: 30 * time.Second}
	recorded := 0
	for i, r := range reqs {
		method := r.method
		if method == "" {
			method = http.MethodPost
		}
		u := gw + r.path
		if rest, ok := strings.CutPrefix(r.path, "ADMIN"); ok {
			u = admin + rest
		}
		hr, _ := http.NewRequest(method, u, strings.NewReader(r.body))
		hr.Header.Set("Authorization", "Bearer "+r.key)
		hr.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(hr)
		if err != nil {
			t.Errorf("premise: %s: %v", r.name, err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var h bytes.Buffer
		resp.Header.Write(&h)
		answers[i] = resp.Status + "\n" + h.String() + "\n" + string(b)
		if r.want != 0 && resp.StatusCode != r.want {
			t.Errorf("premise: %s: %d, want %d: %.300s", r.name, resp.StatusCode, r.want, testenv.MaskSecrets(string(b), nil))
		}
		if resp.StatusCode != 401 && !strings.HasPrefix(r.path, "ADMIN") {
			recorded++
		}
	}
	if !strings.Contains(answers[0], o58Completion("NameFieldMarker58")) {
		t.Errorf("premise: the engine's completion did not reach the caller: %.300s", answers[0])
	}

	// Join tokens: malformed (refused by the client) and the real id and pin with a wrong
	// secret (refused by the custody API, which records the attempt).
	jdir := t.TempDir()
	cliOut := map[string][3]string{}
	for name, tok := range map[string]string{"malformed": "srj_JoinMalformedMarker58", "wrong secret": wrongJoin} {
		code, out, errb := o58Run(t, env, "runtime", "join", "--token", tok, "--server", custodyURL, "--dir", filepath.Join(jdir, strings.ReplaceAll(name, " ", "")))
		if code == 0 {
			t.Errorf("premise: runtime join with a %s token succeeded", name)
		}
		cliOut["runtime join, "+name+" token"] = [3]string{tok, out, errb}
	}
	if e := cliOut["runtime join, wrong secret token"][2]; !strings.Contains(e, "wrong token secret") {
		t.Errorf("premise: the wrong join secret did not reach the custody API: %s", testenv.MaskSecrets(e, nil))
	}

	// The control plane, and the log over HTTP once it holds every record.
	healthz := o57Do(t, "GET", admin+"/healthz", "", "")
	var logText strings.Builder
	for deadline := time.Now().Add(60 * time.Second); ; {
		logText.Reset()
		got := o58ReadLog(t, hc, admin, &logText)
		if got >= recorded {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("premise: /log/ holds %d request records after 60 s, want %d", got, recorded)
		}
		time.Sleep(100 * time.Millisecond)
	}
	metrics := o57Do(t, "GET", admin+"/metrics", "", "")
	s := &o57Serving{o57Proc: p, gw: gw, admin: admin}
	s.stop(t)
	_, search, searchErr := o58Run(t, env, "--json", "audit", "search")
	if !strings.Contains(search, "gateway.request") {
		t.Errorf("premise: audit search lists no request records: %.300s", search)
	}
	traceB, _ := os.ReadFile(trace)
	if !bytes.Contains(traceB, []byte(`"prompt":"hmac-sha256:`)) {
		t.Errorf("premise: the trace holds no prompt digests: %.300s", traceB)
	}

	var outs o58Outputs
	outs.add("serve's stdout", p.out.String())
	outs.add("serve's log on stderr (-v)", p.errb.String())
	outs.add("/healthz", healthz)
	outs.add("/metrics", metrics)
	outs.add("the transparency log read over HTTP (/log/checkpoint, entries, batches)", logText.String())
	outs.add("the stdout of `audit search --json`", search)
	outs.add("the stderr of `audit search --json`", searchErr)
	outs.add("the trace file (--record-trace, without --record-prompts)", string(traceB))
	outs.addDir(dir)
	var all []testenv.Secret
	for _, r := range reqs {
		all = append(all, r.secrets...)
	}
	for name, c := range cliOut {
		all = append(all, S(c[0], "a join token ("+name+")"))
	}
	all = append(all, S("JoinMalformedMarker58", "a malformed join token"), S("JoinWrongMarker58", "a join token's wrong secret"))
	ambient := []testenv.Secret{S(secretOf(key), "p's valid key secret"), S(secretOf(keyQ), "q's valid key secret"), S(jp[1], "the join token's real secret")}
	all = append(all, ambient...)
	t.Run("valid keys and the join token's secret", func(t *testing.T) {
		outs.check(t, ambient, all)
		for i, r := range reqs {
			testenv.CheckNoSecrets(t, "the answer to "+r.name, answers[i], ambient, all)
		}
	})
	for i, r := range reqs {
		t.Run(r.name, func(t *testing.T) {
			outs.check(t, r.secrets, all)
			for j, o := range reqs {
				if j != i && answers[j] != answers[i] {
					testenv.CheckNoSecrets(t, "the answer to another request ("+o.name+")", answers[j], r.secrets, all)
				}
			}
		})
	}
	t.Run("join tokens", func(t *testing.T) {
		js := []testenv.Secret{S("JoinMalformedMarker58", "a malformed join token"), S("JoinWrongMarker58", "a join token's wrong secret")}
		outs.check(t, js, all)
		for name, c := range cliOut {
			testenv.CheckNoSecrets(t, "the stdout of `runtime join` ("+name+")", c[1], js, all)
			testenv.CheckNoSecrets(t, "the stderr of `runtime join` ("+name+")", c[2], js, all)
		}
	})
	if os.Getenv("O58_DEBUG") != "" {
		t.Logf("serve stderr:\n%s", testenv.MaskSecrets(p.errb.String(), all))
		t.Logf("log:\n%.3000s", testenv.MaskSecrets(logText.String(), all))
		for i, r := range reqs {
			t.Logf("%s: %.300s", r.name, testenv.MaskSecrets(answers[i], all))
		}
	}
}

// o58ReadLog reads the log at admin/log/ as an outsider does — the checkpoint, the entry
// bundle (one partial bundle: these tests write under 256 entries) and every request batch
// an entry names — into w, and returns how many request records the batches hold.
func o58ReadLog(t *testing.T, hc *http.Client, admin string, w *strings.Builder) int {
	get := func(path string) []byte {
		resp, err := hc.Get(admin + "/log/" + path)
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return nil
		}
		return b
	}
	cp := get("checkpoint")
	w.Write(cp)
	lines := strings.Split(string(cp), "\n")
	if len(lines) < 2 {
		return 0
	}
	size, err := strconv.Atoi(lines[1])
	if err != nil || size == 0 || size >= 256 {
		return 0
	}
	bundle := get(fmt.Sprintf("tile/entries/000.p/%d", size))
	w.Write(bundle)
	records := 0
	for _, m := range regexp.MustCompile(`"kind":"audit\.batch".*?"bundle":"([0-9a-f]{64})"`).FindAllSubmatch(bundle, -1) {
		b := get("batches/" + string(m[1]))
		w.Write(b)
		records += bytes.Count(b, []byte(`"kind":"gateway.request"`))
	}
	return records
}

// TestOutside58KeyGivenWhole: `key revoke` and `key rotate` given a whole API key
// ("sr_ID.SECRET", what a leaked key looks like) instead of its id. Neither may write the
// secret anywhere: not the transparency log, not `audit search`, not a file, not stdout or
// stderr (a CI job's log).
func TestOutside58KeyGivenWhole(t *testing.T) {
	dir := t.TempDir()
	o57In(t, dir, "init")
	o57In(t, dir, "principal", "add", "p", "--tenant", "t", "--roles", "researcher", "--country", "US")
	toRevoke := strings.TrimSpace(o57In(t, dir, "key", "create", "--principal", "p"))
	toRotate := strings.TrimSpace(o57In(t, dir, "key", "create", "--principal", "p"))
	secretOf := func(tok string) string { _, s, _ := strings.Cut(tok, "."); return s }
	all := []testenv.Secret{{Text: secretOf(toRevoke), Kind: "an API key given whole to `key revoke`"}, {Text: secretOf(toRotate), Kind: "an API key given whole to `key rotate`"}}
	env := []string{"STRONGROOM_DATA=" + dir}
	var outs o58Outputs
	for _, c := range []struct {
		args []string
	}{{[]string{"-v", "key", "revoke", toRevoke}}, {[]string{"-v", "key", "rotate", toRotate}}, {[]string{"-v", "--json", "key", "rotate", toRotate}}} {
		code, out, errb := o58Run(t, env, c.args...)
		what := "`strongroom " + testenv.MaskSecrets(strings.Join(c.args, " "), all) + "`"
		outs.add("the stdout of "+what, out)
		outs.add("the stderr of "+what, errb)
		if code == 0 {
			t.Logf("note: %s succeeded", what)
		}
	}
	_, search, _ := o58Run(t, env, "--json", "audit", "search")
	outs.add("the stdout of `audit search --json` (the transparency log's entries)", search)
	outs.addDir(dir)
	if ks := o57In(t, dir, "--json", "key", "ls", "--principal", "p"); strings.Count(ks, `"revoked_at": "0001`) == 2 || !strings.Contains(ks, "revoked") {
		t.Logf("note: after `key revoke` given the whole key, p's keys: %.600s", testenv.MaskSecrets(ks, all))
	}
	for _, s := range all {
		t.Run(s.Kind, func(t *testing.T) { outs.check(t, []testenv.Secret{s}, all) })
	}
}
