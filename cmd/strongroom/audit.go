package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

// logSource is where an audit command reads the log: a URL or a directory, and the key.
type logSource struct {
	log       string
	vkey      string
	vkeyFile  string
	witnesses []string
	wfiles    []string
	quorum    int
}

// readKeys reads one verifier key per file.
func readKeys(files []string) ([]string, error) {
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, usagef("%v", err)
		}
		out = append(out, strings.TrimSpace(string(b)))
	}
	return out, nil
}

func (s *logSource) flags(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&s.log, "log", "", "log base URL (http://…/log/) or directory (default: this data directory's log)")
	f.StringVar(&s.vkey, "vkey", "", "the log's verifier key (default: this data directory's keys/log.pub)")
	f.StringVar(&s.vkeyFile, "vkey-file", "", "file holding the log's verifier key")
	f.StringArrayVar(&s.witnesses, "witness", nil, "a witness's cosignature verifier key (repeatable)")
	f.StringArrayVar(&s.wfiles, "witness-file", nil, "file holding a witness's cosignature verifier key (repeatable)")
	f.IntVar(&s.quorum, "quorum", 0, "how many of the --witness keys must have cosigned (default: all given)")
}

// open resolves the fetcher and verification options; only the public key and HTTP (or
// file) access are needed, no database.
func (s *logSource) open(g *globals) (audit.Fetcher, audit.VerifyOptions, error) {
	var o audit.VerifyOptions
	vkey := s.vkey
	if vkey == "" && s.vkeyFile != "" {
		b, err := os.ReadFile(s.vkeyFile)
		if err != nil {
			return nil, o, usagef("--vkey-file: %v", err)
		}
		vkey = strings.TrimSpace(string(b))
	}
	logLoc := s.log
	var dbTLS *config.ClientTLS // the data directory's, for its own log database
	if vkey == "" || logLoc == "" {
		c, err := config.Load(g.dataDir(), g.config)
		if err != nil {
			return nil, o, usagef("give --log and --vkey, or run inside a data directory: %v", err)
		}
		if vkey == "" {
			b, err := os.ReadFile(app.LogVKeyPath(c.Audit.LogKey))
			if err != nil {
				return nil, o, err
			}
			vkey = strings.TrimSpace(string(b))
		}
		if logLoc == "" {
			logLoc = c.Audit.LogDir
			if c.Audit.LogDB != "" {
				if !audit.IsSQLLog(c.Audit.LogDB) {
					// Not repeated: it may hold a password.
					return nil, o, usagef("audit.log_db (STRONGROOM_LOG_DB) must be a mysql:// DSN")
				}
				logLoc, dbTLS = c.Audit.LogDB, c.Audit.LogDBTLS
			}
		}
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, o, usagef("bad log verifier key: %v", err)
	}
	o.LogKey = v
	fromFiles, err := readKeys(s.wfiles)
	if err != nil {
		return nil, o, err
	}
	var ws []config.Witness
	for _, w := range append(s.witnesses, fromFiles...) {
		ws = append(ws, config.Witness{VKey: w})
	}
	if o.Witnesses, err = app.WitnessVerifiers(ws); err != nil {
		return nil, o, usageError{err}
	}
	o.Quorum = s.quorum
	if o.Quorum == 0 {
		o.Quorum = len(o.Witnesses)
	}
	if audit.LooksLikeDSN(logLoc) {
		return nil, o, usagef("--log looks like a database DSN without its scheme: write mysql://… (the value is not repeated: it may hold a password)")
	}
	if strings.HasPrefix(logLoc, "http://") || strings.HasPrefix(logLoc, "https://") {
		u, err := url.Parse(logLoc)
		if err != nil {
			return nil, o, usagef("--log: %v", err)
		}
		f, err := client.NewHTTPFetcher(u, nil)
		o.Bundles = func(ctx context.Context, name string) ([]byte, error) {
			return httpGet(ctx, u.JoinPath("batches", name).String())
		}
		return f, o, err
	}
	if audit.IsSQLLog(logLoc) {
		tc, err := app.ClientTLS("audit.log_db_tls", dbTLS)
		if err != nil {
			return nil, o, err
		}
		r, bundles, _, err := audit.OpenSQLReader(context.Background(), logLoc, tc) // closed at exit
		if err != nil {
			return nil, o, err
		}
		o.Bundles = bundles.Bundle
		return r, o, nil
	}
	o.Bundles = audit.DirBundles{Dir: logLoc}.Bundle
	return client.FileFetcher{Root: logLoc}, o, nil
}

func auditCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "audit", Short: "Verify, search and export the transparency log of security events"}
	c.AddCommand(auditVerifyCmd(g), auditProofCmd(g), auditSearchCmd(g), auditExportCmd(g), auditAcknowledgeCmd(g), auditRepairCmd(g), auditExposureCmd(g))
	return c
}

func auditExposureCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "exposure",
		Short: "Look for the audit key's derived keys among the digests in the log (exit 1 if one is there)",
		Long: `Every key Strongroom derives from the audit HMAC key (the shared log's entry MACs, the
request journal's, the detection bus's seal, the limiter's scope names, the revocation
announcements' seal) is HMAC-SHA256(audit key, label). Before the forty-sixth session the
records' digests of prompts and watermark questions were HMAC-SHA256(audit key, text), so
a client who sent a label as its text found that key in the public log. This command reads
every entry and every request record of the log and names each derived key it finds there
as a digest; if it finds one, treat that key as known.`,
		Args: exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			found, size, err := a.DerivedKeyExposure(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				if err := g.printJSON(cmd.OutOrStdout(), map[string]any{"entries": size, "exposed": append([]app.Exposure{}, found...)}); err != nil {
					return err
				}
			} else {
				for _, e := range found {
					where := fmt.Sprintf("entry %d", e.Entry)
					if e.Record >= 0 {
						where = fmt.Sprintf("request record %d of batch entry %d", e.Record, e.Entry)
					}
					fmt.Fprintf(cmd.OutOrStdout(), "exposed: the key of %s, as a digest in %s\n", e.Key, where)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%d entries read; %d derived keys found as digests\n", size, len(found))
			}
			if len(found) > 0 {
				return fmt.Errorf("%d of the audit key's derived keys are in the log: treat them as known", len(found))
			}
			return nil
		}),
	}
}

func auditAcknowledgeCmd(g *globals) *cobra.Command {
	var index uint64
	var reason, leafHash string
	c := &cobra.Command{
		Use:   "acknowledge --entry N --reason TEXT [--leaf-hash HEX]",
		Short: "Record that log entry N was not written by a replica (no valid entry MAC), so that checkpoints go on past it",
		Long: `An entry appended to a shared log by someone with access to its database, not by a
replica, has no valid entry MAC: the checkpoint signer refuses every tree that holds it,
with an ALERT naming it. The entry stays in the log (it is append-only). After looking at
it, an operator records that it is foreign: an entry of kind audit.foreign_entry naming it
and the hash of its bytes. The signer then signs trees that hold both, and
'audit verify --hmac-key' reports the entry as foreign and acknowledged. The command prints
the leaf hash it acknowledged; --leaf-hash refuses unless the entry's bytes still hash to
the value given (what the operator inspected).`,
		Args: exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			if strings.TrimSpace(reason) == "" {
				return usagef("--reason: say what was found (it goes into the log)")
			}
			at, h, err := a.AcknowledgeForeignEntry(cmd.Context(), index, reason, leafHash)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), map[string]any{"entry": index, "leaf_hash": h, "acknowledged_at": at})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "entry %d (leaf hash %s) acknowledged as foreign by entry %d\n", index, h, at)
			return nil
		}),
	}
	incidentFlags(c, &index, &reason, "index of the foreign entry (from the signer's ALERT)")
	c.Flags().StringVar(&leafHash, "leaf-hash", "", "refuse unless the entry's leaf hash (hex, RFC 6962) is this")
	return c
}

func auditRepairCmd(g *globals) *cobra.Command {
	var index uint64
	var reason, evidence string
	c := &cobra.Command{
		Use:   "repair --entry N --reason TEXT --evidence FILE",
		Short: "Cut a shared log's unsigned tail back to entry N, whose bytes are not its leaf, and append again what replicas sealed after it",
		Long: `When someone with write access to the shared log's database appends an entry and then
overwrites its bytes, the tree holds a leaf nobody can show: the signer refuses every tree
from then on ("does not commit to entry N as the log holds it"), and 'audit acknowledge'
cannot help (it says the database must be repaired). This command is that repair. In one
transaction it rebuilds the unsigned part of the tree from the bytes the database holds:
from the last tree the log key signed (signed history is never rewritten), entries before
N stay in place, and from N on every entry a replica sealed is appended again (in the
tree's order where it can tell), entries no replica wrote are dropped, and a sealed entry
of kind audit.log_repair names N and every leaf the old tree held that the new one does
not. What the database held at each such place is written to --evidence before the repair
commits. Stop every replica of the log first: this process must hold the checkpoint
signer's lock. Entries after N get new indexes; the search index reads them again.

Before anything changes, every witness of the log's policy is asked (over its own
protocol) whether it holds a checkpoint past the last tree this replica knows signed: a
data directory that never saw the latest checkpoint, or an older checkpoint put back in
the database, must not let a repair rewrite entries already published. The repair is
refused when a witness holds a larger tree or another tree of that size, or when fewer
than the quorum answer.`,
		Args: exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			if strings.TrimSpace(reason) == "" {
				return usagef("--reason: say what was found (it goes into the log)")
			}
			if evidence == "" {
				return usagef("--evidence: a file for the dropped entries' bytes")
			}
			r, err := a.RepairLog(cmd.Context(), index, reason, evidence)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), map[string]any{"entry": r.Entry, "old_size": r.OldSize, "moved": r.Moved,
					"dropped": len(r.Dropped), "repair_entry": r.At, "size": r.Size, "evidence": evidence,
					"witnesses_configured": r.Witnesses.Configured, "witnesses_answered": r.Witnesses.Answered})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "repaired: the tree was cut back to entry %d (it held %d entries); %d sealed entries appended again, %d dropped (evidence in %s); repair recorded as entry %d\n",
				r.Entry, r.OldSize, r.Moved, len(r.Dropped), evidence, r.At)
			fmt.Fprintf(cmd.OutOrStdout(), "witnesses: %s\n", r.Witnesses)
			return nil
		}),
	}
	incidentFlags(c, &index, &reason, "the entry whose bytes are not its leaf (from the signer's ALERT)")
	c.Flags().StringVar(&evidence, "evidence", "", "where the dropped entries (their bytes and leaf hashes) are written, as JSON")
	c.MarkFlagRequired("evidence")
	return c
}

// incidentFlags are the --entry and --reason of the commands an operator answers a log
// incident with (both required).
func incidentFlags(c *cobra.Command, index *uint64, reason *string, entryHelp string) {
	c.Flags().Uint64Var(index, "entry", 0, entryHelp)
	c.Flags().StringVar(reason, "reason", "", "what the investigation found (recorded in the log)")
	c.MarkFlagRequired("entry")
	c.MarkFlagRequired("reason")
}

func auditVerifyCmd(g *globals) *cobra.Command {
	var src logSource
	var statePath, hmacKey string
	var legacy bool
	c := &cobra.Command{
		Use:   "verify",
		Short: "Check the log's signature, cosignatures, every entry and tile, and consistency with the last run",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, o, err := src.open(g)
			if err != nil {
				return err
			}
			if statePath == "" {
				statePath = defaultStatePath(o.LogKey.Name(), o.LogKey.KeyHash())
			}
			if b, err := os.ReadFile(statePath); err == nil {
				var prior audit.State
				if err := json.Unmarshal(b, &prior); err != nil {
					return fmt.Errorf("state file %s: %w", statePath, err)
				}
				o.Prior = &prior
			} else if !errors.Is(err, os.ErrNotExist) {
				return err
			}
			if hmacKey != "" {
				k, err := os.ReadFile(hmacKey)
				if err != nil {
					return usagef("--hmac-key: %v", err)
				}
				o.EntryKey, o.LegacyUnsealed = audit.EntryKey(k), legacy
				clear(k)
			}
			st, err := audit.Verify(cmd.Context(), f, o)
			clear(o.EntryKey)
			if err != nil {
				return err
			}
			b, _ := json.MarshalIndent(st, "", "  ")
			if err := fsutil.WriteFileAtomic(statePath, b, 0o644); err != nil {
				return err
			}
			if g.json {
				out := map[string]any{"ok": true, "origin": st.Origin, "size": st.Size, "root": st.Root, "copies": append([]audit.Copy{}, st.Copies...)}
				if hmacKey != "" {
					out["foreign_acknowledged"], out["unsealed_before_macs"] = append([]uint64{}, st.Foreign...), st.Unsealed
				}
				return g.printJSON(cmd.OutOrStdout(), out)
			}
			prev := "first run"
			if o.Prior != nil {
				prev = fmt.Sprintf("consistent with size %d seen before", o.Prior.Size)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: log %s: %d entries and their tiles match the signed checkpoint (root %s), %d witness cosignatures, %s\n",
				st.Origin, st.Size, base64.StdEncoding.EncodeToString(st.Root), o.Quorum, prev)
			if hmacKey != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "entry MACs: a replica wrote every entry, except %d foreign, each acknowledged (entries %v), and %d from before entry MACs\n",
					len(st.Foreign), st.Foreign, st.Unsealed)
			}
			for _, c := range st.Copies {
				fmt.Fprintf(cmd.OutOrStdout(), "copy: entry %d repeats entry %d byte for byte (appended again through the log's database, or a batch folded twice); it says nothing new and is counted once\n", c.Index, c.Of)
			}
			return nil
		},
	}
	src.flags(c)
	c.Flags().StringVar(&hmacKey, "hmac-key", "", "the deployment's audit HMAC key (keys/audit-hmac.key; operators only): also check that a replica wrote every entry")
	c.Flags().BoolVar(&legacy, "legacy-unsealed", false, "with --hmac-key: accept unsealed entries ahead of the first sealed one (a log on local disk begun before entry MACs; never a shared log)")
	c.Flags().StringVar(&statePath, "state", "", "where the last accepted checkpoint is kept between runs (default: strongroom-verify-state.ORIGIN.json, one per log)")
	return c
}

// defaultStatePath is one state file per log (origin and key), so that verifying a second
// log never reads the first one's checkpoint as its own history.
func defaultStatePath(origin string, keyHash uint32) string {
	safe := strings.Map(func(r rune) rune {
		if r == '.' || r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9') {
			return r
		}
		return '_'
	}, origin)
	return fmt.Sprintf("strongroom-verify-state.%s.%08x.json", safe, keyHash)
}

// checkpoint opens the log and fetches and checks its current checkpoint.
func (s *logSource) checkpoint(ctx context.Context, g *globals) (audit.Fetcher, uint64, []byte, error) {
	f, _, size, root, err := s.checkpointWith(ctx, g)
	return f, size, root, err
}

func (s *logSource) checkpointWith(ctx context.Context, g *globals) (audit.Fetcher, audit.VerifyOptions, uint64, []byte, error) {
	f, o, err := s.open(g)
	if err != nil {
		return nil, o, 0, nil, err
	}
	raw, err := f.ReadCheckpoint(ctx)
	if err != nil {
		return nil, o, 0, nil, err
	}
	cp, err := audit.OpenCheckpoint(raw, o)
	if err != nil {
		return nil, o, 0, nil, err
	}
	return f, o, cp.Size, cp.Hash, nil
}

func auditProofCmd(g *globals) *cobra.Command {
	var src logSource
	var index uint64
	c := &cobra.Command{
		Use:   "proof --index N",
		Short: "Print entry N (or request record N, from audit search) with its inclusion proof in the current signed checkpoint",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, o, size, root, err := src.checkpointWith(cmd.Context(), g)
			if err != nil {
				return err
			}
			pe, err := audit.Prove(cmd.Context(), f, o, size, root, index)
			if err != nil {
				return err
			}
			return g.printJSON(cmd.OutOrStdout(), pe)
		},
	}
	src.flags(c)
	c.Flags().Uint64Var(&index, "index", 0, "entry index")
	c.MarkFlagRequired("index")
	return c
}

func auditExportCmd(g *globals) *cobra.Command {
	var src logSource
	c := &cobra.Command{
		Use:   "export",
		Short: "Write every entry of the signed checkpoint as JSONL with its inclusion proof",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, size, root, err := src.checkpoint(cmd.Context(), g)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			return audit.ReadEntries(cmd.Context(), f.ReadEntryBundle, 0, size, func(evs []store.AuditEvent) error {
				for _, e := range evs {
					pe, err := audit.ProveEntry(cmd.Context(), f, size, root, e.Index, e.Raw)
					if err != nil {
						return err
					}
					if err := enc.Encode(pe); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	src.flags(c)
	return c
}

func auditSearchCmd(g *globals) *cobra.Command {
	var q store.AuditQuery
	var since string
	c := &cobra.Command{
		Use:   "search [--principal P] [--kind K] [--since T]",
		Short: "Find events through the index kept in the store (JSONL)",
		Args:  exactArgs(0),
		PreRunE: func(*cobra.Command, []string) error {
			if since == "" {
				return nil
			}
			if d, err := time.ParseDuration(since); err == nil {
				q.Since = time.Now().Add(-d)
				return nil
			}
			t, err := time.Parse(time.RFC3339, since)
			if err != nil {
				return usagef("--since %q: want RFC 3339 time or a duration such as 24h", since)
			}
			q.Since = t
			return nil
		},
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			evs, err := a.Store.SearchAudit(cmd.Context(), q)
			if err != nil {
				return err
			}
			for _, e := range evs {
				fmt.Fprintf(cmd.OutOrStdout(), "{\"index\":%d,\"event\":%s}\n", e.Index, e.Raw)
			}
			return nil
		}),
	}
	c.Flags().StringVar(&q.Principal, "principal", "", "actor principal, e.g. os:alice@host")
	c.Flags().StringVar(&q.Kind, "kind", "", "event kind, e.g. model.unseal")
	c.Flags().StringVar(&since, "since", "", "RFC 3339 time or duration ago (24h)")
	c.Flags().IntVar(&q.Limit, "limit", 0, "at most this many events")
	return c
}

func witnessCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "witness", Short: "Run a C2SP tlog-witness that cosigns checkpoints of logs it follows"}
	var name, keyPath string
	initC := &cobra.Command{
		Use:   "init --name NAME --key FILE",
		Short: "Make a witness key; prints the cosignature verifier key to give to logs and verifiers",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			skey, vkey, err := note.GenerateKey(rand.Reader, name)
			if err != nil {
				return usagef("witness name %q: %v", name, err)
			}
			if _, err := os.Stat(keyPath); err == nil {
				return fmt.Errorf("%s exists; not overwriting a witness key", keyPath)
			}
			if err := fsutil.WriteFileAtomic(keyPath, []byte(skey+"\n"), 0o600); err != nil {
				return err
			}
			cv, err := cosignatureVKey(vkey)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), cv)
			return nil
		},
	}
	initC.Flags().StringVar(&name, "name", "", "witness name, e.g. witness.example.org")
	initC.Flags().StringVar(&keyPath, "key", "", "private key file to write (0600)")
	initC.MarkFlagRequired("name")
	initC.MarkFlagRequired("key")
	c.AddCommand(initC, witnessServeCmd(g))
	return c
}

// httpGet fetches a log resource (a batch bundle), refusing anything but 200 and bodies
// over the bundle limit.
func httpGet(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	const limit = audit.MaxBatch*(audit.MaxEventSize+10) + 64
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err == nil && len(b) > limit {
		err = fmt.Errorf("GET %s: over %d bytes", u, limit)
	}
	return b, err
}
