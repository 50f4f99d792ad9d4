package gateway

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/go-json-experiment/json/jsontext"
)

// FuzzReadName: readName, which skips Token.String for the names it knows, reads every
// member name of an object exactly as Token.String does — escapes, non-ASCII, long names,
// names that unescape to a known one — and fails where ReadToken fails.
func FuzzReadName(f *testing.F) {
	for _, b := range []string{
		`{"model":1,"messages":[{"role":"user","content":"x"}]}`,
		`{"\u006dodel":1,"mod\u0065l2":2}`,
		`{"Model":1,"rôle":2,"\ud83d\ude00":3}`,
		`{"` + strings.Repeat("a\\n", 40) + `":1}`,
		`{"\ud800":1}`,
		`{"a":1,"a":2}`,
		`{1:2}`,
		`{"content":{"role":{"type":[{"text":null}]}}}`,
	} {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		viaToken, errToken := names(body, func(d *jsontext.Decoder) (string, error) {
			tok, err := d.ReadToken()
			if err != nil {
				return "", err
			}
			return tok.String(), nil
		})
		viaName, errName := names(body, readName)
		if (errToken == nil) != (errName == nil) {
			t.Fatalf("%q: Token.String error %v, readName error %v", body, errToken, errName)
		}
		if errToken == nil && strings.Join(viaToken, "\x00") != strings.Join(viaName, "\x00") {
			t.Fatalf("%q: Token.String read %q, readName %q", body, viaToken, viaName)
		}
	})
}

// names walks body's JSON and lists every object member name, read by read.
func names(body []byte, read func(*jsontext.Decoder) (string, error)) ([]string, error) {
	dec := jsontext.NewDecoder(bytes.NewReader(body))
	var out []string
	for {
		switch dec.PeekKind() {
		case 0:
			if _, err := dec.ReadToken(); !errors.Is(err, io.EOF) {
				return out, err // invalid JSON
			}
			return out, nil
		case '}', ']':
			if _, err := dec.ReadToken(); err != nil {
				return out, err
			}
			continue
		}
		if k, _ := dec.StackIndex(dec.StackDepth()); k == '{' && dec.StackDepth() > 0 && isNamePosition(dec) {
			n, err := read(dec)
			if err != nil {
				return out, err
			}
			out = append(out, n)
			continue
		}
		if _, err := dec.ReadToken(); err != nil {
			return out, err
		}
	}
}

// isNamePosition: inside an object, an even number of tokens read so far is a name next.
func isNamePosition(dec *jsontext.Decoder) bool {
	_, n := dec.StackIndex(dec.StackDepth())
	return n%2 == 0
}
