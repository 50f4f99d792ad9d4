package detect

// Outside round 57 (helper): alerts.webhook may carry a credential — a password in its
// userinfo, or (a capability URL, as chat services issue them) a token in its path. When
// an incident's webhook call fails, the failure is logged (stderr, to the log collector):
// the credential must not be in that line.

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/obs"
	"github.com/strongroom/strongroom/internal/testenv"
)

const o57Hook = "S3cretMarker57hook"

// o57Incident raises one logit-harvest incident through a Responder whose webhook is hook
// and returns what the Responder logged.
func o57Incident(t *testing.T, hook string) string {
	t.Helper()
	var buf testenv.LogBuffer
	r := NewResponder(New(Config{HarvestTokens: 10}), ResponderConfig{Audit: &seqAudit{}, Webhook: hook, WebhookSecret: []byte("k"),
		Duration: time.Hour, Log: slog.New(slog.NewJSONHandler(&buf, nil))})
	now := time.Now().UTC()
	for i := range 3 {
		bias := map[string]float64{}
		for k := range 5 {
			bias[string(rune('0'+i))+string(rune('0'+k))] = 100
		}
		r.Observe(obs.Observation{TS: now, Principal: "mallory", Model: "m", Prompt: []byte("p"), Logprobs: true, TopLogprobs: 5, LogitBias: bias})
	}
	r.Wait()
	if !strings.Contains(buf.String(), "webhook failed") {
		t.Fatalf("no webhook failure logged: the path was not exercised: %s", buf.String())
	}
	return buf.String()
}

func TestOutside57WebhookURL(t *testing.T) {
	for _, c := range []struct{ name, hook string }{
		// A malformed URL: net/url's error quotes it whole.
		{"userinfo_bad_port", "https://strongroom:" + o57Hook + "@127.0.0.1:44x3/incident"},
		// Unreachable: net/http's error masks the userinfo password.
		{"userinfo_unreachable", "http://strongroom:" + o57Hook + "@127.0.0.1:1/incident"},
		// A capability URL (the secret is the path): the error quotes the URL.
		{"token_in_path_unreachable", "http://127.0.0.1:1/services/T0/B0/" + o57Hook},
	} {
		t.Run(c.name, func(t *testing.T) {
			logged := o57Incident(t, c.hook)
			if i := strings.Index(logged, o57Hook); i >= 0 {
				lo, hi := max(0, i-160), min(len(logged), i+len(o57Hook)+80)
				t.Errorf("LEAK: the webhook's credential is in the log line of a failed webhook call: …%s…",
					strings.ReplaceAll(logged[lo:hi], o57Hook, "<SECRET>"))
			}
		})
	}
}
