package attest

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/google/go-tdx-guest/abi"
	tpb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/validate"
	"github.com/google/go-tdx-guest/verify"
	"github.com/google/go-tdx-guest/verify/trust"
)

// TDX verifies Intel TDX v4 quotes with go-tdx-guest: the PCK chain to Intel's SGX root (or
// Roots), the quote signature, then REPORT_DATA must equal the binding.
type TDX struct {
	Roots *x509.CertPool // nil: Intel's root embedded in go-tdx-guest
	// Collateral fetches TCB info and CRLs from Intel PCS to check TCB status and
	// revocation; it needs the network (Getter nil: default client).
	Collateral bool
	Getter     trust.HTTPSGetter
	Now        func() time.Time
}

var _ Verifier = (*TDX)(nil)

// Verify checks a raw quote.
func (t *TDX) Verify(ctx context.Context, ev Evidence, c Claims) (Result, error) {
	q, err := abi.QuoteToProto(ev.Blob)
	if err != nil {
		return Result{}, fmt.Errorf("%w: tdx: %v", ErrInvalid, err)
	}
	quote, ok := q.(*tpb.QuoteV4)
	if !ok {
		return Result{}, fmt.Errorf("%w: tdx: quote version %T not supported", ErrInvalid, q)
	}
	opts := verify.DefaultOptions()
	opts.TrustedRoots, opts.GetCollateral, opts.CheckRevocations = t.Roots, t.Collateral, t.Collateral
	if t.Getter != nil {
		opts.Getter = t.Getter
	}
	if t.Now != nil {
		opts.Now = t.Now()
	}
	if err := verify.TdxQuote(quote, opts); err != nil {
		return Result{}, fmt.Errorf("%w: tdx: %v", ErrInvalid, err)
	}
	if err := validate.TdxQuote(quote, &validate.Options{TdQuoteBodyOptions: validate.TdQuoteBodyOptions{ReportData: c.Binding[:]}}); err != nil {
		return Result{}, fmt.Errorf("%w: tdx: %v", ErrBinding, err)
	}
	body := quote.GetTdQuoteBody()
	// TD_ATTRIBUTES bit 0 is DEBUG.
	debug := len(body.GetTdAttributes()) > 0 && body.GetTdAttributes()[0]&1 == 1
	return Result{Type: TypeTDX, TEE: true, Measurement: hexOf(body.GetMrTd()), Debug: debug}, nil
}
