package limits

import (
	"errors"
	"strings"
	"testing"
)

// TestAdmitAnswerShapes: Redis's answer to the admission is outside data; a shape admit.lua
// never returns is an error (the gateway refuses or falls back), never a panic or an
// admission.
func TestAdmitAnswerShapes(t *testing.T) {
	scopes := []Scope{{Name: "key:a"}, {Name: "tenant:t"}, {Name: "model:m"}}
	for _, tc := range []struct {
		name    string
		res     []any
		day     string
		deniedN string
	}{
		{"admitted", []any{int64(0), "2026-12-07"}, "2026-12-07", ""},
		{"refused on the model", []any{int64(3), "concurrent", int64(1000)}, "", "model:m"},
		{"empty", []any{}, "", ""},
		{"one element", []any{int64(0)}, "", ""},
		{"index past the scopes", []any{int64(9), "rpm", int64(1000)}, "", ""},
		{"negative index", []any{int64(-1), "rpm", int64(1000)}, "", ""},
		{"index not a number", []any{"0", "2026-12-07"}, "", ""},
		{"a day of 16 MiB", []any{int64(0), strings.Repeat("9", 16<<20)}, "", ""},
		{"a day not a string", []any{int64(0), int64(20261207)}, "", ""},
		{"an unknown limit", []any{int64(1), "x", int64(1000)}, "", ""},
		{"a negative wait", []any{int64(1), "rpm", int64(-5)}, "", ""},
		{"a wait of a year", []any{int64(1), "rpm", int64(365 * 86400000)}, "", ""},
	} {
		day, d, err := admitAnswer(tc.res, scopes)
		switch {
		case tc.day != "" && (err != nil || d != nil || day != tc.day):
			t.Errorf("%s: %q %v %v, want admitted on %s", tc.name, day, d, err, tc.day)
		case tc.deniedN != "" && (err != nil || d == nil || d.Scope != tc.deniedN):
			t.Errorf("%s: %v %v, want refused on %s", tc.name, d, err, tc.deniedN)
		case tc.day == "" && tc.deniedN == "" && !errors.Is(err, errNotAdmitAnswer):
			t.Errorf("%s: %q %v %v, want %v", tc.name, day[:min(len(day), 20)], d, err, errNotAdmitAnswer)
		}
	}
}

// TestRedisErrorClipped: Redis's error text is Redis's choice; an error keeps at most
// maxRedisError bytes of it (it goes into log lines and refusals' records), and what it wraps.
func TestRedisErrorClipped(t *testing.T) {
	inner := errors.New("ERR " + strings.Repeat("A", 4<<20))
	err := redisError("limits: redis", inner)
	if n := len(err.Error()); n > maxRedisError+64 {
		t.Fatalf("an error of %d bytes from a 4 MiB Redis error", n)
	}
	if !errors.Is(err, inner) || !strings.HasPrefix(err.Error(), "limits: redis: ERR AAA") {
		t.Fatalf("%.100q: not the Redis error, clipped", err)
	}
	if short := redisError("x", errors.New("WRONGTYPE")).Error(); short != "x: WRONGTYPE" {
		t.Fatalf("%q", short)
	}
}
