package authn

// Outside round 45: the API key reader that decodes the secret into the caller's array and
// checks the hex id in place. Every test asserts the secure behaviour and fails if it is
// broken.

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/strongroom/strongroom/internal/store"
)

// a45Ref is the token format read by the book: "sr_", 16 hex digits (either case, as
// encoding/hex takes them), ".", and exactly the 43 characters of strict unpadded
// URL-safe base64 that encode 32 bytes — no CR or LF (which encoding/base64 would skip).
func a45Ref(tok string) (string, []byte, bool) {
	rest, ok := strings.CutPrefix(tok, "sr_")
	if !ok || len(rest) != 16+1+43 || rest[16] != '.' {
		return "", nil, false
	}
	for _, c := range []byte(rest[:16]) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return "", nil, false
		}
	}
	enc := rest[17:]
	if strings.ContainsAny(enc, "\r\n") {
		return "", nil, false
	}
	secret, err := base64.RawURLEncoding.Strict().DecodeString(enc)
	if err != nil || len(secret) != 32 {
		return "", nil, false
	}
	return rest[:16], secret, true
}

// a45Check compares parseToken (into an array filled with a sentinel) with a45Ref: the same
// verdict, id and secret; on a refusal the array holds no byte decoded from the token (it
// is left as it was, or cleared).
func a45Check(tok string) error {
	var secret [secretLen]byte
	for i := range secret {
		secret[i] = 0xA5
	}
	id, err := parseToken(tok, &secret)
	wantID, wantSecret, ok := a45Ref(tok)
	if (err == nil) != ok {
		return fmt.Errorf("%q: parseToken err %v, by the book valid=%v", tok, err, ok)
	}
	if ok && (id != wantID || !bytes.Equal(secret[:], wantSecret)) {
		return fmt.Errorf("%q: read as (%q, %x), by the book (%q, %x)", tok, id, secret, wantID, wantSecret)
	}
	if !ok {
		untouched, cleared := true, true
		for _, b := range secret {
			untouched = untouched && b == 0xA5
			cleared = cleared && b == 0
		}
		if !untouched && !cleared {
			return fmt.Errorf("%q refused, but the caller's array holds %x (bytes of the token's decoding)", tok, secret)
		}
	}
	pid, psecret, perr := ParseToken(tok)
	if (perr == nil) != ok || pid != wantID || !bytes.Equal(psecret, wantSecret) {
		return fmt.Errorf("%q: ParseToken (%q, %x, %v), by the book (%q, %x, %v)", tok, pid, psecret, perr, wantID, wantSecret, ok)
	}
	return nil
}

// TestAttack45TokenShapes: tokens of every length from 0 to 80, and a valid token with
// every single character replaced by each of a set of troublesome ones (CR, LF, NUL, space,
// tab, '=', '+', '/', '.', '_', '-', case flips, hex and non-hex letters, a multi-byte
// UTF-8 rune, 0xFF), deleted, doubled, or followed by junk: parseToken and ParseToken read
// each exactly as the format says (a45Ref), and a refused token leaves nothing of its
// decoding in the caller's array.
func TestAttack45TokenShapes(t *testing.T) {
	valid := "sr_0123456789abcdef." + base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb, 0xef, 0xbe}, 11)[:32])
	if _, _, ok := a45Ref(valid); !ok {
		t.Fatalf("the test's token %q is not valid", valid)
	}
	var toks []string
	for n := 0; n <= 80; n++ {
		if n <= len(valid) {
			toks = append(toks, valid[:n])
		}
		toks = append(toks, "sr_0123456789abcdef."+strings.Repeat("A", max(n-20, 0)), strings.Repeat("A", n))
	}
	subs := []string{"\r", "\n", "\r\n", "\x00", " ", "\t", "=", "+", "/", ".", "_", "-", "A", "a", "F", "f", "G", "g", "0", "Q", "é", "\xff", "AA", ""}
	for i := range len(valid) {
		for _, s := range subs {
			toks = append(toks, valid[:i]+s+valid[i+1:], valid[:i]+s+valid[i:])
		}
		toks = append(toks, valid[:i]+strings.ToUpper(valid[i:i+1])+valid[i+1:], valid[:i]+strings.ToLower(valid[i:i+1])+valid[i+1:])
	}
	for _, junk := range []string{"x", "=", "==", " ", "\r\n", "\n", ".", valid} {
		toks = append(toks, valid+junk, junk+valid)
	}
	// Non-canonical last characters: same 32 bytes read if the trailing bits were ignored.
	last := strings.Index(base64URLAlphabet, valid[len(valid)-1:])
	for k := 1; k < 4; k++ {
		toks = append(toks, valid[:len(valid)-1]+string(base64URLAlphabet[last|k]))
	}
	for _, tok := range toks {
		if err := a45Check(tok); err != nil {
			t.Error(err)
		}
	}
}

const base64URLAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// TestAttack45AuthenticateOnlyTheToken: Authenticate (real Keys over SQLite) accepts an
// issued token and nothing else of its neighbourhood — every one-character replacement,
// deletion and insertion, the id in other case, the token cut or extended — and a failed
// attempt (a wrong secret on a cached id, another key's secret under this id) never changes
// what the next attempt gets. Concurrent Authenticates of two principals' keys and of
// wrong ones each get their own answer.
func TestAttack45AuthenticateOnlyTheToken(t *testing.T) {
	ctx := context.Background()
	k, _, st := setup(t)
	st.PutPrincipal(ctx, store.Principal{ID: "bob", Tenant: "globex", Screening: "clear"})
	alice, arec, err := k.Create(ctx, "alice", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	bob, brec, err := k.Create(ctx, "bob", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := k.Authenticate(ctx, alice); err != nil || p.ID != "alice" || p.KeyID != arec.ID {
		t.Fatalf("alice's key: %+v %v", p, err)
	}
	accepted := 0
	try := func(tok string) {
		p, err := k.Authenticate(ctx, tok)
		switch {
		case tok == alice:
			if err != nil || p.ID != "alice" {
				t.Errorf("alice's key refused after other attempts: %v", err)
			}
			accepted++
		case tok == bob:
			if err != nil || p.ID != "bob" {
				t.Errorf("bob's key refused after other attempts: %v", err)
			}
		case err == nil:
			t.Errorf("%q accepted as %s (key %s): only %q should be", tok, p.ID, p.KeyID, alice)
		case !errors.Is(err, ErrUnauthenticated):
			t.Errorf("%q: %v, want ErrUnauthenticated", tok, err)
		}
	}
	alphabet := base64URLAlphabet + "\r\n\x00 .=+/é"
	for i := range len(alice) {
		for _, c := range strings.Split(alphabet, "") {
			try(alice[:i] + c + alice[i+1:])
			if i%7 == 0 {
				try(alice[:i] + c + alice[i:])
			}
		}
		try(alice[:i] + alice[i+1:])
		try(alice[:i])
		try(alice)
	}
	try(alice[:3] + strings.ToUpper(alice[3:19]) + alice[19:])
	try(alice + "A")
	// Bob's secret under alice's id, alice's under bob's.
	try(alice[:20] + bob[20:])
	try(bob[:20] + alice[20:])
	try(bob)
	if accepted == 0 {
		t.Fatal("alice's key never tried")
	}

	// Concurrently: each goroutine's answers are its own token's.
	var wg sync.WaitGroup
	wrong := alice[:len(alice)-2] + "AA"
	if wrong == alice {
		wrong = alice[:len(alice)-2] + "BA"
	}
	errs := make(chan string, 64)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				tok, want := []string{alice, bob, wrong, bob[:20] + alice[20:]}[(g+i)%4], []string{"alice", "bob", "", ""}[(g+i)%4]
				p, err := k.Authenticate(ctx, tok)
				got := ""
				if err == nil {
					got = p.ID
					if (got == "alice" && p.KeyID != arec.ID) || (got == "bob" && p.KeyID != brec.ID) {
						got += "/wrong-key-id"
					}
				}
				if got != want {
					select {
					case errs <- fmt.Sprintf("goroutine %d: %q authenticated as %q, want %q", g, tok, got, want):
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// FuzzAttack45ParseToken: any string is read by parseToken exactly as the format says
// (a45Ref, CR and LF included: refused), and a refusal leaves no decoded byte behind.
func FuzzAttack45ParseToken(f *testing.F) {
	f.Add("sr_0123456789abcdef." + strings.Repeat("A", 43))
	f.Add("sr_0123456789abcdef." + strings.Repeat("A", 21) + "\n" + strings.Repeat("A", 21))
	f.Add("sr_0123456789ABCDEF." + strings.Repeat("_", 42) + "w")
	f.Fuzz(func(t *testing.T, s string) {
		if err := a45Check(s); err != nil {
			t.Fatal(err)
		}
	})
}
