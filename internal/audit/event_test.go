package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var ts0 = time.Date(2026, 11, 27, 10, 0, 0, 5, time.UTC)

func TestEventCanonical(t *testing.T) {
	e := Event{V: 1, TS: ts0, Kind: "model.import", Actor: map[string]string{"user": "alice", "host": "h1"},
		Subject: map[string]string{"model": "m", "version": "1"}, Decision: Allow, Fields: map[string]string{"files": "3"}}
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// Golden bytes: key order and encoding never change once shipped.
	want := `{"v":1,"ts":"2026-11-27T10:00:00.000000005Z","kind":"model.import","actor":{"host":"h1","user":"alice"},"subject":{"model":"m","version":"1"},"decision":"allow","reason":"","fields":{"files":"3"}}`
	if string(b) != want {
		t.Fatalf("canonical form changed:\n got %s\nwant %s", b, want)
	}
	back, err := ParseEvent(b)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := back.Marshal()
	if !bytes.Equal(again, b) {
		t.Fatal("round trip changed the bytes")
	}
}

func TestEventRejects(t *testing.T) {
	for _, e := range []Event{
		{V: 2, TS: ts0, Kind: "a.b"},
		{V: 1, Kind: "a.b"},
		{V: 1, TS: ts0, Kind: "nokind"},
		{V: 1, TS: ts0, Kind: "a.b", Decision: "maybe"},
		{V: 1, TS: ts0, Kind: "a.b", Reason: strings.Repeat("x", MaxEventSize)},
	} {
		if _, err := e.Marshal(); !errors.Is(err, ErrEvent) {
			t.Fatalf("%+v accepted: %v", e, err)
		}
	}
	for _, raw := range []string{
		`{"v":1}`,
		`{"v":1,"ts":"2026-11-27T10:00:00Z","kind":"a.b","actor":{},"subject":{},"decision":"","reason":"","fields":{},"extra":1}`,
		`{"v":1,"ts":"2026-11-27T10:00:00Z","kind":"a.b","actor":{},"subject":{},"decision":"","reason":"","fields":{}} `,
		`{"ts":"2026-11-27T10:00:00Z","v":1,"kind":"a.b","actor":{},"subject":{},"decision":"","reason":"","fields":{}}`,
	} {
		if _, err := ParseEvent([]byte(raw)); err == nil {
			t.Fatalf("accepted %s", raw)
		}
	}
}

func TestRedactor(t *testing.T) {
	r, err := NewRedactor(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	d := r.Digest("the prompt")
	if !strings.HasPrefix(d, "hmac-sha256:") || strings.Contains(d, "prompt") {
		t.Fatalf("digest %q", d)
	}
	if !r.Matches(d, "the prompt") || r.Matches(d, "another") {
		t.Fatal("Matches wrong")
	}
	other, _ := NewRedactor(bytes.Repeat([]byte{8}, 32))
	if other.Digest("the prompt") == d {
		t.Fatal("digest does not depend on the key")
	}
	if _, err := NewRedactor([]byte("short")); err == nil {
		t.Fatal("short key accepted")
	}
}

func FuzzParseEvent(f *testing.F) {
	f.Add([]byte(`{"v":1,"ts":"2026-11-27T10:00:00.000000005Z","kind":"model.import","actor":{},"subject":{},"decision":"allow","reason":"","fields":{}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEvent(b)
		if err != nil {
			return
		}
		again, err := e.Marshal()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("accepted bytes do not round-trip: %v", err)
		}
	})
}

// jsonMarshal is the reference: what encoding/json writes for an event (the format was
// defined by it; Marshal must produce the same bytes without reflection).
func jsonMarshal(e Event) ([]byte, error) {
	e.TS = e.TS.UTC()
	for _, m := range []*map[string]string{&e.Actor, &e.Subject, &e.Fields} {
		if *m == nil {
			*m = map[string]string{}
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(e); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func FuzzMarshalMatchesJSON(f *testing.F) {
	f.Add(int64(5), "alice", "h\"1\\<>&", "m\u2028\u2029\x00\x1f\x7f\b\f\n\r\t", "reason \xff\xfe é 😀", "k", "v")
	f.Add(int64(-62135596800000000), "", "", "", "", "", "")
	f.Fuzz(func(t *testing.T, nanos int64, a, b, c, reason, k, v string) {
		e := Event{V: 1, TS: time.Unix(0, nanos), Kind: "gateway.request", Decision: Deny, Reason: reason,
			Actor: map[string]string{"principal": a, b: c}, Subject: map[string]string{c: a}, Fields: map[string]string{k: v, "x" + k: b}}
		got, err := e.Marshal()
		if !utf8.ValidString(b) || !utf8.ValidString(c) || !utf8.ValidString(k) { // b, c, k are keys
			if !errors.Is(err, ErrEvent) {
				t.Fatalf("Marshal accepted a key that is not UTF-8: %v", err)
			}
			return
		}
		// The reference: encoding/json once each invalid byte is U+FFFD (string([]rune(s))).
		valid := func(m map[string]string) map[string]string {
			out := map[string]string{}
			for k, v := range m {
				out[string([]rune(k))] = string([]rune(v))
			}
			return out
		}
		ve := e
		ve.Reason, ve.Actor, ve.Subject, ve.Fields = string([]rune(e.Reason)), valid(e.Actor), valid(e.Subject), valid(e.Fields)
		want, werr := jsonMarshal(ve)
		if werr != nil || len(want) > MaxEventSize {
			if err == nil {
				t.Fatalf("Marshal accepted what encoding/json refuses: %v", werr)
			}
			return
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Marshal differs from encoding/json (%v):\n got %q\nwant %q", err, got, want)
		}
		if _, err := ParseEvent(got); err != nil {
			t.Fatalf("an event's own bytes do not parse back: %v: %q", err, got)
		}
	})
}

func TestMarshalFarTimestamps(t *testing.T) {
	for _, ts := range []time.Time{time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)} {
		e := Event{V: 1, TS: ts, Kind: "a.b"}
		if _, err := e.Marshal(); !errors.Is(err, ErrEvent) {
			t.Fatalf("year %d accepted: %v", ts.Year(), err)
		}
		if _, err := jsonMarshal(e); err == nil {
			t.Fatalf("encoding/json accepts year %d: the reference changed", ts.Year())
		}
	}
}

// TestKindsDocumented: every kind constant is valid and listed in the package doc, and
// none is listed twice (the doc is the list readers go by).
func TestKindsDocumented(t *testing.T) {
	src, err := os.ReadFile("kinds.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := os.ReadFile("event.go")
	re := regexp.MustCompile(`(Kind\w+)\s+Kind = "([^"]+)"`)
	seen := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		k := m[2]
		if seen[k] {
			t.Errorf("%s defined twice", k)
		}
		seen[k] = true
		if !kindRE.MatchString(k) {
			t.Errorf("%s: not a valid kind", k)
		}
		if !regexp.MustCompile(`(?m)^//\t  ` + regexp.QuoteMeta(k) + `\s`).Match(doc) {
			t.Errorf("%s is not listed in the package doc (event.go)", k)
		}
	}
	if len(seen) < 40 {
		t.Fatalf("only %d kinds found in kinds.go", len(seen))
	}
}
