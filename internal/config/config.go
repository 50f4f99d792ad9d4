// Package config finds the data directory, reads its one config file and applies
// environment overrides; Defaults are what `strongroom init` and `strongroom dev` write.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/redact"
)

// FileName is the config file inside the data directory.
const FileName = "config.json"

// Config is the whole configuration. Relative paths are relative to the data directory.
//
// It is plain data: this package imports no domain package. Sections shaped like a
// domain package's own type (Limits, OIDC, Hardening) convert to it in internal/app; the
// detectors' tunables stay raw JSON that internal/detect parses (detect.ParseConfig).
type Config struct {
	// Store is a SQLite file path or a postgres:// URL.
	Store string `json:"store"`
	// Blobs is the directory of sealed files.
	Blobs string `json:"blobs"`
	// SigningKey is the PEM ECDSA (P-256 or P-384) key that signs model manifests.
	SigningKey string `json:"signing_key"`
	KMS        KMS    `json:"kms"`
	Audit      Audit  `json:"audit"`
	// AdminListen is where `serve` and `dev` expose the log (/log/) and health.
	AdminListen string  `json:"admin_listen"`
	Gateway     Gateway `json:"gateway"`
	Custody     Custody `json:"custody"`
	// Detect tunes the extraction and abuse detectors: a detect.Config as JSON, read
	// strictly by detect.ParseConfig when the data directory is opened.
	Detect json.RawMessage `json:"detect,omitempty"`
	Alerts Alerts          `json:"alerts,omitzero"`
	// Telemetry: OpenTelemetry traces.
	Telemetry Telemetry `json:"telemetry,omitzero"`
	// Console: the security console at ADMIN/console/.
	Console Console `json:"console,omitzero"`
}

// Console configures the security console's sign-in besides API key + TOTP.
type Console struct {
	// OIDC, if set, offers sign-in through this identity provider (authorization code with
	// PKCE); its users must be registered principals.
	OIDC *ConsoleOIDC `json:"oidc,omitempty"`
}

// ConsoleOIDC is the console's client at an OpenID Connect provider.
type ConsoleOIDC struct {
	// Issuer is discovered at ISSUER/.well-known/openid-configuration.
	Issuer   string `json:"issuer"`
	ClientID string `json:"client_id"`
	// ClientSecretEnv names the environment variable holding the client secret ("" for a
	// public client: PKCE alone), so the secret is never in the file.
	ClientSecretEnv string `json:"client_secret_env,omitempty"`
	// RedirectURL is this console's /console/oidc/callback as the provider knows it.
	RedirectURL    string   `json:"redirect_url"`
	PrincipalClaim string   `json:"principal_claim,omitempty"` // default "sub"
	Scopes         []string `json:"scopes,omitempty"`          // default ["openid"]
}

// Alerts configures what happens on a detector alert besides the audit event and incident.
type Alerts struct {
	// Webhook receives each incident as JSON; WebhookSecretFile (0600, in the data
	// directory by default) keys the X-Strongroom-Signature HMAC.
	Webhook           string `json:"webhook,omitempty"`
	WebhookSecretFile string `json:"webhook_secret_file,omitempty"`
	// SanctionDuration is how long a detector's action holds (default 24h).
	SanctionDuration Duration `json:"sanction_duration,omitzero"`
}

// Custody configures the release of model keys to runtimes.
type Custody struct {
	// Listen is the custody API (TLS; runtimes authenticate with certificates from CADir).
	Listen      string   `json:"listen"`
	ServerNames []string `json:"server_names,omitempty"` // names and IPs in its certificate, besides 127.0.0.1 and localhost
	CADir       string   `json:"ca_dir"`
	LeaseTTL    Duration `json:"lease_ttl,omitzero"`
	ApprovalTTL Duration `json:"approval_ttl,omitzero"`
	// Approvals is the two-person (k-person) rule: classification → approvals needed.
	Approvals map[string]int `json:"approvals,omitempty"`
	// Daily egress budgets in sealed bytes released by leases (0: unlimited).
	EgressPerRuntimeDaily int64 `json:"egress_per_runtime_daily,omitempty"`
	EgressTotalDaily      int64 `json:"egress_total_daily,omitempty"`
	// Measurements allowlists launch measurements (hex) per attestation type ("sev-snp", "tdx").
	Measurements map[string][]string `json:"measurements,omitempty"`
	// AllowDebugGuests accepts SEV-SNP guests whose policy allows debugging (never in prod).
	AllowDebugGuests bool `json:"allow_debug_guests,omitempty"`
}

// Duration is a time.Duration written as "10m" in JSON.
type Duration struct{ time.Duration }

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// Gateway configures the inference data plane.
type Gateway struct {
	Listen         string   `json:"listen"`
	PolicyDir      string   `json:"policy_dir"` // operator *.cedar files, on top of the baseline
	Routes         []Route  `json:"routes,omitempty"`
	KeyLimits      Limits   `json:"key_limits,omitzero"`
	TenantLimits   Limits   `json:"tenant_limits,omitzero"`
	TrustedProxies []string `json:"trusted_proxies,omitempty"`
	GeoMMDB        string   `json:"geo_mmdb,omitempty"` // MaxMind-format country database; else tor-geoipdb if installed
	// InternalCountry is where the deployment's own networks are (ISO 3166-1 alpha-2):
	// clients on loopback, private and link-local addresses, which no database places, are
	// there. Empty: unknown (then only public models are served to them).
	InternalCountry string `json:"internal_country,omitempty"`
	// TLS for the gateway listener; with ClientCAFile, client certificates from that CA
	// identify principals (mTLS), bearer tokens still work without one.
	TLS *TLS `json:"tls,omitempty"`
	// OIDC, if set, lets JWT bearer tokens from this identity provider in (besides API keys).
	OIDC *OIDC `json:"oidc,omitempty"`
	// ScreeningList is a consolidated denied-party CSV (name, alt names, country, source).
	ScreeningList string `json:"screening_list,omitempty"`
	// RedisURL makes limits global across gateway replicas and lets them share detection;
	// empty: in-process limits and detection.
	RedisURL string `json:"redis_url,omitempty"`
	// RedisTLS: the CA that vouches for the Redis server (instead of the system's roots)
	// and the client certificate to present, for a rediss:// redis_url (tlsclient).
	RedisTLS *ClientTLS `json:"redis_tls,omitempty"`
	// RedisPrefix starts every key this deployment uses in Redis (default "strongroom:"),
	// so that deployments can share a Redis.
	RedisPrefix string `json:"redis_prefix,omitempty"`
	// LocalFallbackPublic: while Redis is down, public models fall back to in-process limits
	// (with an alert); restricted models are always refused then.
	LocalFallbackPublic bool        `json:"local_fallback_public"`
	MaxBodyBytes        int64       `json:"max_body_bytes,omitempty"`
	UpstreamTimeout     string      `json:"upstream_timeout,omitempty"` // e.g. "60s"
	Connections         Connections `json:"connections,omitzero"`
	// HTTPServer is what serves the gateway's listener: "h1" (the default: internal/h1,
	// HTTP/1.1 only, less CPU per request) or "net/http" (Go's server, which also offers
	// HTTP/2 over TLS).
	HTTPServer string `json:"http_server,omitempty"`
}

// Route says where a model is served (gateway.Route): the model clients ask for ("NAME:VERSION",
// or "NAME" for the newest enabled version in the inventory), its engines and their key,
// and limits. What may be done with the model is its inventory record (`strongroom model
// set`), never the route.
type Route struct {
	Model       string   `json:"model"`
	Upstreams   []string `json:"upstreams"`
	UpstreamKey string   `json:"upstream_key,omitempty"`
	Limits      Limits   `json:"limits,omitzero"`
	LegacyAttrs
}

// LegacyAttrs are the model attributes routes carried before the inventory became the one
// record of them (issue 15). They are read only so that `serve` can move them into the
// inventory (app.MigrateRoutes) and rewrite the file without them.
type LegacyAttrs struct {
	Classification   string     `json:"classification,omitempty"`
	AllowedCountries []string   `json:"allowed_countries,omitempty"`
	DeniedCountries  []string   `json:"denied_countries,omitempty"`
	Hardening        *Hardening `json:"hardening,omitempty"`
	Watermark        bool       `json:"watermark,omitempty"`
}

// Set reports whether any legacy attribute is present.
func (l LegacyAttrs) Set() bool {
	return l.Classification != "" || len(l.AllowedCountries) > 0 || len(l.DeniedCountries) > 0 || l.Hardening != nil || l.Watermark
}

// Limits is a limits.Limits (rpm, tpm, concurrency, daily tokens per key, tenant or model).
type Limits struct {
	RPM         int   `json:"rpm,omitempty"`
	TPM         int   `json:"tpm,omitempty"`
	Concurrent  int   `json:"concurrent,omitempty"`
	DailyTokens int64 `json:"daily_tokens,omitempty"`
}

// OIDC is an authn.OIDCConfig: the identity provider whose JWTs are accepted.
type OIDC struct {
	Issuer         string        `json:"issuer"`
	Audience       string        `json:"audience"`
	JWKSURL        string        `json:"jwks_url"`
	PrincipalClaim string        `json:"principal_claim,omitempty"` // default "sub"
	ClockSkew      time.Duration `json:"clock_skew,omitempty"`      // nanoseconds; default 60s
}

// Hardening is a modelrec.Hardening, as legacy routes carried it.
type Hardening struct {
	LogitBias      string  `json:"logit_bias"`
	MaxTopLogprobs int     `json:"max_top_logprobs"`
	MaxN           int     `json:"max_n"`
	MaxTokens      int     `json:"max_tokens"`
	RoundLogprobs  int     `json:"round_logprobs,omitempty"`
	LogprobNoise   float64 `json:"logprob_noise,omitempty"`
}

// Connections bounds every listener (gateway, control plane, custody) together: open
// connections overall and per client address (trusted proxies exempt), and how long a
// connection may take over its headers and body or sit idle. Zero: defaults (DESIGN.md).
type Connections struct {
	MaxConns      int      `json:"max_conns,omitempty"`
	MaxConnsPerIP int      `json:"max_conns_per_ip,omitempty"`
	HeaderTimeout Duration `json:"header_timeout,omitzero"`
	BodyTimeout   Duration `json:"body_timeout,omitzero"`
	IdleTimeout   Duration `json:"idle_timeout,omitzero"`
	PeerTimeout   Duration `json:"peer_timeout,omitzero"`
}

// Audit configures the transparency log of security events.
type Audit struct {
	LogDir string `json:"log_dir"` // tessera POSIX directory
	// LogDB puts the log on a shared MariaDB/MySQL engine instead of LogDir, for a fleet of
	// replicas: "mysql://user:password@tcp(host:port)/database" (mysql:// then a go-sql-driver DSN). Empty:
	// the POSIX log in LogDir. Keep the password out of the file with STRONGROOM_LOG_DB.
	LogDB string `json:"log_db,omitempty"`
	// LogDBTLS: TLS to the log database with this CA (instead of the system's roots) and
	// client certificate, whatever the DSN's tls parameter says (tlsclient).
	LogDBTLS *ClientTLS `json:"log_db_tls,omitempty"`
	LogKey   string     `json:"log_key"`  // signed-note private key of the log (Ed25519)
	HMACKey  string     `json:"hmac_key"` // 32-byte key for digests of sensitive fields
	// Witnesses that must cosign before a checkpoint is published; Quorum of them (0: all).
	Witnesses []Witness `json:"witnesses,omitempty"`
	Quorum    int       `json:"quorum,omitempty"`
	// CheckpointStall is how long durable entries may wait for a published checkpoint
	// (with witnesses: a cosigned one) before the log raises its stall ALERT, /healthz adds
	// a warning and strongroom_audit_checkpoint_stalled is 1 (default 30s; at least 1s).
	CheckpointStall Duration `json:"checkpoint_stall,omitzero"`
	// Request records are committed in batches, one log entry per batch (audit/batch.go):
	// at most RequestBatchRecords (default 1024, at most 4096) or after RequestBatchDelay
	// (default 10ms) from the batch's first record. With a log on local disk records are
	// made durable in a journal in groups gathered for RequestBatchDelay (default 5ms) and
	// folded every second into batches of RequestBatchRecords (default 4096 then;
	// audit/journal.go).
	RequestBatchRecords int      `json:"request_batch_records,omitempty"`
	RequestBatchDelay   Duration `json:"request_batch_delay,omitzero"`
	// AsyncRequestRecords lets answers go out before their records are durable (lower
	// latency; a crash can lose the last batch of answers already given). Default: an
	// answer is completed only once its record is in the log.
	AsyncRequestRecords bool `json:"async_request_records,omitempty"`
	// JournalPrewrittenSegments prepares the journal's segments ahead (zeros, synced) and
	// writes each group in place with O_DIRECT|O_DSYNC instead of a write and an fdatasync
	// on a growing file (audit/journal_direct.go; each group on a fresh page since the
	// twelfth session, so a torn write damages only its own pages). Off by default: its
	// measured gain is within the noise (docs/PERFORMANCE.md) — docs/DESIGN.md.
	JournalPrewrittenSegments bool `json:"journal_prewritten_segments,omitempty"`
	// RequestDurability is when a request record (with a log on local disk) is durable
	// before its answer completes: "written" (the default) — copied by the request into
	// the open journal segment's shadow on tmpfs: it survives the process (kill -9, a
	// crash) at once and the host after RequestSyncInterval (default 200ms), the interval
	// a power loss or kernel crash can lose (audit/journal_mapped.go); "synced" — a group
	// commit: every answer waits for its group's fdatasync. Security decisions are synced
	// before they take effect either way. Not used with log_db (a fleet's records go to
	// the shared log in batches).
	RequestDurability   string   `json:"request_durability,omitempty"`
	RequestSyncInterval Duration `json:"request_sync_interval,omitzero"`
}

// Telemetry exports OpenTelemetry traces (gateway → engine) when OTLPEndpoint is set.
type Telemetry struct {
	// OTLPEndpoint is an OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (traces go to
	// /v1/traces unless the URL has a path).
	OTLPEndpoint string `json:"otlp_endpoint,omitempty"`
	ServiceName  string `json:"service_name,omitempty"` // default "strongroom"
}

// TLS names the gateway's certificate, key and optional client CA (PEM files).
type TLS struct {
	CertFile     string `json:"cert_file"`
	KeyFile      string `json:"key_file"`
	ClientCAFile string `json:"client_ca_file,omitempty"`
}

// ClientTLS names the PEM files with which a replica reaches a shared engine (Redis, the
// log database) over TLS: CAFile, the server's CA (empty: the system's roots), and the
// client certificate and its key (both or neither), read again when they change.
type ClientTLS struct {
	CAFile   string `json:"ca_file,omitempty"`
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
}

// check says what is wrong with t as the setting name (nil t: nothing).
func (t *ClientTLS) check(name string) error {
	switch {
	case t == nil:
		return nil
	case (t.CertFile == "") != (t.KeyFile == ""):
		return fmt.Errorf("config: %s: a client certificate needs both cert_file and key_file", name)
	case *t == ClientTLS{}:
		return fmt.Errorf("config: %s is empty: name its ca_file, or its cert_file and key_file", name)
	}
	return nil
}

// Witness is one tlog-witness: its cosignature/v1 verifier key and base URL.
type Witness struct {
	VKey string `json:"vkey"`
	URL  string `json:"url"`
}

// KMS selects the key-encryption key that wraps new data keys. Keys wrapped earlier name
// their own KEK and are found by its id.
type KMS struct {
	// Current is the id of the KEK that wraps new keys: "local-…" or "pkcs11:TOKEN/LABEL".
	Current string `json:"current"`
	// KeyDir holds local KEK files, one per id.
	KeyDir string `json:"key_dir"`
	PKCS11 PKCS11 `json:"pkcs11,omitzero"`
}

// PKCS11 names the token; the PIN comes from the environment variable PINEnv, never the file.
type PKCS11 struct {
	Module     string `json:"module,omitempty"`
	TokenLabel string `json:"token_label,omitempty"`
	PINEnv     string `json:"pin_env,omitempty"`
}

// Defaults is the embedded default configuration.
func Defaults() Config {
	return Config{
		Store:       "strongroom.db",
		Blobs:       "blobs",
		SigningKey:  "keys/signing.pem",
		KMS:         KMS{KeyDir: "keys", PKCS11: PKCS11{PINEnv: "STRONGROOM_PKCS11_PIN"}},
		Audit:       Audit{LogDir: "log", LogKey: "keys/log.key", HMACKey: "keys/audit-hmac.key"},
		AdminListen: "127.0.0.1:8081",
		Gateway:     Gateway{Listen: "127.0.0.1:8080", PolicyDir: "policies", LocalFallbackPublic: true},
		Custody: Custody{Listen: "127.0.0.1:8443", CADir: "custody", LeaseTTL: Duration{10 * time.Minute}, ApprovalTTL: Duration{time.Hour},
			Approvals: map[string]int{"restricted": 2}},
	}
}

// DataDir resolves the data directory: flag, else $STRONGROOM_DATA, else ./strongroom-data.
func DataDir(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("STRONGROOM_DATA"); env != "" {
		return env
	}
	return "strongroom-data"
}

// ErrNoDataDir means the data directory has not been initialized.
var ErrNoDataDir = errors.New("data directory not initialized (run `strongroom init`)")

// Load reads path (default DATA/config.json), applies environment overrides and resolves
// relative paths against dataDir.
func Load(dataDir, path string) (Config, error) {
	if path == "" {
		path = filepath.Join(dataDir, FileName)
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && path == filepath.Join(dataDir, FileName) {
		return Config{}, fmt.Errorf("%s: %w", dataDir, ErrNoDataDir)
	}
	c, err := ReadRaw(path)
	if err != nil {
		return Config{}, err
	}
	c.applyEnv()
	c.resolve(dataDir)
	return c, c.Validate()
}

// ReadRaw reads a config file as written, without environment overrides or path
// resolution, for commands that update it.
func ReadRaw(path string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c := Defaults()
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

func (c *Config) applyEnv() {
	for env, dst := range map[string]*string{
		"STRONGROOM_STORE":          &c.Store,
		"STRONGROOM_LOG_DB":         &c.Audit.LogDB,
		"STRONGROOM_KMS_CURRENT":    &c.KMS.Current,
		"STRONGROOM_PKCS11_MODULE":  &c.KMS.PKCS11.Module,
		"STRONGROOM_PKCS11_TOKEN":   &c.KMS.PKCS11.TokenLabel,
		"STRONGROOM_PKCS11_PIN_ENV": &c.KMS.PKCS11.PINEnv,
		"STRONGROOM_ADMIN_LISTEN":   &c.AdminListen,
		"STRONGROOM_LISTEN":         &c.Gateway.Listen,
		"STRONGROOM_REDIS_URL":      &c.Gateway.RedisURL,
		"STRONGROOM_CUSTODY_LISTEN": &c.Custody.Listen,
	} {
		if v := os.Getenv(env); v != "" {
			*dst = v
		}
	}
}

func (c *Config) resolve(dataDir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dataDir, *p)
		}
	}
	if !isURL(c.Store) {
		abs(&c.Store)
	}
	abs(&c.Blobs)
	abs(&c.SigningKey)
	abs(&c.KMS.KeyDir)
	abs(&c.Audit.LogDir)
	abs(&c.Audit.LogKey)
	abs(&c.Audit.HMACKey)
	abs(&c.Gateway.PolicyDir)
	abs(&c.Custody.CADir)
	abs(&c.Alerts.WebhookSecretFile)
	// Every file a setting names is the data directory's when relative (outside round 62:
	// the TLS links' CA and certificate files were read from the working directory, where
	// a rogue CA's would do).
	abs(&c.Gateway.GeoMMDB)
	abs(&c.Gateway.ScreeningList)
	if t := c.Gateway.TLS; t != nil {
		abs(&t.CertFile)
		abs(&t.KeyFile)
		abs(&t.ClientCAFile)
	}
	for _, t := range []*ClientTLS{c.Gateway.RedisTLS, c.Audit.LogDBTLS} {
		if t != nil {
			abs(&t.CAFile)
			abs(&t.CertFile)
			abs(&t.KeyFile)
		}
	}
}

// isURL says whether the store is not a file's path (a database's address, or a value
// Validate refuses).
func isURL(s string) bool {
	_, pg, err := redact.StoreAddress(s)
	return pg || err != nil
}

// Validate checks the configuration in one place.
func (c *Config) Validate() error {
	if _, _, err := redact.StoreAddress(c.Store); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	switch {
	case c.Store == "":
		return errors.New("config: store is empty")
	case c.Blobs == "":
		return errors.New("config: blobs is empty")
	case c.SigningKey == "":
		return errors.New("config: signing_key is empty")
	case c.KMS.Current == "":
		return errors.New("config: kms.current is empty")
	case c.Audit.LogDir == "" || c.Audit.LogKey == "" || c.Audit.HMACKey == "":
		return errors.New("config: audit.log_dir, audit.log_key and audit.hmac_key are required")
	case c.Custody.CADir == "":
		return errors.New("config: custody.ca_dir is empty")
	case c.Custody.LeaseTTL.Duration < time.Second:
		return fmt.Errorf("config: custody.lease_ttl %s is under a second", c.Custody.LeaseTTL)
	case c.Gateway.InternalCountry != "" && (len(c.Gateway.InternalCountry) != 2 || strings.ToUpper(c.Gateway.InternalCountry) != c.Gateway.InternalCountry):
		return fmt.Errorf("config: gateway.internal_country %q is not an ISO 3166-1 alpha-2 code", c.Gateway.InternalCountry)
	case c.Gateway.HTTPServer != "" && c.Gateway.HTTPServer != "h1" && c.Gateway.HTTPServer != "net/http":
		return fmt.Errorf("config: gateway.http_server %q is neither \"h1\" nor \"net/http\"", c.Gateway.HTTPServer)
	case c.Audit.RequestDurability != "" && c.Audit.RequestDurability != "written" && c.Audit.RequestDurability != "synced":
		return fmt.Errorf("config: audit.request_durability %q: want \"written\" or \"synced\"", c.Audit.RequestDurability)
	case c.Audit.RequestSyncInterval.Duration < 0:
		return fmt.Errorf("config: audit.request_sync_interval %v is negative", c.Audit.RequestSyncInterval.Duration)
	case c.Audit.Quorum < 0 || c.Audit.Quorum > len(c.Audit.Witnesses):
		return fmt.Errorf("config: audit.quorum %d with %d witnesses", c.Audit.Quorum, len(c.Audit.Witnesses))
	case c.Audit.CheckpointStall.Duration != 0 && c.Audit.CheckpointStall.Duration < time.Second:
		return fmt.Errorf("config: audit.checkpoint_stall %v is under a second", c.Audit.CheckpointStall.Duration)
	case c.Gateway.RedisTLS != nil && !hasScheme(c.Gateway.RedisURL, "rediss://"):
		return errors.New("config: gateway.redis_tls is set but gateway.redis_url is not a rediss:// URL")
	case c.Audit.LogDBTLS != nil && c.Audit.LogDB == "":
		return errors.New("config: audit.log_db_tls is set but audit.log_db is not")
	}
	return errors.Join(c.Gateway.RedisTLS.check("gateway.redis_tls"), c.Audit.LogDBTLS.check("audit.log_db_tls"))
}

// hasScheme: u begins with scheme, in any case.
func hasScheme(u, scheme string) bool {
	return len(u) >= len(scheme) && strings.EqualFold(u[:len(scheme)], scheme)
}

// Write stores c at path atomically (temp file, fsync, rename), mode 0600.
func Write(path string, c Config) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, append(b, '\n'), 0o600)
}
