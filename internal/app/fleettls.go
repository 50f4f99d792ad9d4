package app

import (
	"crypto/tls"
	"fmt"

	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/tlsclient"
)

// ClientTLS is the TLS configuration of a link to a shared engine (gateway.redis_tls,
// audit.log_db_tls; name is the setting's, for errors), nil when t is: a private CA
// instead of the system's roots, a client certificate read again when its files change.
func ClientTLS(name string, t *config.ClientTLS) (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	c, err := tlsclient.Config(tlsclient.Files{CA: t.CAFile, Cert: t.CertFile, Key: t.KeyFile})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return c, nil
}
