// Package audit records every security event in an append-only, witnessed Merkle log
// (C2SP tlog-tiles on transparency-dev/tessera) that outsiders verify with only the log's
// public key and HTTP access, and keeps a search index of it in the store.
//
// # Audit Event Format, version 1
//
// Each log entry is one event: a JSON object with keys in this order, no insignificant
// whitespace, no trailing newline:
//
//	{"v":1,"ts":RFC3339Nano UTC,"kind":KIND (see Event kinds below),
//	 "actor":{...},"subject":{...},"decision":"allow|deny","reason":"...","fields":{...}}
//
// actor, subject and fields are flat string maps whose keys are sorted (encoding/json does
// this), so the bytes of an event are a function of its content; strings are escaped as
// encoding/json escapes them with HTML escaping off, except that invalid UTF-8 is written
// as the character U+FFFD (so that every entry parses and marshals back to itself: a
// request record with a stray byte once made its journal segment unreadable after a
// crash). decision and reason may
// be empty for events that are not decisions. Secrets never appear; values that would
// disclose what happened without being secret (prompts, outputs, client IPs when the
// operator asks) appear only as "hmac-sha256:HEX", an HMAC-SHA256 under the deployment's
// audit key, so that whoever holds the value can show it was logged without the log
// revealing it. An entry is at most MaxEventSize bytes. An entry a replica appends has one
// more, last member, "mac":"<64 lower-case hex>": its entry MAC (entrymac.go), which the
// checkpoint signer checks; request records inside a batch's bundle carry none.
//
// # Event kinds
//
// Every kind Strongroom writes is a constant in kinds.go (type Kind); readers match on
// the constants. By who records them:
//
//	The deployment and its keys:
//	  deployment.init          init made the data directory
//	  kms.rotate               the KEK was rotated (allow) or the rotation failed (deny)
//	  policy.load              a Cedar policy set came into force (each file's SHA-256)
//	  file.seal                one file sealed
//	  file.unseal              one file unsealed
//
//	The inventory:
//	  model.import             a version was sealed, signed and listed
//	  model.register           an external model's record was created
//	  model.set                a version's record changed (before, after, by)
//	  model.verify             signature and digests checked
//	  model.unseal             weights written out in the clear (approved)
//	  model.disable            no more leases on a version
//	  model.gc                 unused keys and blobs removed
//	  model.export             a per-licensee marked copy was made
//	  model.trace              a suspect copy was traced to a licensee (or none)
//	  scan.run                 a scan ran
//	  scan.finding             a scanned model derives from a protected one
//
//	Principals and keys:
//	  principal.put            a principal was created or changed
//	  principal.screening_hit  a denied-party list matched
//	  principal.totp           a TOTP secret was enrolled
//	  key.create
//	  key.rotate
//	  key.revoke
//	  watermark.detect         text was checked for a tenant's watermark
//
//	Custody:
//	  runtime.token            a join token was issued
//	  runtime.join             a runtime joined (or was refused)
//	  runtime.cert             a runtime's certificate was renewed
//	  runtime.revoke           a runtime's identity was revoked
//	  runtime.auth             a runtime's certificate was refused
//	  lease.grant              a lease was granted or refused
//	  lease.renew              a lease was renewed or its renewal refused
//	  lease.revoke             a lease was revoked
//	  lease.end                a lease ended (released, expired)
//	  approval.request         a restricted action waits for approvers
//	  approval.approve         an approver approved (or was refused)
//	  approval.deny            an approver denied (or was refused)
//	  alert.egress             a daily egress budget ran out
//
//	The gateway:
//	  gateway.request          one request record (in a batch)
//	  gateway.stream_start     a streamed answer's record before its first byte (in a
//	                           batch); its gateway.request follows at the stream's end
//	  gateway.unauthenticated  refusals before identification, summed
//
//	Detection and response:
//	  detect.alert             a detector flagged a principal
//	  detect.action            a sanction was imposed
//	  detect.lift              a sanction was lifted
//	  detect.mode              a detector was promoted or demoted (shadow/enforce)
//	  incident.close           an incident was closed, with a note
//
//	The console (what its users do is recorded under the kinds above, the user as actor):
//	  console.login            a sign-in (allow) or a refused one (deny), with its method
//	  console.stepup           a TOTP step-up for destructive actions
//	  console.action           an operation asked for, before it is done (deny: refused)
//	  console.audit_export     the audit explorer's export, with its query
//
//	Request batches:
//	  audit.batch              a batch of request records: bundle digest, record count, Merkle root (batch.go)
//
//	The log itself:
//	  audit.foreign_entry      an operator acknowledged an entry no replica wrote: its index and leaf hash (foreign.go)
//	  audit.refused_entry      an entry reported not recorded (its operation refused) was found in the log: its index and leaf hash (lostcommit.go)
//	  audit.log_repair         an operator rebuilt a shared log's poisoned unsigned tail: P, P's old leaf, dropped leaves (repair.go)
//	  audit.unsealed_entry     never written: the search index's kind for a shared log's unsealed entries
//	  audit.copied_entry       never written: the search index's kind for an entry whose bytes repeat an earlier one's
package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	jsonv2 "github.com/go-json-experiment/json"
)

// MaxEventSize caps one encoded event: tessera writes an entry's length in 16 bits.
const MaxEventSize = 1<<16 - 1

// Decisions.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Event is one security event.
type Event struct {
	V        int               `json:"v"`
	TS       time.Time         `json:"ts"`
	Kind     Kind              `json:"kind"`
	Actor    map[string]string `json:"actor"`
	Subject  map[string]string `json:"subject"`
	Decision string            `json:"decision"`
	Reason   string            `json:"reason"`
	Fields   map[string]string `json:"fields"`
	// MAC is the entry MAC a replica adds as it appends (entrymac.go); empty in events
	// built by callers, and in request records (their batch entry carries one).
	MAC string `json:"mac,omitempty"`
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
	case !kindRE.MatchString(string(e.Kind)):
		return fmt.Errorf("%w: kind %q", ErrEvent, e.Kind)
	case e.Decision != "" && e.Decision != Allow && e.Decision != Deny:
		return fmt.Errorf("%w: decision %q", ErrEvent, e.Decision)
	}
	// Keys are the code's names: two invalid ones would both be written as U+FFFD, a
	// duplicate key that no strict parser reads.
	for _, m := range []map[string]string{e.Actor, e.Subject, e.Fields} {
		for k := range m {
			if !utf8.ValidString(k) {
				return fmt.Errorf("%w: key %q is not UTF-8", ErrEvent, k)
			}
		}
	}
	return nil
}

// Marshal returns the canonical bytes of an event (see the package doc).
//
// The bytes are those encoding/json produces for Event with HTML escaping off (sorted map
// keys, its string escapes) once invalid UTF-8 is replaced by U+FFFD; this encoder writes
// them without reflection. FuzzMarshalMatchesJSON holds the two equal, and every event's
// bytes parsed back by ParseEvent.
func (e *Event) Marshal() ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	ts := e.TS.UTC()
	if y := ts.Year(); y < 0 || y > 9999 {
		return nil, fmt.Errorf("%w: timestamp year %d", ErrEvent, y)
	}
	b := make([]byte, 0, 512)
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(e.V), 10)
	b = append(b, `,"ts":"`...)
	b = ts.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","kind":`...)
	b = appendJSONString(b, string(e.Kind))
	b = append(b, `,"actor":`...)
	b = appendJSONMap(b, e.Actor)
	b = append(b, `,"subject":`...)
	b = appendJSONMap(b, e.Subject)
	b = append(b, `,"decision":`...)
	b = appendJSONString(b, e.Decision)
	b = append(b, `,"reason":`...)
	b = appendJSONString(b, e.Reason)
	b = append(b, `,"fields":`...)
	b = appendJSONMap(b, e.Fields)
	if e.MAC != "" {
		b = append(b, `,"mac":`...)
		b = appendJSONString(b, e.MAC)
	}
	b = append(b, '}')
	if len(b) > MaxEventSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), MaxEventSize)
	}
	return b, nil
}

// ErrTooLarge marks an event over MaxEventSize; Truncated makes one that fits.
var ErrTooLarge = fmt.Errorf("%w: too large", ErrEvent)

// truncatedValue is the longest string value a truncated event keeps.
const truncatedValue = 1 << 10

// Truncated returns a copy of e that fits MaxEventSize with room for the entry MAC: every
// actor, subject and field value and the reason are cut to 1 KiB (at a character boundary)
// with a marker saying how much was cut, and fields.truncated is set. If that is still too
// large (too many fields), the fields are replaced by the marker alone and the actor and
// subject keep 8 members each; if even that is too large (values that JSON escaping makes
// six times longer), they keep 64 bytes each. The log never drops an event for its size.
func (e Event) Truncated() Event {
	cut := func(v string, limit int) string {
		if len(v) <= limit {
			return v
		}
		n := limit
		for n > 0 && !utf8.RuneStart(v[n]) {
			n--
		}
		return v[:n] + "…[truncated " + strconv.Itoa(len(v)-n) + " bytes]"
	}
	cutMap := func(m map[string]string, members, limit int) map[string]string {
		out := make(map[string]string, min(len(m), members))
		if v, ok := m["principal"]; ok { // who, first: the rest in key order
			out["principal"] = cut(v, limit)
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if len(out) == members {
				break
			}
			if k != "principal" {
				out[cut(k, limit)] = cut(m[k], limit)
			}
		}
		return out
	}
	fits := func(t Event) bool {
		b, err := t.Marshal()
		return err == nil && len(b) <= MaxEventSize-macSuffix
	}
	t := e
	t.Reason, t.Actor, t.Subject, t.Fields = cut(e.Reason, truncatedValue), cutMap(e.Actor, len(e.Actor), truncatedValue),
		cutMap(e.Subject, len(e.Subject), truncatedValue), cutMap(e.Fields, len(e.Fields), truncatedValue)
	t.Fields["truncated"] = "true"
	if fits(t) {
		return t
	}
	t.Fields = map[string]string{"truncated": "true", "dropped_fields": strconv.Itoa(len(e.Fields))}
	for _, limit := range []int{truncatedValue, 64} {
		t.Reason, t.Actor, t.Subject = cut(e.Reason, limit), cutMap(e.Actor, 8, limit), cutMap(e.Subject, 8, limit)
		if fits(t) {
			break
		}
	}
	return t
}

// appendJSONMap writes a flat string map with its keys sorted, as encoding/json does.
func appendJSONMap(b []byte, m map[string]string) []byte {
	var small [16]string
	keys := small[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, m[k])
	}
	return append(b, '}')
}

// ValidUTF8 is s as an entry's bytes carry it: each invalid UTF-8 byte as U+FFFD (what a
// parse of the entry gives back; the search index keeps the same).
func ValidUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return string([]rune(s))
}

// AppendJSONString appends s as a JSON string exactly as the canonical form writes it (a
// caller that writes a record's canonical bytes itself, the gateway's request records).
func AppendJSONString(b []byte, s string) []byte { return appendJSONString(b, s) }

// appendJSONString writes s as encoding/json does with HTML escaping off — ", \ and
// control characters escaped (\b \f \n \r \t by name), U+2028/U+2029 escaped — except
// that each invalid UTF-8 byte becomes the character U+FFFD (encoding/json writes the
// escape \ufffd, which does not survive a parse and a marshal unchanged).
func appendJSONString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			// Written as the character itself, not encoding/json's \ufffd escape: a parse
			// gives U+FFFD, which must marshal back to the same bytes (ParseEvent's check).
			b = append(b, s[start:i]...)
			b = append(b, "\uFFFD"...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, `\u202`...)
			b = append(b, hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// ParseEvent decodes an entry strictly: unknown keys, trailing data and non-canonical
// encodings are refused.
func ParseEvent(b []byte) (*Event, error) {
	if len(b) > MaxEventSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrEvent, len(b))
	}
	// go-json-experiment: also refuses duplicate keys and invalid UTF-8, and decodes about
	// twice as fast as encoding/json (report.BenchmarkCompliance walks every record).
	var e Event
	if err := jsonv2.Unmarshal(b, &e, jsonv2.RejectUnknownMembers(true)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEvent, err)
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
type Redactor struct {
	key []byte
	// macs holds keyed HMACs for reuse: the gateway digests two or three values per
	// request, and keying one (two SHA-256 blocks, four allocations) cost more than the
	// digest of a short value.
	macs sync.Pool
}

// NewRedactor uses a deployment's audit HMAC key (32 bytes). Its digests are keyed by
// DeriveKey(key, DigestLabel), not by the audit key itself: every key Strongroom derives
// is HMAC-SHA256(audit key, label), so digests under the audit key of values a client
// chooses — a prompt, a watermark question's text, both in the public log — had handed
// out the derived keys (the shared log's entry MACs, the journal's, the detection bus's,
// the limiter's names, the revocation announcements'): outside round 63. A digest now
// never computes HMAC(audit key, ·).
func NewRedactor(key []byte) (*Redactor, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("audit: HMAC key is %d bytes, want 32", len(key))
	}
	r := &Redactor{key: DeriveKey(key, DigestLabel)}
	r.macs.New = func() any { return hmac.New(sha256.New, r.key) }
	return r, nil
}

const digestPrefix = "hmac-sha256:"

// DigestLabel names the key of the records' digests (NewRedactor).
const DigestLabel = "strongroom/record-digest/v1"

// Digest returns "hmac-sha256:HEX" of value.
func (r *Redactor) Digest(value string) string {
	m := r.NewHash()
	io.WriteString(m, value)
	d := HashDigest(m)
	r.Release(m)
	return d
}

// DigestBytes is Digest of a value held as bytes (no copy into a string).
func (r *Redactor) DigestBytes(value []byte) string {
	return string(r.AppendDigestBytes(nil, value))
}

// AppendDigestBytes appends DigestBytes(value) to dst.
func (r *Redactor) AppendDigestBytes(dst, value []byte) []byte {
	m := r.NewHash()
	m.Write(value)
	dst = AppendHashDigest(dst, m)
	r.Release(m)
	return dst
}

// NewHash returns an HMAC to feed a large value (a streamed answer) piece by piece;
// finish it with HashDigest, and hand it back with Release once it is no longer used.
func (r *Redactor) NewHash() hash.Hash { return r.macs.Get().(hash.Hash) }

// Release hands back a NewHash HMAC for reuse (it is reset).
func (r *Redactor) Release(h hash.Hash) {
	h.Reset()
	r.macs.Put(h)
}

// HashDigest formats a NewHash result like Digest.
func HashDigest(h hash.Hash) string {
	var out [len(digestPrefix) + 2*sha256.Size]byte
	return string(AppendHashDigest(out[:0], h))
}

// AppendHashDigest appends HashDigest(h) to dst.
func AppendHashDigest(dst []byte, h hash.Hash) []byte {
	// The sum goes into dst's room first and is moved to a local to be encoded: a local
	// handed to the interface's Sum went to the heap, once a record.
	dst = append(dst, digestPrefix...)
	n := len(dst)
	dst = h.Sum(dst)
	var sum [sha256.Size]byte
	copy(sum[:], dst[n:])
	return hex.AppendEncode(dst[:n], sum[:])
}

// Matches reports, in constant time, whether digest is Digest(value).
func (r *Redactor) Matches(digest, value string) bool {
	return hmac.Equal([]byte(digest), []byte(r.Digest(value)))
}
