package refmodel

import (
	"reflect"
	"testing"
)

func TestPretokenizeGPT2(t *testing.T) {
	for in, want := range map[string][]string{
		"Hello world":    {"Hello", " world"},
		"hello   world":  {"hello", "  ", " world"},
		"hello\n\nworld": {"hello", "\n", "\n", "world"},
		"don't stop":     {"don", "'t", " stop"},
		"it's 2026!":     {"it", "'s", " 2026", "!"},
		"end  ":          {"end", "  "},
		"?!'s":           {"?!'", "s"},
		"a\tb":           {"a", "\t", "b"},
		" lead":          {" lead"},
		"x  \n y":        {"x", "  \n", " y"},
	} {
		if got := pretokenize(in); !reflect.DeepEqual(got, want) {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

func FuzzPretokenize(f *testing.F) {
	f.Add("hello  world\n\n it's 42!?")
	f.Fuzz(func(t *testing.T, s string) {
		got := ""
		for _, p := range pretokenize(s) {
			if p == "" {
				t.Fatalf("empty pre-token for %q", s)
			}
			got += p
		}
		if got != s {
			t.Fatalf("pre-tokens of %q join to %q", s, got)
		}
	})
}
