package custody

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/store"
)

// Identity is a joined runtime's key, certificate and trusted CA, kept in a directory:
// runtime.key (0600), runtime.crt, ca.crt and server (the control plane's URL).
type Identity struct {
	Dir    string
	Server string
	Key    *ecdsa.PrivateKey
	Cert   *x509.Certificate // as loaded or joined; RenewCert replaces it (under mu)
	CA     *x509.Certificate

	mu sync.Mutex
}

func (id *Identity) cert() *x509.Certificate {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.Cert
}

// NotAfter is when the current certificate expires.
func (id *Identity) NotAfter() time.Time { return id.cert().NotAfter }

// RuntimeID is the runtime's id (its certificate's common name).
func (id *Identity) RuntimeID() string { return id.cert().Subject.CommonName }

// Join creates a key, exchanges token for a certificate at server and saves the identity
// in dir. The control plane is authenticated by the CA pin inside the token.
func Join(ctx context.Context, server, token, dir string) (*Identity, error) {
	t, err := ParseJoinToken(token)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "runtime"}}, key)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyConnection:   func(cs tls.ConnectionState) error { return verifyPinned(cs, t.Pin) },
	}}}
	var resp JoinResponse
	if err := do(ctx, hc, http.MethodPost, strings.TrimRight(server, "/")+"/custody/v1/join", JoinRequest{Token: token, CSR: csr}, &resp); err != nil {
		return nil, err
	}
	id := &Identity{Dir: dir, Server: strings.TrimRight(server, "/"), Key: key}
	if id.Cert, err = ParseCertPEM([]byte(resp.Cert)); err != nil {
		return nil, err
	}
	if id.CA, err = ParseCertPEM([]byte(resp.CA)); err != nil {
		return nil, err
	}
	if h := sha256.Sum256(id.CA.Raw); hex.EncodeToString(h[:]) != t.Pin {
		return nil, fmt.Errorf("custody: the control plane returned a CA that does not match the token's pin")
	}
	return id, id.save()
}

// verifyPinned accepts a server chain that includes the pinned CA and whose leaf it signed.
func verifyPinned(cs tls.ConnectionState, pin string) error {
	for _, c := range cs.PeerCertificates {
		h := sha256.Sum256(c.Raw)
		if hex.EncodeToString(h[:]) != pin {
			continue
		}
		pool := x509.NewCertPool()
		pool.AddCert(c)
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, DNSName: cs.ServerName})
		return err
	}
	return errors.New("custody: the control plane's certificate does not chain to the CA pinned in the join token")
}

func (id *Identity) save() error {
	if err := os.MkdirAll(id.Dir, 0o700); err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(id.Key)
	if err != nil {
		return err
	}
	kpem := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	clear(kder)
	defer clear(kpem)
	for _, f := range []struct {
		name string
		b    []byte
		mode os.FileMode
	}{{"runtime.key", kpem, 0o600}, {"runtime.crt", CertPEM(id.cert().Raw), 0o644}, {"ca.crt", CertPEM(id.CA.Raw), 0o644}, {"server", []byte(id.Server + "\n"), 0o644}} {
		if err := fsutil.WriteFileAtomic(filepath.Join(id.Dir, f.name), f.b, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// LoadIdentity reads an identity saved by Join.
func LoadIdentity(dir string) (*Identity, error) {
	kb, err := fsutil.ReadPrivate(filepath.Join(dir, "runtime.key"))
	if err != nil {
		return nil, fmt.Errorf("custody: runtime identity: %w (join first: strongroom runtime join)", err)
	}
	defer clear(kb)
	blk, _ := pem.Decode(kb)
	if blk == nil {
		return nil, errors.New("custody: runtime.key is not PEM")
	}
	id := &Identity{Dir: dir}
	if id.Key, err = x509.ParseECPrivateKey(blk.Bytes); err != nil {
		return nil, err
	}
	for _, f := range []struct {
		name string
		dst  **x509.Certificate
	}{{"runtime.crt", &id.Cert}, {"ca.crt", &id.CA}} {
		b, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return nil, err
		}
		if *f.dst, err = ParseCertPEM(b); err != nil {
			return nil, fmt.Errorf("custody: %s: %w", f.name, err)
		}
	}
	srv, err := os.ReadFile(filepath.Join(dir, "server"))
	if err != nil {
		return nil, err
	}
	id.Server = strings.TrimSpace(string(srv))
	return id, nil
}

// Client calls the custody API as a runtime (mTLS).
type Client struct {
	id   *Identity
	http *http.Client
}

// Client returns an API client for the identity.
func (id *Identity) Client() *Client {
	pool := x509.NewCertPool()
	pool.AddCert(id.CA)
	tr := &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &tls.Certificate{Certificate: [][]byte{id.cert().Raw}, PrivateKey: id.Key}, nil
		},
	}}
	return &Client{id: id, http: &http.Client{Transport: tr}}
}

// APIError is a refusal from the control plane; errors.Is matches the custody sentinels.
type APIError struct {
	Status        int
	Code, Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("control plane: %s (%d %s)", e.Message, e.Status, e.Code)
}

func (e *APIError) Unwrap() error { return errFromCode(e.Code) }

func do(ctx context.Context, hc *http.Client, method, u string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e ErrorResponse
		if json.Unmarshal(b, &e) != nil || e.Error.Code == "" {
			return &APIError{Status: resp.StatusCode, Code: "unavailable", Message: http.StatusText(resp.StatusCode)}
		}
		return &APIError{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("control plane: bad response: %w", err)
	}
	if resp.StatusCode == http.StatusAccepted {
		return ErrPendingApproval
	}
	return nil
}

func (c *Client) url(p string) string { return c.id.Server + "/custody/v1/" + p }

// Nonce fetches a fresh attestation nonce.
func (c *Client) Nonce(ctx context.Context) ([]byte, error) {
	var r NonceResponse
	return r.Nonce, do(ctx, c.http, http.MethodPost, c.url("nonce"), struct{}{}, &r)
}

// Lease requests a lease. While approvals are pending it returns the response (with
// Approval set) and an error matching ErrPendingApproval.
func (c *Client) Lease(ctx context.Context, req LeaseRequestWire) (*LeaseResponse, error) {
	var r LeaseResponse
	err := do(ctx, c.http, http.MethodPost, c.url("leases"), req, &r)
	return &r, err
}

// Renew extends a lease.
func (c *Client) Renew(ctx context.Context, id string) (store.Lease, error) {
	var r LeaseResponse
	return r.Lease, do(ctx, c.http, http.MethodPost, c.url("leases/"+url.PathEscape(id)+"/renew"), struct{}{}, &r)
}

// Release ends a lease this runtime no longer needs.
func (c *Client) Release(ctx context.Context, id string) (store.Lease, error) {
	var r LeaseResponse
	return r.Lease, do(ctx, c.http, http.MethodPost, c.url("leases/"+url.PathEscape(id)+"/release"), struct{}{}, &r)
}

// RenewCert gets a fresh certificate for the identity's key and saves it.
func (c *Client) RenewCert(ctx context.Context) error {
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "runtime"}}, c.id.Key)
	if err != nil {
		return err
	}
	var r JoinResponse
	if err := do(ctx, c.http, http.MethodPost, c.url("cert"), CertRequest{CSR: csr}, &r); err != nil {
		return err
	}
	cert, err := ParseCertPEM([]byte(r.Cert))
	if err != nil {
		return err
	}
	c.id.mu.Lock()
	c.id.Cert = cert
	c.id.mu.Unlock()
	return c.id.save()
}

func (c *Client) get(ctx context.Context, p string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(p), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e ErrorResponse
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		json.Unmarshal(b, &e)
		return nil, &APIError{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message}
	}
	return resp, nil
}

// Watch opens the lease's revocation stream (lines "ok" and, last, "revoked <reason>").
func (c *Client) Watch(ctx context.Context, id string) (io.ReadCloser, error) {
	resp, err := c.get(ctx, "leases/"+url.PathEscape(id)+"/watch")
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// File streams one sealed file of a leased version.
func (c *Client) File(ctx context.Context, lease, path string) (io.ReadCloser, int64, error) {
	resp, err := c.get(ctx, "leases/"+url.PathEscape(lease)+"/files/"+path)
	if err != nil {
		return nil, 0, err
	}
	return resp.Body, resp.ContentLength, nil
}
