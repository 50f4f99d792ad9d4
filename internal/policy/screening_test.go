package policy

import (
	"strings"
	"testing"
)

const list = `name,alt_names,country,source
Rosoboronexport JSC,Rosoboron Export;ROE,RU,BIS Entity List
Ivan Petrovich Sidorov,Ivan Sidorov;I. P. Sidorov,RU,OFAC SDN
Zhōngguó Example Tech Co. Ltd,China Example Technology,CN,BIS Entity List
`

func TestScreening(t *testing.T) {
	l, err := ParseScreeningList(strings.NewReader(list))
	if err != nil {
		t.Fatal(err)
	}
	if l.Len() != 3 {
		t.Fatalf("%d entries", l.Len())
	}
	for name, want := range map[string]string{
		"ROSOBORONEXPORT":               "Rosoboronexport JSC",
		"rosoboron-export, jsc":         "Rosoboronexport JSC",
		"Sidorov Ivan":                  "Ivan Petrovich Sidorov",
		"Ivan Sidorow":                  "Ivan Petrovich Sidorov", // transliteration variant
		"Zhongguo Example Tech Limited": "Zhōngguó Example Tech Co. Ltd",
		"Alice Johnson":                 "",
		"Ivan Smirnov":                  "",
		"Example":                       "",
	} {
		hits := l.Screen(name, 0.92)
		got := ""
		if len(hits) > 0 {
			got = hits[0].Name
		}
		if got != want {
			t.Errorf("%q: hit %q, want %q (%+v)", name, got, want, hits)
		}
	}
	for _, bad := range []string{"a,b\n", "name,alt,country,source\n,x,RU,src\n", "\"unterminated\n"} {
		if _, err := ParseScreeningList(strings.NewReader(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func FuzzScreeningList(f *testing.F) {
	f.Add(list, "Ivan Sidorov")
	f.Fuzz(func(t *testing.T, csvText, name string) {
		l, err := ParseScreeningList(strings.NewReader(csvText))
		if err != nil {
			return
		}
		for _, h := range l.Screen(name, 0.5) {
			if h.Score < 0.5 || h.Score > 1.0001 {
				t.Fatalf("score %v", h.Score)
			}
		}
	})
}
