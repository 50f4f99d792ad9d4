package attest

import (
	"context"
	"fmt"
	"time"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// SEV verifies AMD SEV-SNP attestation reports with go-sev-guest: the VCEK/VLEK signature
// chains to AMD's root (or to Roots), then REPORT_DATA must equal the binding.
type SEV struct {
	// Roots overrides AMD's embedded root certificates by product line (tests use this).
	Roots map[string][]*trust.AMDRootCerts
	// Getter fetches VCEK certificates and CRLs from AMD KDS when the evidence carries no
	// certificate table; nil uses the network.
	Getter trust.HTTPSGetter
	// Product pins the expected product; nil takes it from the report.
	Product *spb.SevProduct
	// AllowDebug accepts guests whose policy allows debugging; off, they are refused.
	AllowDebug bool
	Now        func() time.Time
}

var _ Verifier = (*SEV)(nil)

// Verify parses a raw report, optionally followed by its certificate table (the extended
// report the guest's configfs-tsm or /dev/sev-guest returns).
func (s *SEV) Verify(ctx context.Context, ev Evidence, c Claims) (Result, error) {
	att, err := parseSEV(ev.Blob)
	if err != nil {
		return Result{}, fmt.Errorf("%w: sev-snp: %v", ErrInvalid, err)
	}
	opts := &verify.Options{TrustedRoots: s.Roots, Getter: s.Getter, Product: s.Product}
	if s.Now != nil {
		opts.Now = s.Now()
	}
	if len(att.GetCertificateChain().GetVcekCert()) > 0 || len(att.GetCertificateChain().GetVlekCert()) > 0 {
		opts.DisableCertFetching = true
	}
	if err := verify.SnpAttestationContext(ctx, att, opts); err != nil {
		return Result{}, fmt.Errorf("%w: sev-snp: %v", ErrInvalid, err)
	}
	rep := att.GetReport()
	pol, err := abi.ParseSnpPolicy(rep.GetPolicy())
	if err != nil {
		return Result{}, fmt.Errorf("%w: sev-snp: %v", ErrInvalid, err)
	}
	if pol.Debug && !s.AllowDebug {
		return Result{}, fmt.Errorf("%w: sev-snp: guest policy allows debugging", ErrInvalid)
	}
	if err := validate.SnpAttestation(att, &validate.Options{ReportData: c.Binding[:], GuestPolicy: pol}); err != nil {
		return Result{}, fmt.Errorf("%w: sev-snp: %v", ErrBinding, err)
	}
	return Result{Type: TypeSEV, TEE: true, Measurement: hexOf(rep.GetMeasurement()), Debug: pol.Debug}, nil
}

func parseSEV(b []byte) (*spb.Attestation, error) {
	if len(b) > abi.ReportSize {
		return abi.ReportCertsToProto(b)
	}
	rep, err := abi.ReportToProto(b)
	if err != nil {
		return nil, err
	}
	return &spb.Attestation{Report: rep}, nil
}
