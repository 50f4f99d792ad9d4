package authn

import "testing"

func TestKeyID(t *testing.T) {
	for in, want := range map[string]string{
		"6dd4352fd38dd9f2":                     "6dd4352fd38dd9f2",
		"sr_6dd4352fd38dd9f2.c2VjcmV0c2VjcmV0": "6dd4352fd38dd9f2",
		"sr_6dd4352fd38dd9f2":                  "6dd4352fd38dd9f2",
		"6dd4352fd38dd9f2.secret":              "6dd4352fd38dd9f2",
		"sr_short.secret":                      "sr_short",
		"":                                     "",
	} {
		if got := KeyID(in); got != want {
			t.Errorf("KeyID(%q) = %q, want %q", in, got, want)
		}
	}
}
