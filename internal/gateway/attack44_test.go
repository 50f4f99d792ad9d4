package gateway

// Outside round 44: request records written by the real gateway through a real written
// audit.Batcher (records framed in the journal segment's own buffer, which is recycled
// once folded and indexed), from many concurrent requests of principals of different
// tenants: each request's record must be in the log and its index once, with its own
// principal, tenant and prompt HMAC.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/store"
)

func a44Post(url, key, body string) (int, error) {
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// TestAttack44GatewayTenantsRecords: 3 principals of 2 tenants, 6 clients each, 25
// requests a client (streamed and not, prompts of very different lengths), through the
// gateway to a written batcher whose segments close every 7 records or 10 ms; then every
// request answered 200 must have exactly one gateway.request record in the index, whose
// principal, tenant and prompt_hmac are the request's, and whose bytes are canonical.
func TestAttack44GatewayTenantsRecords(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.RecordAnswers = true })
	ctx := context.Background()
	f.st.PutPrincipal(ctx, store.Principal{ID: "carol", Tenant: "globex", Roles: []string{"researcher"}, Screening: "clear"})
	carol, _, err := f.gw.cfg.Auth.(*authn.Keys).Create(ctx, "carol", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	jdir := filepath.Join(t.TempDir(), "journal")
	b := audit.NewBatcher(f.log, audit.DirBundles{Dir: f.logDir}, audit.BatcherConfig{MaxRecords: 7, FoldEvery: 10 * time.Millisecond,
		Journal: jdir, JournalKey: []byte("a44 journal key, thirty-two bytes"), Written: true, SyncEvery: time.Millisecond})
	t.Cleanup(b.Close)
	f.gw.cfg.Records = b
	type sender struct{ who, tenant, key string }
	senders := []sender{{"alice", "acme", f.alice}, {"bob", "acme", f.bob}, {"carol", "globex", carol}}
	type sent struct {
		who, tenant, digest string
		status              int
	}
	var mu sync.Mutex
	var all []sent
	url := f.srv.URL + "/v1/chat/completions"
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for si, s := range senders {
		for c := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 25 {
					n := []int{1, 40, 900, 6000}[(si+c+i)%4]
					prompt := fmt.Sprintf("%s-%d-%d-", s.who, c, i) + strings.Repeat(string(rune('a'+(c+i)%26)), n)
					stream := ""
					if i%3 == 0 {
						stream = `"stream":true,`
					}
					body := fmt.Sprintf(`{"model":"demo","max_tokens":2,%s"messages":[{"role":"user","content":%q}]}`, stream, prompt)
					st, err := a44Post(url, s.key, body)
					if err != nil {
						errs <- err
						return
					}
					feat, err := parseRequest([]byte(body), "chat")
					if err != nil {
						errs <- err
						return
					}
					d := f.gw.cfg.Redactor.Digest(string(feat.prompt()))
					mu.Lock()
					all = append(all, sent{s.who, s.tenant, d, st})
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if _, _, err := b.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if err := f.log.Close(ctx); err != nil { // its last catch-up indexes what is left
		t.Fatal(err)
	}
	got, err := f.st.SearchAudit(ctx, store.AuditQuery{Kind: string(audit.KindRequest)})
	if err != nil {
		t.Fatal(err)
	}
	byDigest := map[string][]*audit.Event{}
	for _, r := range got {
		ev, err := parseRecord(r)
		if err != nil {
			t.Errorf("index row %d: %v", r.Index, err)
			continue
		}
		byDigest[ev.Fields["prompt_hmac"]] = append(byDigest[ev.Fields["prompt_hmac"]], ev)
	}
	ok := 0
	for _, s := range all {
		if s.status != 200 {
			continue
		}
		ok++
		evs := byDigest[s.digest]
		if len(evs) != 1 {
			t.Errorf("%s's request (prompt %s…): %d records in the index", s.who, s.digest[:12], len(evs))
			continue
		}
		if ev := evs[0]; ev.Actor["principal"] != s.who || ev.Actor["tenant"] != s.tenant {
			t.Errorf("%s's (%s) request is recorded as %s's of %s", s.who, s.tenant, ev.Actor["principal"], ev.Actor["tenant"])
		}
	}
	if ok < len(all)/2 {
		t.Fatalf("only %d of %d requests answered 200", ok, len(all))
	}
	t.Logf("%d requests (%d answered 200), %d request records in the index", len(all), ok, len(got))
}
