// Package tlsclient builds the TLS configuration with which a replica reaches the engines a
// fleet shares — Redis (gateway.redis_tls) and the log's MariaDB/MySQL (audit.log_db_tls) —
// through a private CA and a client certificate:
//
//   - with a CA file, only its certificates are trusted for the server, not the system's
//     roots (a private CA is the usual way these engines are run; trusting every public CA
//     as well would let any of them vouch for "redis.internal");
//   - the client certificate and key are read when the configuration is built (a bad pair
//     is an error at start, not at the first connection) and read again when either file
//     changes, so a rotated certificate serves from the next handshake without a restart;
//     a pair that does not load (a rotation half done) leaves the last good one in use
//     until it expires;
//   - TLS 1.2 at least.
package tlsclient

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"
)

// Files names the PEM files: CA (the server's trust anchors; empty: the system's roots),
// Cert and Key (the client certificate and its key; both or neither).
type Files struct {
	CA, Cert, Key string
}

// Link is a client TLS configuration and the client certificate it presents.
type Link struct {
	TLS *tls.Config
	r   *reloader // nil without a client certificate
}

// CertNotAfter is when the client certificate in use expires (zero without one): what an
// operator alerts on before the engines start refusing the replica.
func (l *Link) CertNotAfter() time.Time {
	if l.r == nil {
		return time.Time{}
	}
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	return l.r.notAfter
}

// Config is New's TLS configuration.
func Config(f Files) (*tls.Config, error) {
	l, err := New(f)
	if err != nil {
		return nil, err
	}
	return l.TLS, nil
}

// New is a client TLS configuration for f. The caller sets ServerName (or lets its driver
// set it from the address it dials).
func New(f Files) (*Link, error) {
	l := &Link{TLS: &tls.Config{MinVersion: tls.VersionTLS12}}
	if f.CA != "" {
		pool, err := CAPool(f.CA)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		l.TLS.RootCAs = pool
	}
	switch {
	case f.Cert == "" && f.Key == "":
	case f.Cert == "" || f.Key == "":
		return nil, errors.New("a client certificate needs both its cert_file and its key_file")
	default:
		l.r = &reloader{cert: f.Cert, key: f.Key}
		if err := l.r.load(); err != nil {
			return nil, err
		}
		l.TLS.GetClientCertificate = l.r.get
	}
	return l, nil
}

// CAPool is the certificates of the PEM file at path (at least one).
func CAPool(path string) (*x509.CertPool, error) {
	pem, err := readPEM(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no PEM certificate in %s", path)
	}
	return pool, nil
}

// maxPEM bounds a CA, certificate or key file: a chain of a few certificates is a few
// kilobytes.
const maxPEM = 1 << 20

// readPEM reads the PEM file at path, which must be a regular file (through symlinks, as a
// rotation agent's are) of at most maxPEM bytes. It is opened without blocking: a FIFO put
// in its place (outside round 62) had held every handshake of the link for good, and a
// symlink to /dev/zero had filled the memory.
func readPEM(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	switch {
	case err != nil:
		return nil, err
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	case fi.Size() > maxPEM:
		return nil, fmt.Errorf("%s is over %d bytes", path, maxPEM)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPEM+1))
	if err == nil && len(b) > maxPEM {
		err = fmt.Errorf("%s is over %d bytes", path, maxPEM)
	}
	if err != nil {
		clear(b)
		return nil, err
	}
	return b, nil
}

// reloader is the client certificate, read again when its files change. The files are
// read whole at every handshake (a pooled connection's, so rare; a few kilobytes), outside
// the lock, and compared with what was loaded: a rotation is seen whatever the file
// system's time stamps resolve.
type reloader struct {
	cert, key string

	mu       sync.Mutex // never held across a file's read
	cur      *tls.Certificate
	certPEM  []byte   // what cur was made of: the certificate file's bytes
	keySum   [32]byte // and the key file's SHA-256 (its bytes are not kept)
	notAfter time.Time
}

// read returns both files' bytes.
func (r *reloader) read() (cert, key []byte, err error) {
	cert, err0 := readPEM(r.cert)
	key, err1 := readPEM(r.key)
	if err := errors.Join(err0, err1); err != nil {
		clear(key)
		return nil, nil, fmt.Errorf("client certificate: %w", err)
	}
	return cert, key, nil
}

// load reads the pair and makes it current, or says why it cannot (at start).
func (r *reloader) load() error {
	cert, key, err := r.read()
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.use(cert, key, time.Now())
}

// use parses the pair and, if it is valid at now, makes it current; it clears key. r.mu
// is held.
func (r *reloader) use(cert, key []byte, now time.Time) error {
	defer clear(key)
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		// The error names the files, never their contents.
		return fmt.Errorf("client certificate %s with key %s: %w", r.cert, r.key, err)
	}
	// A pair the engines would refuse (rotated to an expired or not yet valid one) does not
	// replace one they take.
	if l := pair.Leaf; now.Before(l.NotBefore) || !now.Before(l.NotAfter) {
		return fmt.Errorf("client certificate %s is valid from %s to %s, not now", r.cert,
			l.NotBefore.UTC().Format(time.RFC3339), l.NotAfter.UTC().Format(time.RFC3339))
	}
	r.cur, r.certPEM, r.keySum, r.notAfter = &pair, cert, sha256.Sum256(key), pair.Leaf.NotAfter
	return nil
}

// get is tls.Config.GetClientCertificate: the current certificate, read again first if
// either file has changed since.
func (r *reloader) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	cert, key, err := r.read()
	defer clear(key)
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil && (!bytes.Equal(cert, r.certPEM) || sha256.Sum256(key) != r.keySum) {
		err = r.use(cert, key, now)
	}
	if err != nil && !now.Before(r.notAfter) {
		return nil, fmt.Errorf("%w (and the last good one expired at %s)", err, r.notAfter.UTC().Format(time.RFC3339))
	}
	return r.cur, nil
}
