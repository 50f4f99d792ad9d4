// Package audit records every security event in an append-only, witnessed Merkle log
// (C2SP tlog-tiles on transparency-dev/tessera) that outsiders verify with only the log's
// public key and HTTP access, and keeps a search index of it in the store.
//
// # Audit Event Format, version 1
//
// Each log entry is one event: a JSON object with keys in this order, no insignificant
// whitespace, no trailing newline:
//
//	{"v":1,"ts":RFC3339Nano UTC,"kind":"model.import|model.unseal|kms.rotate|...",
//	 "actor":{...},"subject":{...},"decision":"allow|deny","reason":"...","fields":{...}}
//
// actor, subject and fields are flat string maps whose keys are sorted (encoding/json does
// this), so the bytes of an event are a function of its content. decision and reason may
// be empty for events that are not decisions. Secrets never appear; values that would
// disclose what happened without being secret (prompts, outputs, client IPs when the
// operator asks) appear only as "hmac-sha256:HEX", an HMAC-SHA256 under the deployment's
// audit key, so that whoever holds the value can show it was logged without the log
// revealing it. An entry is at most MaxEventSize bytes.
package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"regexp"
	"time"
)

// MaxEventSize caps one encoded event.
const MaxEventSize = 64 << 10

// Decisions.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Event is one security event.
type Event struct {
	V        int               `json:"v"`
	TS       time.Time         `json:"ts"`
	Kind     string            `json:"kind"`
	Actor    map[string]string `json:"actor"`
	Subject  map[string]string `json:"subject"`
	Decision string            `json:"decision"`
	Reason   string            `json:"reason"`
	Fields   map[string]string `json:"fields"`
}

var kindRE = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$`)

// ErrEvent marks a malformed event.
var ErrEvent = errors.New("malformed audit event")

// Validate checks an event before it is logged.
func (e *Event) Validate() error {
	switch {
	case e.V != 1:
		return fmt.Errorf("%w: version %d", ErrEvent, e.V)
	case e.TS.IsZero():
		return fmt.Errorf("%w: no timestamp", ErrEvent)
	case !kindRE.MatchString(e.Kind):
		return fmt.Errorf("%w: kind %q", ErrEvent, e.Kind)
	case e.Decision != "" && e.Decision != Allow && e.Decision != Deny:
		return fmt.Errorf("%w: decision %q", ErrEvent, e.Decision)
	}
	return nil
}

// Marshal returns the canonical bytes of an event (see the package doc).
func (e *Event) Marshal() ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	c := *e
	c.TS = c.TS.UTC()
	for _, m := range []*map[string]string{&c.Actor, &c.Subject, &c.Fields} {
		if *m == nil {
			*m = map[string]string{}
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	out := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
	if len(out) > MaxEventSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrEvent, len(out), MaxEventSize)
	}
	return out, nil
}

// ParseEvent decodes an entry strictly: unknown keys, trailing data and non-canonical
// encodings are refused.
func ParseEvent(b []byte) (*Event, error) {
	if len(b) > MaxEventSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrEvent, len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var e Event
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEvent, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrEvent)
	}
	again, err := e.Marshal()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(again, b) {
		return nil, fmt.Errorf("%w: not in canonical form", ErrEvent)
	}
	return &e, nil
}

// Redactor replaces sensitive values by keyed digests.
type Redactor struct{ key []byte }

// NewRedactor uses a deployment's audit HMAC key (32 bytes).
func NewRedactor(key []byte) (*Redactor, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("audit: HMAC key is %d bytes, want 32", len(key))
	}
	return &Redactor{key: bytes.Clone(key)}, nil
}

// Digest returns "hmac-sha256:HEX" of value.
func (r *Redactor) Digest(value string) string {
	m := hmac.New(sha256.New, r.key)
	m.Write([]byte(value))
	return "hmac-sha256:" + hex.EncodeToString(m.Sum(nil))
}

// NewHash returns an HMAC to feed a large value (a streamed answer) piece by piece;
// finish it with HashDigest.
func (r *Redactor) NewHash() hash.Hash { return hmac.New(sha256.New, r.key) }

// HashDigest formats a NewHash result like Digest.
func HashDigest(h hash.Hash) string { return "hmac-sha256:" + hex.EncodeToString(h.Sum(nil)) }

// Matches reports, in constant time, whether digest is Digest(value).
func (r *Redactor) Matches(digest, value string) bool {
	return hmac.Equal([]byte(digest), []byte(r.Digest(value)))
}
