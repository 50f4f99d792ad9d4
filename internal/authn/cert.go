package authn

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
)

// PrincipalURIPrefix marks the SAN URI that names a principal in a client certificate:
// "strongroom:principal:ID".
const PrincipalURIPrefix = "strongroom:principal:"

// Certs authenticates callers by client certificates that the TLS layer has already
// verified against the configured client CA. The certificate names a registered principal.
type Certs struct{ St Store }

// AuthenticateCert maps a verified certificate to its principal.
func (c Certs) AuthenticateCert(ctx context.Context, cert *x509.Certificate) (*Principal, error) {
	id := ""
	for _, u := range cert.URIs {
		if s := u.String(); strings.HasPrefix(s, PrincipalURIPrefix) {
			id = strings.TrimPrefix(s, PrincipalURIPrefix)
		}
	}
	if id == "" {
		id = cert.Subject.CommonName
	}
	if id == "" {
		return nil, fmt.Errorf("%w: client certificate names no principal", ErrUnauthenticated)
	}
	p, err := c.St.GetPrincipal(ctx, id)
	if err != nil {
		return nil, lookupErr("certificate principal "+id, err)
	}
	return &Principal{Principal: p, KeyID: "mtls:" + cert.SerialNumber.Text(16)}, nil
}
