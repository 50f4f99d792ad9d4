package custody

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/strongroom/strongroom/internal/fsutil"
)

// CA is Strongroom's internal certificate authority for runtime identities and the custody
// listener's server certificate. Its key is a P-256 key in a 0600 file.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// LoadOrCreateCA reads the CA from dir/ca.key (0600: its key and certificate), creating
// it on first use, and keeps dir/ca.crt (the certificate alone, for operators) in step.
// Creation is safe against concurrent processes: the first file linked into place wins.
func LoadOrCreateCA(dir string) (*CA, error) {
	keyPath, crtPath := filepath.Join(dir, "ca.key"), filepath.Join(dir, "ca.crt")
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		if err := createCA(dir, keyPath); err != nil {
			return nil, err
		}
	}
	b, err := fsutil.ReadPrivate(keyPath)
	if err != nil {
		return nil, fmt.Errorf("custody: CA key: %w", err)
	}
	defer clear(b)
	ca := &CA{}
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		switch blk.Type {
		case "EC PRIVATE KEY":
			if ca.key, err = x509.ParseECPrivateKey(blk.Bytes); err != nil {
				return nil, fmt.Errorf("custody: CA key: %w", err)
			}
		case "CERTIFICATE":
			if ca.Cert, err = x509.ParseCertificate(blk.Bytes); err != nil {
				return nil, fmt.Errorf("custody: CA certificate: %w", err)
			}
		}
	}
	if ca.key == nil || ca.Cert == nil || !ca.key.PublicKey.Equal(ca.Cert.PublicKey) {
		return nil, fmt.Errorf("custody: %s must hold the CA key and its certificate", keyPath)
	}
	if cur, err := os.ReadFile(crtPath); err != nil || !bytes.Equal(cur, CertPEM(ca.Cert.Raw)) {
		if err := fsutil.WriteFileAtomic(crtPath, CertPEM(ca.Cert.Raw), 0o644); err != nil {
			return nil, err
		}
	}
	return ca, nil
}

func createCA(dir, keyPath string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "Strongroom custody CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	body := append(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), CertPEM(der)...)
	defer clear(body)
	clear(kder)
	// If another process got there first, its CA is the CA.
	return fsutil.CreateFileOnce(keyPath, body, 0o600)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// CertPEM encodes a DER certificate.
func CertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// ParseCertPEM decodes the first certificate in PEM text.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// Pin is the SHA-256 of the CA certificate, which join tokens carry so a joining runtime
// can authenticate the control plane before it has the CA.
func (ca *CA) Pin() string {
	h := sha256.Sum256(ca.Cert.Raw)
	return hex.EncodeToString(h[:])
}

// Pool is a pool holding the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// IssueClient certifies a runtime's public key under its id for ttl.
func (ca *CA) IssueClient(pub crypto.PublicKey, runtimeID string, now time.Time, ttl time.Duration) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: runtimeID, OrganizationalUnit: []string{"strongroom-runtime"}},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(ttl),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// ServerTLS returns the custody listener's TLS config: a fresh server certificate for hosts
// (names or IPs), the CA sent along so joining runtimes can check it against their pin, and
// client certificates from the CA verified when given (join is the one call without one).
func (ca *CA) ServerTLS(hosts []string) (*tls.Config, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "strongroom custody"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(0, 0, 30),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key}},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.Pool(),
	}, nil
}
