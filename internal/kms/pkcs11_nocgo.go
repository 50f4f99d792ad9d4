//go:build !cgo

package kms

import (
	"context"
	"errors"
)

// ErrNoPKCS11 is what a binary built without cgo answers for PKCS#11: the default build
// needs no C compiler, and HSM support is the cgo build (CGO_ENABLED=1, gcc), which
// scripts/test builds and tests against SoftHSM2.
var ErrNoPKCS11 = errors.New("kms: PKCS#11 needs a binary built with cgo (CGO_ENABLED=1 and a C compiler); this one was built without")

// PKCS11 stands in for the token-backed KEK in a binary built without cgo.
type PKCS11 struct{}

// OpenPKCS11 always fails without cgo.
func OpenPKCS11(PKCS11Config, bool) (*PKCS11, error) { return nil, ErrNoPKCS11 }

func (*PKCS11) ID() string                                             { return "" }
func (*PKCS11) Wrap(context.Context, []byte, []byte) ([]byte, error)   { return nil, ErrNoPKCS11 }
func (*PKCS11) Unwrap(context.Context, []byte, []byte) ([]byte, error) { return nil, ErrNoPKCS11 }
func (*PKCS11) Close() error                                           { return nil }
