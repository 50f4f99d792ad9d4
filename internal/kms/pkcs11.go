package kms

import (
	"context"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// PKCS11Config names a token and an AES-256 key on it.
type PKCS11Config struct {
	Module     string // path of the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so
	TokenLabel string
	PIN        string // user PIN; read from the environment or a file by the caller, never logged
	KeyLabel   string
}

// PKCS11 is a KEK that never leaves the token: wrapping is AES-256-GCM (CKM_AES_GCM)
// performed by the token. One session, serialized, because sessions are not thread-safe.
type PKCS11 struct {
	mu      sync.Mutex
	ctx     *pkcs11.Ctx
	session pkcs11.SessionHandle
	key     pkcs11.ObjectHandle
	id      string
}

var _ KEK = (*PKCS11)(nil)

// OpenPKCS11 logs in to the token and finds the key by label. With create, a missing key is
// generated on the token (sensitive, not extractable).
func OpenPKCS11(cfg PKCS11Config, create bool) (*PKCS11, error) {
	if cfg.Module == "" || cfg.TokenLabel == "" || cfg.KeyLabel == "" {
		return nil, fmt.Errorf("kms: pkcs11 needs module, token label and key label")
	}
	p := pkcs11.New(cfg.Module)
	if p == nil {
		return nil, fmt.Errorf("kms: cannot load PKCS#11 module %s", cfg.Module)
	}
	k := &PKCS11{ctx: p, id: "pkcs11:" + cfg.TokenLabel + "/" + cfg.KeyLabel}
	fail := func(what string, err error) (*PKCS11, error) {
		k.Close()
		return nil, fmt.Errorf("kms: pkcs11 %s: %w", what, err)
	}
	if err := p.Initialize(); err != nil {
		p.Destroy()
		return nil, fmt.Errorf("kms: pkcs11 initialize: %w", err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return fail("slots", err)
	}
	slot, found := uint(0), false
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err == nil && ti.Label == cfg.TokenLabel {
			slot, found = s, true
			break
		}
	}
	if !found {
		return fail("token", fmt.Errorf("no token labelled %q", cfg.TokenLabel))
	}
	if k.session, err = p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
		return fail("open session", err)
	}
	if err := p.Login(k.session, pkcs11.CKU_USER, cfg.PIN); err != nil {
		return fail("login", err)
	}
	k.key, found, err = k.find(cfg.KeyLabel)
	if err != nil {
		return fail("find key", err)
	}
	if !found {
		if !create {
			return fail("find key", fmt.Errorf("no secret key labelled %q on token %q", cfg.KeyLabel, cfg.TokenLabel))
		}
		if k.key, err = k.generate(cfg.KeyLabel); err != nil {
			return fail("generate key", err)
		}
	}
	return k, nil
}

func (k *PKCS11) find(label string) (pkcs11.ObjectHandle, bool, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	if err := k.ctx.FindObjectsInit(k.session, tmpl); err != nil {
		return 0, false, err
	}
	objs, _, err := k.ctx.FindObjects(k.session, 2)
	k.ctx.FindObjectsFinal(k.session)
	if err != nil {
		return 0, false, err
	}
	switch len(objs) {
	case 0:
		return 0, false, nil
	case 1:
		return objs[0], true, nil
	}
	return 0, false, fmt.Errorf("more than one key labelled %q", label)
}

func (k *PKCS11) generate(label string) (pkcs11.ObjectHandle, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	return k.ctx.GenerateKey(k.session, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, tmpl)
}

func (k *PKCS11) ID() string { return k.id }

// gcm runs one CKM_AES_GCM operation on the token.
func (k *PKCS11) gcm(encrypt bool, nonce, in, aad []byte) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ctx == nil {
		return nil, errClosed
	}
	params := pkcs11.NewGCMParams(nonce, aad, 128)
	defer params.Free()
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}
	if encrypt {
		if err := k.ctx.EncryptInit(k.session, mech, k.key); err != nil {
			return nil, err
		}
		return k.ctx.Encrypt(k.session, in)
	}
	if err := k.ctx.DecryptInit(k.session, mech, k.key); err != nil {
		return nil, err
	}
	return k.ctx.Decrypt(k.session, in)
}

func (k *PKCS11) Wrap(_ context.Context, dek, aad []byte) ([]byte, error) {
	w, err := gcmWrap(func(n, pt, a []byte) ([]byte, error) { return k.gcm(true, n, pt, a) }, k.id, dek, aad)
	if err != nil {
		return nil, fmt.Errorf("kms: pkcs11 wrap: %w", err)
	}
	return w, nil
}

func (k *PKCS11) Unwrap(_ context.Context, wrapped, aad []byte) ([]byte, error) {
	return gcmUnwrap(func(n, ct, a []byte) ([]byte, error) { return k.gcm(false, n, ct, a) }, k.id, wrapped, aad)
}

// Close logs out and unloads the module.
func (k *PKCS11) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ctx == nil {
		return nil
	}
	if k.session != 0 {
		k.ctx.Logout(k.session)
		k.ctx.CloseSession(k.session)
	}
	k.ctx.Finalize()
	k.ctx.Destroy()
	k.ctx = nil
	return nil
}
