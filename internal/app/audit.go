package app

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/limits"
	"github.com/strongroom/strongroom/internal/redact"
	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/tessera"
	"golang.org/x/mod/sumdb/note"
)

// LogVKeyPath is where the log's public (verifier) key is kept beside its private key.
func LogVKeyPath(logKey string) string { return strings.TrimSuffix(logKey, ".key") + ".pub" }

// ensureAuditKeys creates the log key and the HMAC key if they are missing, which happens
// for a new data directory and for one created before the log existed. It refuses to make
// a new log key for a log that already has entries: that would orphan its history.
func ensureAuditKeys(c config.Config) error {
	if _, err := os.Stat(c.Audit.HMACKey); errors.Is(err, os.ErrNotExist) {
		k := make([]byte, 32)
		rand.Read(k)
		if err := fsutil.WriteFileAtomic(c.Audit.HMACKey, k, 0o600); err != nil {
			return fmt.Errorf("audit key: %w", err)
		}
		clear(k)
	}
	if _, err := os.Stat(c.Audit.LogKey); err == nil {
		return nil
	}
	if c.Audit.LogDB != "" {
		return fmt.Errorf("audit: log key %s is missing and the log is shared (audit.log_db): copy keys/log.key and keys/log.pub from a replica", c.Audit.LogKey)
	}
	if _, err := os.Stat(filepath.Join(c.Audit.LogDir, "checkpoint")); err == nil {
		return fmt.Errorf("audit: log key %s is missing but the log has entries: restore the key", c.Audit.LogKey)
	}
	host, _ := os.Hostname()
	var suffix [4]byte
	rand.Read(suffix[:])
	origin := fmt.Sprintf("strongroom.local/%s/%x", sanitizeName(host), suffix)
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(c.Audit.LogKey, []byte(skey+"\n"), 0o600); err != nil {
		return fmt.Errorf("audit log key: %w", err)
	}
	return fsutil.WriteFileAtomic(LogVKeyPath(c.Audit.LogKey), []byte(vkey+"\n"), 0o644)
}

func sanitizeName(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r > ' ' && r < 0x7f && r != '+' && r != '/' {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "host"
	}
	return b.String()
}

func readKeyFile(path string) (string, error) {
	b, err := fsutil.ReadPrivate(path)
	return strings.TrimSpace(string(b)), err
}

// LogVerifier reads the log's public key from the data directory.
func (a *App) LogVerifier() (note.Verifier, string, error) {
	b, err := os.ReadFile(LogVKeyPath(a.Config.Audit.LogKey))
	if err != nil {
		return nil, "", err
	}
	vkey := strings.TrimSpace(string(b))
	v, err := note.NewVerifier(vkey)
	return v, vkey, err
}

// witnessPolicy is the checkpoint publication policy: quorum of the witnesses, all of them
// when quorum is 0 (as `audit verify` counts them). A threshold of 0 would tell tessera to
// publish without waiting for any cosignature: witnesses listed and the quorum left out
// must not mean that.
func witnessPolicy(ws []config.Witness, quorum int) (tessera.WitnessGroup, error) {
	if quorum == 0 {
		quorum = len(ws)
	}
	// tessera takes a witness policy in the sigsum policy syntax.
	var p strings.Builder
	var names, urls []string
	for i, w := range ws {
		// tessera quotes a URL it cannot use, password and all (round 57).
		if !redact.HTTP(w.URL) {
			return tessera.WitnessGroup{}, fmt.Errorf("audit.witnesses[%d].url: not an http(s) URL (not shown: it may hold a password)", i)
		}
		fmt.Fprintf(&p, "witness w%d %s %s\n", i, w.VKey, w.URL)
		names = append(names, fmt.Sprintf("w%d", i))
		urls = append(urls, w.URL)
	}
	fmt.Fprintf(&p, "group g %d %s\nquorum g\n", quorum, strings.Join(names, " "))
	group, err := tessera.NewWitnessGroupFromPolicy([]byte(p.String()))
	if err != nil {
		return tessera.WitnessGroup{}, fmt.Errorf("audit witness policy: %w", redact.Error(err, redact.URL, urls...))
	}
	return group, nil
}

// WitnessVerifiers returns the configured witnesses' cosignature verifiers.
func WitnessVerifiers(ws []config.Witness) ([]note.Verifier, error) {
	var out []note.Verifier
	for _, w := range ws {
		v, err := f_note.NewVerifierForCosignatureV1(w.VKey)
		if err != nil {
			return nil, fmt.Errorf("witness key %q: %w", w.VKey, err)
		}
		out = append(out, v)
	}
	return out, nil
}

func (a *App) openAudit(ctx context.Context) error {
	c := a.Config
	if err := ensureAuditKeys(c); err != nil {
		return err
	}
	skey, err := readKeyFile(c.Audit.LogKey)
	if err != nil {
		return fmt.Errorf("audit log key: %w", err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		return fmt.Errorf("audit log key: %w", err)
	}
	hk, err := os.ReadFile(c.Audit.HMACKey)
	if err != nil {
		return fmt.Errorf("audit HMAC key: %w", err)
	}
	defer clear(hk)
	if a.Redactor, err = audit.NewRedactor(hk); err != nil {
		return err
	}
	// The request journal's frames are MACed under a key derived from the audit key: records
	// waiting there cannot be altered, reordered or moved without it (audit/journal.go).
	a.journalKey = audit.DeriveKey(hk, "strongroom/request-journal/v2")
	// The detection bus's records are sealed under a key every replica derives alike
	// (detect.NewRedisBus).
	a.busKey = audit.DeriveKey(hk, "strongroom/detect-bus/v1")
	// The shared limiter's Redis key names are keyed digests of its scopes' names
	// (limits.Redis.HideNames).
	a.limitsKey = audit.DeriveKey(hk, limits.NamesLabel)
	// Key-revocation announcements on Redis are sealed (revocation.go).
	a.revokeKey = audit.DeriveKey(hk, revocationLabel)
	// A command waits this long at exit for a (witnessed) checkpoint that covers its events;
	// they are durable before that either way.
	cfg := audit.Config{Dir: c.Audit.LogDir, DB: c.Audit.LogDB, Signer: signer, Index: a.Store, Logger: a.Log, Metrics: a.Metrics,
		ShutdownTimeout: 5 * time.Second, WitnessTimeout: 3 * time.Second,
		Journal: a.requestJournal(), JournalBatch: c.Audit.RequestBatchRecords, JournalKey: a.journalKey,
		// Every entry this process appends carries a MAC under a key derived from the audit
		// key (the same in every replica); on a shared engine the signer checks them.
		EntryKey: audit.EntryKey(hk)}
	if cfg.DBTLS, err = a.clientTLS("audit.log_db_tls", c.Audit.LogDBTLS); err != nil {
		return err
	}
	if c.Audit.LogDB != "" && cfg.DBTLS == nil {
		if dc, err := audit.ParseLogDSN(c.Audit.LogDB); err == nil && dc.TLS == nil && plaintextRemote(dc.Net, dc.Addr) {
			a.Log.Warn("audit.log_db has no TLS to a host that is not this one: its password and every log entry cross the network in the clear; set audit.log_db_tls (or tls=true in the DSN)",
				"log_db", redact.DSN(c.Audit.LogDB))
		}
	}
	cfg.CheckpointStall = c.Audit.CheckpointStall.Duration // 0: the default (Validate: ≥ 1 s)
	if len(c.Audit.Witnesses) > 0 {
		group, err := witnessPolicy(c.Audit.Witnesses, c.Audit.Quorum)
		if err != nil {
			return err
		}
		cfg.Witnesses = &group
	}
	a.AuditLog, err = audit.Open(ctx, cfg)
	if err != nil {
		return err
	}
	a.actor = processActor()
	return nil
}

// processActor names who runs this process: the OS user on this host.
func processActor() map[string]string {
	name := strconv.Itoa(os.Getuid())
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return map[string]string{"principal": "os:" + name + "@" + host, "pid": strconv.Itoa(os.Getpid())}
}

// Audit records a security event and returns only once it is durable; an error means it
// was not recorded and the caller must not go on (fail closed). The event's version and
// time are set here, and its actor, when the caller names none, is this process.
func (a *App) Audit(ctx context.Context, ev audit.Event) error {
	_, err := a.record(ctx, ev)
	return err
}

// AcknowledgeForeignEntry records, after an operator has looked at it, that log entry index
// was not written by a replica (audit/foreign.go): the signer can then go on past it. It
// returns the acknowledgement's index and the entry's leaf hash (hex); with wantHash, it
// refuses unless the entry's leaf hash is that.
func (a *App) AcknowledgeForeignEntry(ctx context.Context, index uint64, reason, wantHash string) (uint64, string, error) {
	ev, err := a.AuditLog.ForeignEntry(ctx, index, reason)
	if err != nil {
		return 0, "", err
	}
	h := ev.Subject["leaf_hash"]
	if wantHash != "" && !strings.EqualFold(wantHash, h) {
		return 0, "", fmt.Errorf("entry %d's leaf hash is %s, not %s: its bytes are not the ones inspected", index, h, wantHash)
	}
	at, err := a.record(ctx, ev)
	return at, h, err
}

// RepairLog repairs the shared log's poisoned tail from entry index (audit.Log.Repair: the
// tree is cut back to the entry whose bytes are not its leaf, and the sealed entries after
// it are appended again). The report — with the bytes of every entry dropped — is written
// to evidence (JSON, 0600) before the repair commits; the repair does not happen unless it
// is written.
func (a *App) RepairLog(ctx context.Context, index uint64, reason, evidence string) (audit.RepairReport, error) {
	return a.AuditLog.Repair(ctx, index, reason, a.actor, func(r audit.RepairReport) error {
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		if err := fsutil.WriteFileAtomic(evidence, append(b, '\n'), 0o600); err != nil {
			return fmt.Errorf("evidence %s: %w", evidence, err)
		}
		return nil
	})
}

// record is Audit returning the entry's index. A person acting through the console
// (audit.WithActor) is the actor when the caller names none, with this process beside them.
func (a *App) record(ctx context.Context, ev audit.Event) (uint64, error) {
	ev.V, ev.TS = 1, time.Now().UTC()
	if ev.Actor == nil {
		ev.Actor = a.actor
		if who := audit.ActorFrom(ctx); who != nil {
			ev.Actor = maps.Clone(who)
			ev.Actor["process"] = a.actor["principal"]
		}
	}
	idx, err := a.AuditLog.Record(ctx, ev)
	if err != nil {
		return 0, fmt.Errorf("%s refused: %w", ev.Kind, err)
	}
	return idx, nil
}

// WatermarkSecret is the deployment's watermark secret (keys/watermark.key, 32 bytes, 0600),
// created on first use; tenant keys are derived from it.
func (a *App) WatermarkSecret() ([]byte, error) { return a.deploymentSecret("watermark.key") }

// deploymentSecret reads keys/NAME (32 bytes, 0600), created on first use.
func (a *App) deploymentSecret(name string) ([]byte, error) {
	p := filepath.Join(a.Config.KMS.KeyDir, name)
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		k := make([]byte, 32)
		rand.Read(k)
		if err := fsutil.WriteFileAtomic(p, k, 0o600); err != nil {
			return nil, err
		}
	}
	return fsutil.ReadPrivate(p)
}

// requestJournal is the directory of the request-record journal (audit/journal.go) for a
// log on this host's disk; none for a log on a shared engine: a fleet's replicas commit
// each batch to the shared log, so a dead host holds no record the others lack.
func (a *App) requestJournal() string {
	if a.Config.Audit.LogDB != "" {
		return ""
	}
	return filepath.Join(a.Config.Audit.LogDir, "journal")
}
