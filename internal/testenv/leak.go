package testenv

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
)

// Secret is a value a test plants that must not get out, and what it is (for messages).
type Secret struct{ Text, Kind string }

// SecretForms are the spellings of a secret searched for: as written, JSON-escaped,
// percent-encoded (each byte, either case; and as a query value), and — for secrets long
// enough that a fragment means something — base64 (standard and URL alphabets) at each of
// the three alignments it can have inside a longer encoded text.
func SecretForms(m string) []string {
	out := []string{m}
	if j, _ := json.Marshal(m); string(j[1:len(j)-1]) != m {
		out = append(out, string(j[1:len(j)-1]))
	}
	var up, low strings.Builder
	for _, b := range []byte(m) {
		fmt.Fprintf(&up, "%%%02X", b)
		fmt.Fprintf(&low, "%%%02x", b)
	}
	out = append(out, up.String(), low.String())
	if q := url.QueryEscape(m); q != m {
		out = append(out, q)
	}
	if len(m) >= 12 {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
			for pre := range 3 {
				e := strings.TrimRight(enc.EncodeToString(append(make([]byte, pre), m...)), "=")
				skip := []int{0, 2, 3}[pre]
				if len(e)-skip-3 >= 12 {
					out = append(out, e[skip:len(e)-3])
				}
			}
		}
	}
	return out
}

// FindSecret says where (index, form length) a secret is in text in any of its forms, or -1.
func FindSecret(text, secret string) (int, int) {
	for _, f := range SecretForms(secret) {
		if i := strings.Index(text, f); i >= 0 {
			return i, len(f)
		}
	}
	return -1, 0
}

// MaskSecrets is s printable, with every secret of all, in every form, replaced.
func MaskSecrets(s string, all []Secret) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\n' || r == 0x7f || r == 0xfffd {
			return '·'
		}
		return r
	}, strings.ToValidUTF8(s, "\ufffd"))
	for _, sec := range all {
		for _, f := range SecretForms(sec.Text) {
			s = strings.ReplaceAll(s, f, "<"+strings.ToUpper(strings.Fields(sec.Kind + " SECRET")[0])+">")
		}
	}
	return s
}

// CheckNoSecrets fails t for each of secrets found in text, naming the channel and quoting
// the text around it with every secret of all masked.
func CheckNoSecrets(t testing.TB, channel, text string, secrets, all []Secret) {
	t.Helper()
	for _, s := range secrets {
		if i, n := FindSecret(text, s.Text); i >= 0 {
			lo, hi := max(0, i-200), min(len(text), i+n+120)
			t.Errorf("LEAK: %s is in %s: …%s…", s.Kind, channel, MaskSecrets(text[lo:hi], all))
		}
	}
}
