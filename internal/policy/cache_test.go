package policy

import (
	"math/rand/v2"
	"reflect"
	"testing"
)

// randomRequest draws from small alphabets, so that requests repeat (cache hits) and
// differ in one field at a time (keys must tell them apart).
func randomRequest(rng *rand.Rand) Request {
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	list := func(xs ...string) []string {
		var out []string
		for _, x := range xs {
			if rng.IntN(2) == 0 {
				out = append(out, x)
			}
		}
		return out
	}
	return Request{
		Action: pick(ActionInfer, "list", ActionWatermarkDetect),
		Principal: Principal{ID: pick("alice", "bob"), Tenant: pick("acme", "globex"), Org: pick("", "Acme"),
			Country: pick("US", "DE", "CN", ""), Screening: pick("clear", "pending", "denied"), Roles: list("researcher", "admin", "licensee")},
		Model: Model{Name: pick("m", "n"), Classification: pick("public", "restricted", "export-controlled:4E091"),
			AllowedCountries: list("US", "DE"), DeniedCountries: list("CN", "RU")},
		Context: Context{Endpoint: pick("chat.completions", "completions"), ClientCountry: pick("US", "DE", "CN", ""),
			IP: pick("10.0.0.1", "192.0.2.7"), HourUTC: rng.IntN(3), MFAAgeS: int64(rng.IntN(3)) - 1,
			Stream: rng.IntN(2) == 0, Logprobs: rng.IntN(2) == 0, TopLogprobs: rng.IntN(3), LogitBias: rng.IntN(2) == 0,
			N: 1 + rng.IntN(2), MaxTokens: 16 * rng.IntN(3), TemperatureMilli: int64(rng.IntN(3)) - 1},
	}
}

// TestDecisionCache: the cached Decide answers exactly what Cedar answers, for requests
// seen before and new ones alike (differential over the baseline policies).
func TestDecisionCache(t *testing.T) {
	s, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	allow := 0
	for i := range 20000 {
		r := randomRequest(rng)
		got, want := s.Decide(r), s.decide(r)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("request %d %+v: cached %+v, Cedar %+v", i, r, got, want)
		}
		if got.Allow {
			allow++
		}
	}
	if allow == 0 || allow == 20000 {
		t.Fatalf("%d of 20000 allowed: the requests do not exercise the policies", allow)
	}
	// Lists are length-prefixed: one role "a,b" is not two roles "a" and "b".
	a := Request{Principal: Principal{Roles: []string{"researcher,admin"}}}
	b := Request{Principal: Principal{Roles: []string{"researcher", "admin"}}}
	if string(a.appendKey(nil)) == string(b.appendKey(nil)) {
		t.Fatal("different role lists share a cache key")
	}
	c := Request{Principal: Principal{ID: "a", Tenant: "b"}}
	d := Request{Principal: Principal{ID: "a:1", Tenant: ""}}
	if string(c.appendKey(nil)) == string(d.appendKey(nil)) {
		t.Fatal("different principals share a cache key")
	}
}

// aliceRequest is a gateway request of a researcher for model m of classification.
func aliceRequest(classification string) Request {
	return Request{Action: ActionInfer, Principal: Principal{ID: "alice", Tenant: "acme", Country: "US", Screening: "clear", Roles: []string{"researcher"}},
		Model: Model{Name: "m", Classification: classification}, Context: Context{Endpoint: "chat.completions", ClientCountry: "US", IP: "10.0.0.1", MFAAgeS: -1, N: 1, TemperatureMilli: -1}}
}

// TestCachedDecisionAllocates nothing: every request of the gateway asks.
func TestCachedDecisionAllocates(t *testing.T) {
	s, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	r := aliceRequest("public")
	d := s.Decide(r)
	if !d.Allow || d.Reason() != s.decide(r).reasonText() {
		t.Fatalf("decision %+v, reason %q", d, d.Reason())
	}
	if allocs := testing.AllocsPerRun(50, func() { s.Decide(r).Reason() }); allocs != 0 {
		t.Errorf("a cached decision and its reason: %.0f allocations, want 0", allocs)
	}
}

// BenchmarkDecideCache: a repeated request from the cache, next to Cedar's evaluation.
//
//	go test -run XXX -bench DecideCache ./internal/policy
func BenchmarkDecideCache(b *testing.B) {
	s, err := Load("")
	if err != nil {
		b.Fatal(err)
	}
	r := aliceRequest("restricted")
	b.Run("cedar", func(b *testing.B) {
		for b.Loop() {
			s.decide(r)
		}
	})
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			s.Decide(r)
		}
	})
}
