package web_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestComplianceDownload: the console downloads the compliance report the CLI makes, for
// the period asked; a period the log does not cover is refused with the reason; only a
// signed-in user with the view permission gets it.
func TestComplianceDownload(t *testing.T) {
	h := newHarness(t, nil)
	anon := h.browser(t)
	if res, _ := anon.get("/console/reports/compliance?format=json"); res.StatusCode == http.StatusOK {
		t.Fatal("the report was served without signing in")
	}
	b := h.browser(t)
	b.signIn(h.admin)
	res, body := b.get("/console/reports/compliance?format=json")
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "application/json" ||
		!strings.HasPrefix(res.Header.Get("Content-Disposition"), "attachment;") || !strings.Contains(body, `"format": "strongroom.compliance/v1"`) {
		t.Fatalf("json report: %s %s %q\n%.300s", res.Status, res.Header.Get("Content-Type"), res.Header.Get("Content-Disposition"), body)
	}
	res, body = b.get("/console/reports/compliance")
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(body, "%PDF-") {
		t.Fatalf("pdf report: %s %.40q", res.Status, body)
	}
	res, body = b.get("/console/reports/compliance?from=2000-01-01&format=csv")
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(body, "the log begins at") {
		t.Fatalf("a period before the log: %s %.300s", res.Status, body)
	}
	if res, _ := b.get("/console/reports/compliance?format=docx"); res.StatusCode != http.StatusBadRequest {
		t.Fatalf("an unknown format: %s", res.Status)
	}
}
