// Package store persists Strongroom's state (data keys, the model inventory) behind one
// small interface with two backends: embedded SQLite and PostgreSQL.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/strongroom/strongroom/internal/modelrec"
)

// Sentinel errors callers act on.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
)

// Key is a data encryption key, stored only wrapped by a key-encryption key.
type Key struct {
	ID        string // 32 hex digits; the key id in every sealed file's header
	KEKID     string
	Wrapped   []byte
	Purpose   string // PurposeModel or PurposeFile
	CreatedAt time.Time
}

// Key purposes: a model key belongs to one model version and is garbage once no version
// names it; a file key seals a single file outside the inventory and is never collected.
const (
	PurposeModel = "model"
	PurposeFile  = "file"
)

// File is one sealed file of a model version.
type File struct {
	Path   string `json:"path"`   // slash-separated, relative to the model directory
	Size   int64  `json:"size"`   // plaintext bytes
	SHA256 string `json:"sha256"` // hex digest of the plaintext
	Blob   string `json:"blob"`   // blob store name of the sealed file
}

// Version is one imported version of a model.
type Version struct {
	Model          string
	Version        string
	Classification string
	Owner          string
	Env            string
	KeyID          string
	Signature      []byte // OMS v1.0 Sigstore bundle (model.sig)
	Files          []File // sorted by Path
	CreatedAt      time.Time
	DisabledAt     time.Time // zero: enabled; disabled versions get no leases
	// The rest of the model record (package modelrec), besides Classification and Owner.
	AllowedCountries []string
	DeniedCountries  []string
	Watermark        bool
	Hardening        *modelrec.Hardening
	AttrsAt          time.Time // when the attributes were last set
	// External: served from engines whose weights Strongroom does not hold — a model
	// record only (no files, no key: nothing to lease, unseal or verify).
	External bool
}

// Attrs is the version's model record attributes.
func (v Version) Attrs() modelrec.Attrs {
	return modelrec.Attrs{Classification: v.Classification, Owner: v.Owner, AllowedCountries: v.AllowedCountries,
		DeniedCountries: v.DeniedCountries, Watermark: v.Watermark, Hardening: v.Hardening}
}

// SetAttrs replaces the version's attributes with a.
func (v *Version) SetAttrs(a modelrec.Attrs) {
	v.Classification, v.Owner, v.AllowedCountries, v.DeniedCountries, v.Watermark, v.Hardening =
		a.Classification, a.Owner, a.AllowedCountries, a.DeniedCountries, a.Watermark, a.Hardening
}

// Record is the version as the gateway and custody read it.
func (v Version) Record() modelrec.Record {
	return modelrec.Record{Name: v.Model, Version: v.Version, Attrs: v.Attrs(), Created: v.CreatedAt, Disabled: !v.DisabledAt.IsZero()}
}

// AuditEvent is one audit log entry as the search index holds it; the log is the record,
// the index only finds entries (and can be rebuilt from the log).
type AuditEvent struct {
	Index     uint64
	TS        time.Time
	Kind      string
	Principal string
	Decision  string
	Raw       []byte // the entry's canonical bytes
	// Digest is the entry's EntryDigest, given by the indexer: IndexAudit keeps it for
	// AuditDigests (auditcopies.go). Records and events without one keep none.
	Digest []byte
}

// AuditQuery selects indexed events; empty fields match everything.
type AuditQuery struct {
	Principal string
	Kind      string
	Since     time.Time
	Limit     int      // 0: no limit
	Indexes   []uint64 // non-empty: only these entries
	// Until, non-zero: only events before it. Before, non-zero: only entries whose index is
	// below it (keyset pagination). Desc: newest (highest index) first.
	Until  time.Time
	Before uint64
	Desc   bool
}

// NextPage is the query for the page that follows page, newest first (q.Desc), and false
// when none can: page was short, or it ended at log entry 0 (Before 0 means "no bound", so
// a pager that set it would start over from the newest event — forever, for an export).
func (q AuditQuery) NextPage(page []AuditEvent) (AuditQuery, bool) {
	if q.Limit <= 0 || len(page) < q.Limit || page[len(page)-1].Index == 0 {
		return q, false
	}
	q.Before = page[len(page)-1].Index
	return q, true
}

// AuditBucket counts indexed events of one decision in one time bucket.
type AuditBucket struct {
	Start    time.Time
	Decision string
	Count    int
}

// Screening is a principal's denied-party screening state.
type Screening string

// Screening states.
const (
	ScreeningClear   Screening = "clear"   // no list match, or reviewed and cleared
	ScreeningPending Screening = "pending" // a list matched: blocked until someone reviews it
	ScreeningDenied  Screening = "denied"  // reviewed: a denied party
)

// Valid reports whether s is one of the screening states.
func (s Screening) Valid() bool {
	return s == ScreeningClear || s == ScreeningPending || s == ScreeningDenied
}

// Principal is a caller of the gateway: a person or service in a tenant.
type Principal struct {
	ID        string
	Tenant    string
	Roles     []string
	Org       string
	Country   string // ISO 3166-1 alpha-2 country of registration
	Screening Screening
	CreatedAt time.Time
}

// APIKey is an API key as stored: never the secret, only its SHA-256.
type APIKey struct {
	ID        string // public key id, the prefix shown in `key ls`
	Principal string
	Hash      []byte // SHA-256 of the secret part
	Models    []string
	ExpiresAt time.Time // zero: never
	RevokedAt time.Time // zero: live
	CreatedAt time.Time
}

// Store is what the inventory and the key manager need from persistence.
type Store interface {
	PutKey(ctx context.Context, k Key) error
	GetKey(ctx context.Context, id string) (Key, error)
	ListKeys(ctx context.Context) ([]Key, error)
	// RewrapKeys passes every key to fn inside one transaction and stores what fn returns;
	// if fn or the store fails for any key, no key changes.
	RewrapKeys(ctx context.Context, fn func(Key) (Key, error)) (int, error)
	// DeleteKey removes a key; it fails while a version still names the key.
	DeleteKey(ctx context.Context, id string) error

	// CreateVersion records a version and its files atomically; ErrExists if present.
	CreateVersion(ctx context.Context, v Version) error
	GetVersion(ctx context.Context, model, version string) (Version, error)
	// ListVersions lists versions of model, or of every model when model is "".
	ListVersions(ctx context.Context, model string) ([]Version, error)
	// CreateExternalVersion records an external version (a record without weights).
	CreateExternalVersion(ctx context.Context, v Version) error
	// SetVersionAttrs replaces a version's model record attributes (ErrNotFound if absent).
	SetVersionAttrs(ctx context.Context, model, version string, a modelrec.Attrs, at time.Time) error
	// ModelRecords lists every version's record (no files): what gateways and custody read.
	ModelRecords(ctx context.Context) ([]modelrec.Record, error)

	PutPrincipal(ctx context.Context, p Principal) error // insert or replace
	GetPrincipal(ctx context.Context, id string) (Principal, error)
	ListPrincipals(ctx context.Context) ([]Principal, error)
	// PrincipalsPage lists at most limit principals whose id is after `after`, by id (a
	// page of a long list; "" starts at the first).
	PrincipalsPage(ctx context.Context, after string, limit int) ([]Principal, error)
	PutAPIKey(ctx context.Context, k APIKey) error
	GetAPIKey(ctx context.Context, id string) (APIKey, error)
	ListAPIKeys(ctx context.Context, principal string) ([]APIKey, error)
	// AuditPrincipalsPerDay counts, per UTC day ("2006-01-02") since since, the distinct
	// principals of the indexed events of kind (the detectors' denominators).
	AuditPrincipalsPerDay(ctx context.Context, kind string, since time.Time) (map[string]int, error)
	// RevokedAPIKeys lists the keys whose revocation time is after since: what a replica's
	// key cache must drop.
	RevokedAPIKeys(ctx context.Context, since time.Time) ([]string, error)
	// UpdateAPIKey sets expiry and revocation of a key.
	UpdateAPIKey(ctx context.Context, id string, expires, revoked time.Time) error

	// IndexAudit adds events to the audit search index; an index already present is skipped.
	IndexAudit(ctx context.Context, evs []AuditEvent) error
	// AuditIndexed is one more than the highest index in the search index (0 when empty).
	AuditIndexed(ctx context.Context) (uint64, error)
	// AuditDigests returns, for each of digests (EntryDigest) an indexed entry has, the
	// lowest index of an entry with those bytes (auditcopies.go).
	AuditDigests(ctx context.Context, digests [][32]byte) (map[[32]byte]uint64, error)
	// AuditDigestsAt returns the digests the index keeps for entries idxs (those it has).
	AuditDigestsAt(ctx context.Context, idxs []uint64) (map[uint64][32]byte, error)
	// ForgetAudit removes entries from index from on (and their records and digests) from
	// the index: the log's unsigned tail was rebuilt (audit.Log.Repair).
	ForgetAudit(ctx context.Context, from uint64) error
	SearchAudit(ctx context.Context, q AuditQuery) ([]AuditEvent, error)
	// AuditHistogram counts the indexed events of kind since since per bucket (a time
	// span) and decision, oldest bucket first.
	AuditHistogram(ctx context.Context, kind string, since time.Time, bucket time.Duration) ([]AuditBucket, error)

	Custody
	Incidents
	Exports

	Close() error
}
