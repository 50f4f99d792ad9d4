//go:build cgo

package kms

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// PKCS11 is a KEK that never leaves the token: wrapping is AES-256-GCM (CKM_AES_GCM)
// performed by the token. One session, serialized, because sessions are not thread-safe.
type PKCS11 struct {
	mu      sync.Mutex
	module  string
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
	p, err := acquireModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	k := &PKCS11{ctx: p, module: cfg.Module, id: "pkcs11:" + cfg.TokenLabel + "/" + cfg.KeyLabel}
	fail := func(what string, err error) (*PKCS11, error) {
		k.Close()
		return nil, fmt.Errorf("kms: pkcs11 %s: %w", what, err)
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
	// Login is per application and token: another KEK on the same token may have done it,
	// in which case the token cannot check this PIN, so we compare it with the one that did.
	if err := p.Login(k.session, pkcs11.CKU_USER, cfg.PIN); err != nil {
		if !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
			return fail("login", err)
		}
		if !samePIN(cfg.Module, cfg.TokenLabel, cfg.PIN) {
			return fail("login", pkcs11.Error(pkcs11.CKR_PIN_INCORRECT))
		}
	} else {
		rememberPIN(cfg.Module, cfg.TokenLabel, cfg.PIN)
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

// Close ends the session and releases the module. It does not call C_Logout, which would
// log out every other session of this process on the token; the token logs out when its
// last session closes.
func (k *PKCS11) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ctx == nil {
		return nil
	}
	if k.session != 0 {
		k.ctx.CloseSession(k.session)
	}
	releaseModule(k.module)
	k.ctx = nil
	return nil
}

// A PKCS#11 module is initialized once per process (C_Initialize is process-wide), so
// loaded modules are shared and reference-counted; this is the one package-level state.
var modules = struct {
	sync.Mutex
	m map[string]*loadedModule
}{m: map[string]*loadedModule{}}

type loadedModule struct {
	ctx  *pkcs11.Ctx
	refs int
	pins map[string][32]byte // token label -> SHA-256 of the PIN that logged in
}

func rememberPIN(module, token, pin string) {
	modules.Lock()
	defer modules.Unlock()
	if lm, ok := modules.m[module]; ok {
		lm.pins[token] = sha256.Sum256([]byte(pin))
	}
}

func samePIN(module, token, pin string) bool {
	modules.Lock()
	defer modules.Unlock()
	lm, ok := modules.m[module]
	if !ok {
		return false
	}
	want, ok := lm.pins[token]
	got := sha256.Sum256([]byte(pin))
	return ok && subtle.ConstantTimeCompare(want[:], got[:]) == 1
}

func acquireModule(path string) (*pkcs11.Ctx, error) {
	modules.Lock()
	defer modules.Unlock()
	if lm, ok := modules.m[path]; ok {
		lm.refs++
		return lm.ctx, nil
	}
	p := pkcs11.New(path)
	if p == nil {
		return nil, fmt.Errorf("kms: cannot load PKCS#11 module %s", path)
	}
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		p.Destroy()
		return nil, fmt.Errorf("kms: pkcs11 initialize: %w", err)
	}
	modules.m[path] = &loadedModule{ctx: p, refs: 1, pins: map[string][32]byte{}}
	return p, nil
}

func releaseModule(path string) {
	modules.Lock()
	defer modules.Unlock()
	lm, ok := modules.m[path]
	if !ok {
		return
	}
	if lm.refs--; lm.refs == 0 {
		lm.ctx.Finalize()
		lm.ctx.Destroy()
		delete(modules.m, path)
	}
}
