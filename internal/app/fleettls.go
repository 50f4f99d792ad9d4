package app

import (
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/redact"
	"github.com/strongroom/strongroom/internal/tlsclient"
)

// ClientTLS is the TLS configuration of a link to a shared engine (gateway.redis_tls,
// audit.log_db_tls; name is the setting's, for errors), nil when t is: a private CA
// instead of the system's roots, a client certificate read again when its files change.
func ClientTLS(name string, t *config.ClientTLS) (*tls.Config, error) {
	l, err := clientLink(name, t)
	if l == nil {
		return nil, err
	}
	return l.TLS, nil
}

func clientLink(name string, t *config.ClientTLS) (*tlsclient.Link, error) {
	if t == nil {
		return nil, nil
	}
	l, err := tlsclient.New(tlsclient.Files{CA: t.CAFile, Cert: t.CertFile, Key: t.KeyFile})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return l, nil
}

// clientTLS is ClientTLS for this process's own links: the client certificate's expiry is
// a metric, strongroom_tls_client_cert_expiry_timestamp_seconds{link=name}, to alert on
// before the engine refuses the replica (the certificate is read again when its files
// change, and the gauge follows).
func (a *App) clientTLS(name string, t *config.ClientTLS) (*tls.Config, error) {
	l, err := clientLink(name, t)
	if l == nil {
		return nil, err
	}
	if a.Metrics != nil && t.CertFile != "" {
		g := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strongroom_tls_client_cert_expiry_timestamp_seconds",
			Help:        "When the client certificate a replica presents to a shared engine expires (Unix seconds), by link (the setting that names it).",
			ConstLabels: prometheus.Labels{"link": name}},
			func() float64 { return float64(l.CertNotAfter().Unix()) })
		if err := a.Metrics.Register(g); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return l.TLS, nil
}

// storeUnverifiedRemote says whether a PostgreSQL store DSN reaches a host that is not
// loopback by a path without TLS that checks the server (sslmode disable, allow, prefer —
// whose fallback is plaintext — or require without sslrootcert): the store's wrapped data
// keys, principals and leases would cross the network open to whoever is on the path.
// pgx's own reading of the DSN decides (its environment variables included); a DSN it
// cannot read is store.Open's to report.
func storeUnverifiedRemote(store string) bool {
	dsn, postgres, err := redact.StoreAddress(store)
	if err != nil || !postgres {
		return false
	}
	c, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return false
	}
	unchecked := func(host string, t *tls.Config) bool {
		if strings.HasPrefix(host, "/") || !plaintextRemote("tcp", host) {
			return false // a unix socket, or this host
		}
		return t == nil || (t.InsecureSkipVerify && t.VerifyPeerCertificate == nil)
	}
	if unchecked(c.Host, c.TLSConfig) {
		return true
	}
	for _, f := range c.Fallbacks {
		if unchecked(f.Host, f.TLSConfig) {
			return true
		}
	}
	return false
}
