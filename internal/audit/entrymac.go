package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// Entry MACs: who may add to the log.
//
// On a shared engine, write access to the log's database is enough to append through
// tessera's own driver, and the signer would sign whatever the tree holds. So every entry a
// replica appends ends with a MAC under the fleet's entry key (derived from the audit HMAC
// key every replica holds, EntryKey):
//
//	entry = canonical event with a last member "mac": hex(HMAC-SHA256(key, origin "\n" body))
//	body  = the canonical event without it (Event.Marshal with MAC empty)
//
// and the replica that signs checkpoints checks the MAC of every entry since the last
// checkpoint before it signs a larger one (leaderSigner.Sign): an entry without a valid MAC
// is never covered by a checkpoint, and the signer raises an ALERT naming its index. The
// MAC binds the entry to the log (origin) but not to its position: someone with database
// access can append a copy of an authentic entry (the copy says nothing new; its index is
// not the original's). Outsiders, who do not hold the key, see the MAC as an opaque member.

// macSuffix is what sealing adds: `,"mac":"` 64 hex digits `"`.
const macSuffix = len(`,"mac":""`) + 2*sha256.Size

// EntryKey derives the entry MAC key from the deployment's audit HMAC key.
func EntryKey(auditKey []byte) []byte { return DeriveKey(auditKey, "strongroom/log-entry/v1") }

// DeriveKey derives a 32-byte key for one use, named by label, from the deployment's audit
// HMAC key (the same in every replica): HMAC-SHA256(auditKey, label).
func DeriveKey(auditKey []byte, label string) []byte {
	m := hmac.New(sha256.New, auditKey)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// entryMAC is the MAC of the body made of parts, in order.
func entryMAC(key []byte, origin string, body ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(origin))
	m.Write([]byte{'\n'})
	for _, b := range body {
		m.Write(b)
	}
	return m.Sum(nil)
}

// sealEntry appends the MAC member to a canonical event without one (its last byte '}').
func sealEntry(key []byte, origin string, body []byte) []byte {
	mac := entryMAC(key, origin, body)
	out := make([]byte, 0, len(body)+macSuffix)
	out = append(out, body[:len(body)-1]...)
	out = append(out, `,"mac":"`...)
	out = hex.AppendEncode(out, mac)
	return append(out, `"}`...)
}

// ErrEntryMAC marks a log entry that no replica of this log wrote: no MAC, or a wrong one.
var ErrEntryMAC = errors.New("log entry not written by a replica (entry MAC missing or wrong)")

// checkEntry checks a sealed entry's MAC. It reads bytes, not JSON: the MAC is the entry's
// last member, exactly as sealEntry wrote it (lower-case hex), and the body it covers is
// everything before it.
func checkEntry(key []byte, origin string, e []byte) error {
	n := len(e)
	if n < macSuffix+2 || !bytes.HasSuffix(e, []byte(`"}`)) || !bytes.Equal(e[n-1-macSuffix:n-1-macSuffix+len(`,"mac":"`)], []byte(`,"mac":"`)) {
		return fmt.Errorf("%w: no MAC", ErrEntryMAC)
	}
	got := e[n-2-2*sha256.Size : n-2]
	want := hex.AppendEncode(nil, entryMAC(key, origin, e[:n-1-macSuffix], []byte{'}'})) // the body, unsealed
	if !hmac.Equal(got, want) {
		return ErrEntryMAC
	}
	return nil
}
