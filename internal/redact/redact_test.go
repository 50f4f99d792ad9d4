package redact

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
)

func TestDSN(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"mysql://u:s3cret@tcp(h:3306)/db?tls=true", "mysql://u:***@tcp(h:3306)/db?tls=***"},
		{"mysql://u:p@ss:w@rd@tcp(h)/db", "mysql://u:***@tcp(h)/db"},
		{"mysql://u@tcp(h)/db", "mysql://u@tcp(h)/db"},
		{"postgres://u:pw@h:5432/db?sslmode=disable&password=pw", "postgres://u:***@h:5432/db?sslmode=***&password=***"},
		// No "@": "user:password" cannot be told from "host:port".
		{"mysql://strongroom:s3cret", Malformed},
		{"mysql://tcp(h)/db", Malformed},
		{"mysql://u:s3cret tcp(h)/db", Malformed},
		{"host=h user=u password=s3cret dbname=d", "host=*** user=*** password=*** dbname=***"},
		{"s3cret", Malformed},
		// An "@" after a "?" (outside round 63): in a query value, as pgx reads it, or in a
		// password with a "?", as go-sql-driver does — the scheme only.
		{"postgres://127.0.0.1,10.0.0.1/db?sslmode=disable&user=u&password=p@Mk63s3cr", "postgres://***"},
		{"postgres://u@h/db?sslmode=disable&password=Mk63s3cr:x@z", "postgres://***"},
		{"mysql://u:pa?Mk63s3cr@tcp(h)/db", "mysql://***"},
	} {
		if got := DSN(tc.in); got != tc.want {
			t.Errorf("DSN(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"redis://u:s3cret@127.0.0.1:6379/0", "redis://u:xxxxx@127.0.0.1:6379/0"},
		{"https://w.example/add?token=s3cret#s3cret", "https://w.example/add?token=***"},
		{"redis://u:s3cr%zzet@h:1/0", Malformed},                                 // a bad escape
		{"redis://u:s3cret@h:99x/0", Malformed},                                  // a bad port
		{"redis://u:s3c ret@h:1/0", Malformed},                                   // white space
		{"u:s3cret@h:1", Malformed},                                              // no scheme
		{"mailto:s3cret@example.com", Malformed},                                 // opaque
		{" https://u:s3cret@h/", Malformed},                                      // leading space
		{"https://h/hooks/T000/B000/s3cret", "https://h/hooks/T000/B000/s3cret"}, // Origin is for these
	} {
		if got := URL(tc.in); got != tc.want {
			t.Errorf("URL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := Origin("https://hooks.example/services/T0/B0/s3cret"); got != "https://hooks.example/…" {
		t.Errorf("Origin = %q", got)
	}
}

func TestStoreAddress(t *testing.T) {
	for _, tc := range []struct {
		in, addr string
		pg, bad  bool
	}{
		{"postgres://u:pw@h/db", "postgres://u:pw@h/db", true, false},
		{"Postgres://u:pw@h/db", "postgres://u:pw@h/db", true, false},
		{"POSTGRESQL://u:pw@h/db", "postgresql://u:pw@h/db", true, false},
		{"host=h user=u password=pw", "host=h user=u password=pw", true, false},
		{"/var/lib/strongroom/store.db", "/var/lib/strongroom/store.db", false, false},
		{"store.db", "store.db", false, false},
		{" postgres://u:pw@h/db", "", false, true},
		{"postgres://u:pw@h/db\n", "", false, true},
		{"postgre://u:pw@h/db", "", false, true},
		{"://u:pw@h/db", "", false, true},
	} {
		addr, pg, err := StoreAddress(tc.in)
		if addr != tc.addr || pg != tc.pg || (err != nil) != tc.bad {
			t.Errorf("StoreAddress(%q) = %q, %v, %v; want %q, %v, error %v", tc.in, addr, pg, err, tc.addr, tc.pg, tc.bad)
		}
		if err != nil && strings.Contains(err.Error(), "pw") {
			t.Errorf("StoreAddress(%q)'s error quotes the password: %v", tc.in, err)
		}
	}
}

func TestError(t *testing.T) {
	const raw = "https://u:s3cret@h:1/hooks/T0/B0/tok3n"
	_, perr := url.Parse("https://u:s3cret@h:1/x%zz")
	base := fmt.Errorf("post %q: %w", raw, errors.ErrUnsupported)
	got := Error(base, Origin, raw)
	if strings.Contains(got.Error(), "s3cret") || strings.Contains(got.Error(), "tok3n") {
		t.Errorf("Error left the secret: %v", got)
	}
	if !errors.Is(got, errors.ErrUnsupported) {
		t.Error("Error hid the wrapped error from errors.Is")
	}
	// The path written out on its own (an HTTP client's redacted URL keeps the path).
	got = Error(fmt.Errorf("Post \"https://u:***@h:1/hooks/T0/B0/tok3n\": refused"), Origin, raw)
	if strings.Contains(got.Error(), "tok3n") {
		t.Errorf("Error left the path's token: %v", got)
	}
	if Error(nil, URL, raw) != nil {
		t.Error("Error(nil) is not nil")
	}
	if e := Error(perr, URL, "unrelated"); e != perr {
		t.Error("an error with nothing to hide was changed")
	}
}

// FuzzHidesPassword: whatever surrounds it, a password written as a URL's or DSN's
// userinfo never comes out of URL, DSN or StoreAddress's error.
func FuzzHidesPassword(f *testing.F) {
	f.Add("redis", "u", "s3cretPW", "127.0.0.1:6379/0")
	f.Add("mysql", "strongroom", "pa:ss", "tcp(h:3306)/db?tls=true")
	f.Add("Postgres", "u", "p w", "h/db")
	f.Add("", "u", "pw%zz", "h:99x")
	f.Fuzz(func(t *testing.T, scheme, user, pw, rest string) {
		if len(pw) < 4 || strings.Contains(scheme+"://"+strings.ToLower(scheme)+"://"+user+":"+rest, pw) || strings.Contains(Malformed+"xxxxx***", pw) ||
			strings.Trim(user, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" || strings.Contains(scheme, ":") {
			t.Skip() // a user name is a name: one with "@" or ":" makes the value ambiguous
		}
		if strings.ContainsAny(pw, "/?#@") {
			t.Skip() // unescaped, these end the userinfo for every parser (TestDSN has "@" in one)
		}
		for _, c := range []byte(rest) {
			if c <= ' ' || c > '~' || c == '%' {
				t.Skip() // escaped in the output, the rest can spell the password ("\x80" + "0000" as "%800000")
			}
		}
		ins := []string{
			scheme + "://" + user + ":" + pw + "@" + rest,
			scheme + "://" + user + ":" + pw + " " + rest,
		}
		if !strings.ContainsAny(pw[:1], "0123456789") {
			// With no "@", "user:1234/x" is a host, its port and a path: only a password that
			// cannot begin a port is known for one.
			ins = append(ins, scheme+"://"+user+":"+pw)
		}
		for _, in := range ins {
			for name, out := range map[string]string{"URL": URL(in), "DSN": DSN(in), "Origin": Origin(in)} {
				if strings.Contains(out, pw) {
					t.Fatalf("%s(%q) = %q shows the password", name, in, out)
				}
			}
			if _, _, err := StoreAddress(in); err != nil && strings.Contains(err.Error(), pw) {
				t.Fatalf("StoreAddress(%q): %v", in, err)
			}
		}
	})
}

func TestHTTP(t *testing.T) {
	for u, want := range map[string]bool{
		"https://u:pw@idp.example/jwks": true,
		"HTTP://idp.example:8080/":      true,
		"redis://h:6379/0":              false,
		"https://u:pw@h:44x3/jwks":      false, // a bad port: malformed
		"https://u:p w@h/jwks":          false,
		"":                              false,
	} {
		if got := HTTP(u); got != want {
			t.Errorf("HTTP(%q) = %v, want %v", u, got, want)
		}
	}
}

// TestHiddenInOddForms: addresses the earlier tests did not try — a password in a query,
// beside a bracketed IPv6 host or a zone, on a unix socket, in go-sql-driver's own DSN
// form, with the characters that end a URL's user part — keep it out of every form shown.
func TestHiddenInOddForms(t *testing.T) {
	urls := map[string]string{
		"redis://127.0.0.1:6379/0?password=Pw59Query":          "Pw59Query",
		"redis://:Pw59Ipv6@[::1]:6379/0":                       "Pw59Ipv6",
		"rediss://user:Pw59Zone@[fe80::1%25eth0]:6379/0":       "Pw59Zone",
		"redis://user:Pw59%40At@host:6379":                     "Pw59",
		"unix://:Pw59Unix@/tmp/redis.sock?db=0":                "Pw59Unix",
		"redis://user:Pw59:Colon@host":                         "Pw59",
		"redis://user:Pw59#Frag@host:1/0":                      "Pw59",
		"redis://user:Pw59/Slash@host:1/0":                     "Pw59",
		"redis://user:Pw59?Q@host:1/0":                         "Pw59",
		"https://user:Pw59Webhook@[2001:db8::1]:8443/hook?x=1": "Pw59Webhook",
	}
	for u, pw := range urls {
		for name, shown := range map[string]string{"URL": URL(u), "Origin": Origin(u)} {
			if strings.Contains(shown, pw) {
				t.Errorf("%s(%q) = %q: the password shows", name, u, shown)
			}
		}
	}
	dsns := map[string]string{
		"postgres:///db?host=/var/run/postgresql&password=Pw59PgSock": "Pw59PgSock",
		"postgresql://u:Pw59Pg6@[::1]:5432/db":                        "Pw59Pg6",
		"host=/tmp user=u password=Pw59Kv dbname=x":                   "Pw59Kv",
		"host=/tmp user=u password='Pw59 Quoted' dbname=x":            "Pw59",
		"user:Pw59MySock@unix(/tmp/mysql.sock)/db":                    "Pw59MySock",
		"user:Pw59My6@tcp([::1]:3306)/db?parseTime=true":              "Pw59My6",
		"mysql://user:Pw59MyURL@host/db":                              "Pw59MyURL",
		"user:Pw59@At@tcp(h:1)/db":                                    "Pw59",
		"postgres://u@h/db?sslpassword=Pw59Ssl":                       "Pw59Ssl",
	}
	for d, pw := range dsns {
		shown := map[string]string{"DSN": DSN(d), "Error": Error(errors.New("connect "+d+": refused"), DSN, d).Error()}
		for name, s := range shown {
			if strings.Contains(s, pw) {
				t.Errorf("%s(%q) = %q: the password shows", name, d, s)
			}
		}
	}
}
