package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a throwaway certificate authority for tests of TLS links: its certificate is
// written to CAFile; Leaf signs certificates of any shape, Issue writes them as files.
type CA struct {
	CAFile string
	Cert   *x509.Certificate
	DER    []byte
	Key    *ecdsa.PrivateKey
	dir    string
	serial atomic.Int64
}

// NewCA makes a CA named cn in a temporary directory of t.
func NewCA(t testing.TB, cn string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{dir: t.TempDir(), Cert: cert, DER: der, Key: key}
	ca.serial.Store(1)
	ca.CAFile = filepath.Join(ca.dir, "ca.pem")
	writePEM(t, ca.CAFile, ca.PEM())
	return ca
}

// PEM is the CA's certificate, PEM-encoded.
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.DER})
}

// Leaf is an issued certificate and its key, parsed and PEM-encoded.
type Leaf struct {
	DER             []byte
	Cert            *x509.Certificate
	Key             *ecdsa.PrivateKey
	CertPEM, KeyPEM []byte
}

// Pair is the leaf as a TLS certificate.
func (l Leaf) Pair() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{l.DER}, PrivateKey: l.Key, Leaf: l.Cert}
}

// Leaf signs a certificate for cn, valid from an hour ago for a day: a server's for hosts
// (IP addresses or DNS names), a client's without them; shape, if not nil, changes the
// template last (names, usages, validity).
func (ca *CA) Leaf(t testing.TB, cn string, hosts []string, shape func(*x509.Certificate)) Leaf {
	t.Helper()
	return IssueBy(t, ca.Cert, ca.Key, ca.serial.Add(1), cn, hosts, shape)
}

// IssueBy is CA.Leaf signed by any parent and key (a look-alike CA, a leaf's own key).
func IssueBy(t testing.TB, parent *x509.Certificate, pkey *ecdsa.PrivateKey, serial int64, cn string, hosts []string, shape func(*x509.Certificate)) Leaf {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if len(hosts) > 0 {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	if shape != nil {
		shape(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, pkey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return Leaf{DER: der, Cert: cert, Key: key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})}
}

// Issue writes a certificate for cn signed by the CA, and its key, as PEM files under name
// in the CA's directory (name.pem, name.key), and returns their paths. hosts make it a
// server certificate; without them it is a client certificate.
func (ca *CA) Issue(t testing.TB, name, cn string, hosts ...string) (certFile, keyFile string) {
	t.Helper()
	l := ca.Leaf(t, cn, hosts, nil)
	certFile, keyFile = filepath.Join(ca.dir, name+".pem"), filepath.Join(ca.dir, name+".key")
	writePEM(t, certFile, l.CertPEM)
	writePEM(t, keyFile, l.KeyPEM)
	return certFile, keyFile
}

func writePEM(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
