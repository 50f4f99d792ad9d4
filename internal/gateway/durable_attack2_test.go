package gateway

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/store"
)

// TestAttackAcknowledgedMeansRecordedUnderRace: many clients race JSON answers, streams,
// denied requests and streams their clients abandon, each request under a principal of
// its own, with a short group delay and CommitNow. When a client holds a whole JSON answer
// or a stream's [DONE], that request's record is in a batch bundle on disk; when it holds
// a stream's first bytes, its start record is. At the end every request has exactly one
// gateway.request record in the search index (none lost, none doubled), and every allowed
// stream exactly one start record.
func TestAttackAcknowledgedMeansRecordedUnderRace(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.RecordAnswers = true })
	b := audit.NewBatcher(f.log, audit.DirBundles{Dir: f.logDir}, audit.BatcherConfig{MaxDelay: 20 * time.Millisecond})
	t.Cleanup(b.Close)
	f.gw.cfg.Records = b
	ctx := context.Background()
	keys := f.gw.cfg.Auth.(*authn.Keys)
	const clients, each = 6, 8
	tokens := map[string]string{}
	for c := range clients {
		for k := range each {
			id := fmt.Sprintf("r%d-%d", c, k)
			if err := f.st.PutPrincipal(ctx, store.Principal{ID: id, Tenant: "acme", Roles: []string{"researcher"}, Screening: "clear"}); err != nil {
				t.Fatal(err)
			}
			tok, _, err := keys.Create(ctx, id, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			tokens[id] = tok
		}
	}
	var bundleMu sync.Mutex // one scan at a time (cheaper for 2 cores)
	durable := func(id, kind string) int {
		bundleMu.Lock()
		defer bundleMu.Unlock()
		re := regexp.MustCompile(`"kind":"` + regexp.QuoteMeta(kind) + `","actor":\{"key_id":"[^"]*","principal":"` + regexp.QuoteMeta(id) + `",`)
		n := 0
		filepath.WalkDir(filepath.Join(f.logDir, "batches"), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				raw, _ := os.ReadFile(p)
				n += len(re.FindAllIndex(raw, -1))
			}
			return nil
		})
		return n
	}
	url := f.srv.URL + "/v1/chat/completions"
	var wg sync.WaitGroup
	errs := make(chan string, clients*each)
	for c := range clients {
		wg.Go(func() {
			for k := range each {
				id := fmt.Sprintf("r%d-%d", c, k)
				op := (c + k) % 4
				model, stream := "demo", op == 1 || op == 3
				if op == 2 {
					model = "nosuch" // denied
				}
				body := fmt.Sprintf(`{"model":%q,"max_tokens":4,"stream":%v,"messages":[{"role":"user","content":"hi %s"}]}`, model, stream, id)
				rctx, cancel := context.WithCancel(ctx)
				req, _ := http.NewRequestWithContext(rctx, http.MethodPost, url, strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+tokens[id])
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					cancel()
					errs <- id + ": " + err.Error()
					continue
				}
				br := bufio.NewReader(resp.Body)
				switch {
				case op == 2:
					if resp.StatusCode == 200 {
						errs <- id + ": an unknown model was served"
					}
				case !stream:
					var all bytes.Buffer
					all.ReadFrom(br)
					if resp.StatusCode == 200 && bytes.Contains(all.Bytes(), []byte(`"choices"`)) && durable(id, "gateway.request") != 1 {
						errs <- id + ": JSON answer received before its record was durable"
					}
				default:
					if _, err := br.ReadString('\n'); err == nil && resp.StatusCode == 200 && durable(id, "gateway.stream_start") != 1 {
						errs <- id + ": stream's first bytes before its start record was durable"
					}
					if op == 3 {
						cancel() // the client goes away mid-stream
						break
					}
					var rest bytes.Buffer
					rest.ReadFrom(br)
					if strings.Contains(rest.String(), "data: [DONE]") && durable(id, "gateway.request") != 1 {
						errs <- id + ": [DONE] received before the request's record was durable"
					}
				}
				resp.Body.Close()
				cancel()
			}
		})
	}
	wg.Wait()
	for f.gw.inflight.Load() > 0 { // abandoned streams' handlers end
		time.Sleep(time.Millisecond)
	}
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	b.Close()
	if err := f.log.Close(ctx); err != nil { // and the index caught up
		t.Fatal(err)
	}
	for c := range clients {
		for k := range each {
			id := fmt.Sprintf("r%d-%d", c, k)
			op := (c + k) % 4
			for _, kind := range []string{"gateway.request", "gateway.stream_start"} {
				want := 1
				if kind == "gateway.stream_start" && (op == 0 || op == 2) {
					want = 0
				}
				evs, err := f.st.SearchAudit(ctx, store.AuditQuery{Principal: id, Kind: kind})
				if err != nil {
					t.Fatal(err)
				}
				if len(evs) != want {
					t.Errorf("%s (op %d): %d %s records indexed, want %d", id, op, len(evs), kind, want)
				}
				if n := durable(id, kind); n != want {
					t.Errorf("%s (op %d): %d %s records in bundles, want %d", id, op, n, kind, want)
				}
			}
		}
	}
}
