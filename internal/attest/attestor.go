package attest

import (
	"crypto"
	"fmt"

	sevclient "github.com/google/go-sev-guest/client"
	tdxclient "github.com/google/go-tdx-guest/client"
)

// Attestor produces evidence for a binding on the runtime side.
type Attestor interface {
	Evidence(binding [64]byte) (Evidence, error)
}

// QuoteSource is what the guest's attestation device offers: a signed report or quote
// carrying 64 bytes of report data (go-sev-guest's and go-tdx-guest's QuoteProvider).
type QuoteSource interface {
	GetRawQuote(reportData [64]byte) ([]uint8, error)
}

// Hardware attests with a TEE's quote source: the binding is the report data.
type Hardware struct {
	Type   string // TypeSEV or TypeTDX
	Source QuoteSource
}

// Evidence asks the device for a report over binding.
func (h Hardware) Evidence(binding [64]byte) (Evidence, error) {
	raw, err := h.Source.GetRawQuote(binding)
	if err != nil {
		return Evidence{}, fmt.Errorf("attest: %s report: %w", h.Type, err)
	}
	return Evidence{Type: h.Type, Blob: raw}, nil
}

// DevAttestor signs bindings with the runtime's identity key (no hardware).
type DevAttestor struct{ Key crypto.Signer }

// Evidence signs the binding.
func (d DevAttestor) Evidence(binding [64]byte) (Evidence, error) { return DevEvidence(d.Key, binding) }

// NewAttestor returns the attestor for typ on this machine: "dev" with key, or the
// SEV-SNP / TDX guest device through configfs-tsm or /dev/sev-guest, /dev/tdx_guest.
func NewAttestor(typ string, key crypto.Signer) (Attestor, error) {
	switch typ {
	case TypeDev, "":
		return DevAttestor{Key: key}, nil
	case TypeSEV:
		qp, err := sevclient.GetQuoteProvider()
		if err != nil {
			return nil, fmt.Errorf("attest: no SEV-SNP guest device: %w", err)
		}
		if !qp.IsSupported() {
			return nil, fmt.Errorf("attest: this machine is not an SEV-SNP guest")
		}
		return Hardware{Type: TypeSEV, Source: qp}, nil
	case TypeTDX:
		qp, err := tdxclient.GetQuoteProvider()
		if err != nil {
			return nil, fmt.Errorf("attest: no TDX guest device: %w", err)
		}
		if err := qp.IsSupported(); err != nil {
			return nil, fmt.Errorf("attest: this machine is not a TDX guest: %w", err)
		}
		return Hardware{Type: TypeTDX, Source: qp}, nil
	}
	return nil, fmt.Errorf("attest: unknown attestation type %q (want dev, sev-snp or tdx)", typ)
}
