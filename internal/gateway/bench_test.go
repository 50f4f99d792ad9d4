package gateway

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/obs"
	"github.com/strongroom/strongroom/internal/refmodel"
	"github.com/strongroom/strongroom/internal/testenv"
)

type nopDetector struct{}

func (nopDetector) Observe(obs.Observation) {}

// load sends b.N requests from `conns` goroutines and reports req/s, p50/p99 latency and
// the process's CPU per request (client, server and upstream share the process, so the
// CPU figure is comparable between rows, not an absolute gateway cost).
func load(b *testing.B, target, key string, conns int) {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxIdleConns: conns}
	client := &http.Client{Transport: tr}
	body := `{"model":"demo","max_tokens":256,"messages":[{"role":"user","content":"hello there"}]}`
	var mu sync.Mutex
	var lat []time.Duration
	next := make(chan struct{}, conns)
	var wg sync.WaitGroup
	cpu0 := testenv.CPUTime()
	b.ResetTimer()
	for range conns {
		wg.Go(func() {
			var mine []time.Duration
			for range next {
				t0 := time.Now()
				req, _ := http.NewRequest(http.MethodPost, target+"/v1/chat/completions", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				if key != "" {
					req.Header.Set("Authorization", "Bearer "+key)
				}
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Errorf("status %d", resp.StatusCode)
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	for range b.N {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	b.StopTimer()
	cpu := testenv.CPUTime() - cpu0
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/req")
}

// BenchmarkProxy: direct to the upstream, a tuned bare httputil.ReverseProxy, and the
// gateway with its whole pipeline, against an upstream returning a 1 KiB completion.
func BenchmarkProxy(b *testing.B) {
	const conns = 64
	upstream := httptest.NewServer(&refmodel.Server{Name: "demo", Fixed: strings.Repeat("x", 1024)})
	defer upstream.Close()
	b.Run("direct", func(b *testing.B) { load(b, upstream.URL, "", conns) })

	u, _ := url.Parse(upstream.URL)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}
	bare := httptest.NewServer(rp)
	defer bare.Close()
	b.Run("bare-reverseproxy", func(b *testing.B) { load(b, bare.URL, "", conns) })

	b.Run("gateway", func(b *testing.B) {
		f := newFixture(b, func(c *Config) {
			c.Routes = []Route{{Model: "demo", Upstreams: []string{upstream.URL + "/v1"}}}
			c.Detector = nopDetector{}
		})
		defer f.log.Close(context.Background())
		load(b, f.srv.URL, f.alice, conns)
	})
}

// nopAudit accepts every event without recording it: the "log off" row.
type nopAudit struct{}

func (nopAudit) Submit(context.Context, audit.Event) audit.Future {
	return func() (uint64, error) { return 0, nil }
}
func (nopAudit) Healthy() error { return nil }

// BenchmarkAuditCost: the gateway with its transparency log off, with one log entry per
// request, with request records in batches whose answers wait for their batch entry (a
// fleet's replicas: audit.Batcher, RecordAnswers), and whose answers wait for the journal
// (what `serve` runs on a log on local disk), same run; the search index is on in all.
func BenchmarkAuditCost(b *testing.B) {
	const conns = 64
	upstream := httptest.NewServer(&refmodel.Server{Name: "demo", Fixed: strings.Repeat("x", 1024)})
	defer upstream.Close()
	for _, mode := range []string{"off", "per-request", "batched-async", "batched", "journal"} {
		b.Run("log="+mode, func(b *testing.B) {
			var batcher *audit.Batcher
			f := newFixture(b, func(c *Config) {
				c.Routes = []Route{{Model: "demo", Upstreams: []string{upstream.URL + "/v1"}}}
				switch mode {
				case "off":
					c.Audit = nopAudit{}
				case "batched", "journal":
					c.RecordAnswers = true
				}
			})
			if mode != "off" && mode != "per-request" {
				bc := audit.BatcherConfig{}
				if mode == "journal" {
					bc.Journal = filepath.Join(f.logDir, "journal")
				}
				batcher = audit.NewBatcher(f.log, audit.DirBundles{Dir: f.logDir}, bc)
				f.gw.cfg.Records = batcher
				defer batcher.Close()
			}
			load(b, f.srv.URL, f.alice, conns)
		})
	}
}

type discardRW struct{ h http.Header }

func (d *discardRW) Header() http.Header         { return d.h }
func (d *discardRW) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardRW) WriteHeader(int)             {}
func (d *discardRW) Flush()                      {}

// BenchmarkStreamChunks passes N server-sent events through the gateway's stream loop;
// allocations per chunk are the slope of allocs/op between the two sizes (the issue asks
// for none per chunk).
func BenchmarkStreamChunks(b *testing.B) {
	chunk := `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"token"}}]}` + "\n\n"
	red, _ := audit.NewRedactor(make([]byte, 32))
	g := &Gateway{}
	for _, n := range []int{256, 1024} {
		body := strings.Repeat(chunk, n) + "data: [DONE]\n\n"
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
			w := &discardRW{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				st := &reqState{status: 200, outHash: red.NewHash()}
				g.stream(context.Background(), w, strings.NewReader(body), st)
			}
		})
	}
}

// BenchmarkMetricsObserve: what counting one finished request costs (five series: request,
// latency, upstream latency, two token counters), to set next to a request's whole CPU
// (BenchmarkGatewayVsReverseProxy, same run).
func BenchmarkMetricsObserve(b *testing.B) {
	m := newMetrics()
	st := &reqState{start: time.Now(), endpoint: "chat", route: &Route{Model: "demo"}, upstreamWait: time.Millisecond,
		usage: Usage{PromptTokens: 12, CompletionTokens: 40}}
	for b.Loop() {
		m.observe(st, st.start.Add(3*time.Millisecond))
	}
}

// BenchmarkShapeChunk: the logprob shaper on one chat stream chunk with top_logprobs 5
// (what every chunk of a stream that asks for logprobs costs it), CPU per chunk.
func BenchmarkShapeChunk(b *testing.B) {
	s := &logprobShaper{decimals: 2, sigma: 0.5, key: []byte("k"), ctx: []byte("alice")}
	chunk := []byte(`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" the"},` +
		`"logprobs":{"content":[{"token":" the","logprob":-0.0312,"bytes":[32,116,104,101],"top_logprobs":[` +
		`{"token":" the","logprob":-0.0312,"bytes":[32,116,104,101]},{"token":" a","logprob":-3.52,"bytes":[32,97]},` +
		`{"token":" this","logprob":-5.1,"bytes":[32,116,104,105,115]},{"token":" that","logprob":-6.25,"bytes":[32,116,104,97,116]},` +
		`{"token":" an","logprob":-7.5,"bytes":[32,97,110]}]}]},"finish_reason":null}]}`)
	cpu0 := testenv.CPUTime()
	for b.Loop() {
		if _, ok := s.rewrite(chunk); !ok {
			b.Fatal("not parsed")
		}
	}
	b.ReportMetric(float64((testenv.CPUTime()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/chunk")
}
