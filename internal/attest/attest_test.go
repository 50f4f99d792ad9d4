package attest

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	sevabi "github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"
	sevdata "github.com/google/go-sev-guest/verify/testdata"
	sevtrust "github.com/google/go-sev-guest/verify/trust"
	tdxabi "github.com/google/go-tdx-guest/abi"
	tpb "github.com/google/go-tdx-guest/proto/tdx"
	tdxdata "github.com/google/go-tdx-guest/testing/testdata"
)

var ctx = context.Background()

func TestBindingSeparatesKeyAndNonce(t *testing.T) {
	a := Binding([]byte("key"), []byte("nonce"))
	for _, b := range [][64]byte{Binding([]byte("key2"), []byte("nonce")), Binding([]byte("key"), []byte("nonce2")), Binding([]byte("keyn"), []byte("once"))} {
		if a == b {
			t.Fatal("different key/nonce pairs share a binding")
		}
	}
}

func TestDev(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b := Binding([]byte("pub"), []byte("n1"))
	set := Set{Verifiers: map[string]Verifier{TypeDev: Dev{}}, Allow: map[string][]string{TypeDev: {""}}}
	for _, k := range []struct {
		name string
		ev   func([64]byte) (Evidence, error)
		pub  any
	}{
		{"ecdsa", func(b [64]byte) (Evidence, error) { return DevEvidence(ec, b) }, &ec.PublicKey},
		{"ed25519", func(b [64]byte) (Evidence, error) { return DevEvidence(ed, b) }, ed.Public()},
	} {
		ev, err := k.ev(b)
		if err != nil {
			t.Fatal(err)
		}
		r, err := set.Verify(ctx, ev, Claims{Binding: b, Identity: k.pub})
		if err != nil || r.Type != TypeDev || r.TEE || r.Allowed {
			t.Fatalf("%s: %+v %v (dev is never a TEE nor on an allowlist)", k.name, r, err)
		}
		if _, err := set.Verify(ctx, ev, Claims{Binding: Binding([]byte("pub"), []byte("n2")), Identity: k.pub}); !errors.Is(err, ErrBinding) {
			t.Fatalf("%s: replay under another nonce: %v", k.name, err)
		}
	}
	ev, _ := DevEvidence(other, b)
	if _, err := set.Verify(ctx, ev, Claims{Binding: b, Identity: &ec.PublicKey}); !errors.Is(err, ErrBinding) {
		t.Fatalf("signature by another key: %v", err)
	}
	if _, err := set.Verify(ctx, Evidence{Type: TypeSEV}, Claims{}); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("unconfigured type: %v", err)
	}
}

// sevReport has the test-only AMD chain that ships with go-sev-guest sign a report whose
// REPORT_DATA is data, and returns it with its certificate table and the roots to trust.
func sevReport(t *testing.T, data [64]byte) ([]byte, map[string][]*sevtrust.AMDRootCerts) {
	t.Helper()
	now := time.Now()
	qp, err := sevtest.TcQuoteProvider([]sevtest.TestCase{{Input: data, Output: sevtest.TestRawReport(data)}},
		&sevtest.DeviceOptions{Now: now, Product: sevabi.DefaultSevProduct()})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := qp.GetRawQuote(data)
	if err != nil {
		t.Fatal(err)
	}
	line := sevtest.GetProductLine()
	roots := map[string][]*sevtrust.AMDRootCerts{line: {{
		Product:      line,
		ProductCerts: &sevtrust.ProductCerts{Ark: qp.Device.Signer.Ark, Ask: qp.Device.Signer.Ask},
	}}}
	return raw, roots
}

func TestSEVTestChain(t *testing.T) {
	b := Binding([]byte("hpke-pub"), []byte("nonce"))
	raw, roots := sevReport(t, b)
	v := &SEV{Roots: roots, AllowDebug: true}
	att, _ := sevabi.ReportCertsToProto(raw)
	meas := hexOf(att.GetReport().GetMeasurement())
	set := Set{Verifiers: map[string]Verifier{TypeSEV: v}, Allow: map[string][]string{TypeSEV: {meas}}}

	r, err := set.Verify(ctx, Evidence{Type: TypeSEV, Blob: raw}, Claims{Binding: b})
	if err != nil || !r.TEE || !r.Allowed || r.Measurement != meas || !r.Debug {
		t.Fatalf("good report: %+v %v", r, err)
	}
	set.Allow = nil
	if r, _ := set.Verify(ctx, Evidence{Type: TypeSEV, Blob: raw}, Claims{Binding: b}); r.Allowed {
		t.Fatal("measurement allowed with an empty allowlist")
	}
	if _, err := v.Verify(ctx, Evidence{Type: TypeSEV, Blob: raw}, Claims{Binding: Binding([]byte("other-key"), []byte("nonce"))}); !errors.Is(err, ErrBinding) {
		t.Fatalf("report bound to another key: %v", err)
	}
	forged := append([]byte(nil), raw...)
	forged[0x50] ^= 1 // REPORT_DATA changed after signing
	if _, err := v.Verify(ctx, Evidence{Type: TypeSEV, Blob: forged}, Claims{Binding: b}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("altered report: %v", err)
	}
	if _, err := (&SEV{Roots: roots}).Verify(ctx, Evidence{Type: TypeSEV, Blob: raw}, Claims{Binding: b}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("debug guest accepted without AllowDebug: %v", err)
	}
	// AMD's real roots do not sign the test-only chain.
	if _, err := (&SEV{AllowDebug: true, Getter: sevtest.SimpleGetter(nil)}).Verify(ctx, Evidence{Type: TypeSEV, Blob: raw}, Claims{Binding: b}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("test chain trusted as AMD's: %v", err)
	}
	if _, err := v.Verify(ctx, Evidence{Type: TypeSEV, Blob: raw[:100]}, Claims{Binding: b}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("truncated report: %v", err)
	}
}

// The real Milan report in go-sev-guest verifies against AMD's real roots (its VCEK served
// by a fake KDS), and is refused because its REPORT_DATA is not our binding.
func TestSEVRealReportBoundElsewhere(t *testing.T) {
	getter := sevtest.SimpleGetter(map[string][]byte{
		"https://kdsintf.amd.com/vcek/v1/Milan/cert_chain": sevtrust.AskArkMilanVcekBytes,
		"https://kdsintf.amd.com/vcek/v1/Milan/3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e53786184ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68": sevdata.VcekBytes,
	})
	v := &SEV{Getter: getter, AllowDebug: true, Product: &spb.SevProduct{Name: spb.SevProduct_SEV_PRODUCT_MILAN}}
	_, err := v.Verify(ctx, Evidence{Type: TypeSEV, Blob: sevdata.AttestationBytes}, Claims{Binding: Binding([]byte("k"), []byte("n"))})
	if !errors.Is(err, ErrBinding) {
		t.Fatalf("real report with foreign REPORT_DATA: %v", err)
	}
}

func TestTDXRealQuote(t *testing.T) {
	then := func() time.Time { return time.Date(2023, 7, 1, 1, 0, 0, 0, time.UTC) } // inside the sample's validity
	q, err := tdxabi.QuoteToProto(tdxdata.RawQuote)
	if err != nil {
		t.Fatal(err)
	}
	body := q.(*tpb.QuoteV4).GetTdQuoteBody()
	var own [64]byte
	copy(own[:], body.GetReportData())
	v := &TDX{Now: then}
	set := Set{Verifiers: map[string]Verifier{TypeTDX: v}, Allow: map[string][]string{TypeTDX: {hexOf(body.GetMrTd())}}}

	// Accepting the sample as "bound" to its own REPORT_DATA exercises the success path.
	r, err := set.Verify(ctx, Evidence{Type: TypeTDX, Blob: tdxdata.RawQuote}, Claims{Binding: own})
	if err != nil || !r.TEE || !r.Allowed || r.Measurement != hexOf(body.GetMrTd()) {
		t.Fatalf("sample quote: %+v %v", r, err)
	}
	if _, err := v.Verify(ctx, Evidence{Type: TypeTDX, Blob: tdxdata.RawQuote}, Claims{Binding: Binding([]byte("k"), []byte("n"))}); !errors.Is(err, ErrBinding) {
		t.Fatalf("quote bound elsewhere: %v", err)
	}
	forged := append([]byte(nil), tdxdata.RawQuote...)
	forged[0x30+0x88] ^= 1 // a byte of MR_TD inside the signed TD quote body
	if _, err := v.Verify(ctx, Evidence{Type: TypeTDX, Blob: forged}, Claims{Binding: own}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("altered quote: %v", err)
	}
	if _, err := (&TDX{Now: func() time.Time { return time.Date(2053, 1, 1, 0, 0, 0, 0, time.UTC) }}).Verify(ctx, Evidence{Type: TypeTDX, Blob: tdxdata.RawQuote}, Claims{Binding: own}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("expired PCK chain accepted: %v", err)
	}
	if _, err := v.Verify(ctx, Evidence{Type: TypeTDX, Blob: []byte("garbage")}, Claims{Binding: own}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("garbage: %v", err)
	}
}

func FuzzVerifiers(f *testing.F) {
	f.Add(tdxdata.RawQuote)
	f.Add(sevdata.AttestationBytes)
	f.Add([]byte{})
	then := func() time.Time { return time.Date(2023, 7, 1, 1, 0, 0, 0, time.UTC) }
	vs := []Verifier{&TDX{Now: then}, &SEV{Getter: sevtest.SimpleGetter(nil)}, Dev{}}
	f.Fuzz(func(t *testing.T, blob []byte) {
		for _, v := range vs {
			if _, err := v.Verify(ctx, Evidence{Blob: blob}, Claims{}); err == nil {
				t.Fatalf("%T accepted fuzzed evidence", v)
			}
		}
	})
}
