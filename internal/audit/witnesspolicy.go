package audit

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/tessera"

	"github.com/strongroom/strongroom/internal/redact"
)

// Replicas of one shared log with different witness policies (one given a new policy, one
// given none) each serve what their own policy allows, and whichever holds the signer's
// lock decides what is cosigned: under a weaker policy, or none, the log's outsiders get
// checkpoints fewer witnesses (or none) have seen, and nothing said so (the twenty-fourth
// session's note). So every replica of a shared log says which policy it runs, in a row
// of its own (replicaPolicyTable: a digest of the policy, refreshed every policyEvery on the
// database's clock), and reads the others': while the replicas alive disagree, each raises
// an ALERT (once a disagreement), strongroom_audit_witness_policies is their number of
// policies, and /healthz carries a warning (WitnessPoliciesDiffer). It is a warning: every
// checkpoint served is still the log key's and still meets the serving replica's policy.
// During a rolling change of policy the replicas disagree until the last is restarted.

// replicaPolicyTable holds each live replica's witness policy digest.
const replicaPolicyTable = "StrongroomReplicaPolicy"

const replicaPolicySchema = "CREATE TABLE IF NOT EXISTS `" + replicaPolicyTable + "` (`replica` CHAR(32) NOT NULL, `policy` CHAR(64) NOT NULL, `seen` DATETIME(3) NOT NULL, PRIMARY KEY(`replica`))"

const (
	// policyEvery is how often a replica refreshes its row and reads the others'.
	policyEvery = 2 * time.Second
	// policyAlive is how long a row counts after its last refresh: a replica stopped
	// without removing its row (killed) stops counting then.
	policyAlive = 15 * time.Second
	// policyForget is when a row no replica refreshed any more is removed.
	policyForget = time.Hour
)

// noPolicy is the digest of "no witnesses".
const noPolicy = "none"

// policyDigest names a witness policy by what it requires, whatever the order it was
// written in: each witness by its key (name and key hash) and URL (its password hidden), each group by its
// threshold and its members, sorted. nil: noPolicy.
func policyDigest(g *tessera.WitnessGroup) string {
	if g == nil {
		return noPolicy
	}
	sum := sha256.Sum256([]byte(policyForm(*g)))
	return hex.EncodeToString(sum[:])
}

func policyForm(c any) string {
	switch c := c.(type) {
	case tessera.Witness:
		// The URL without its password: the digest is shared (the database, /healthz, the
		// log), and a hash of a password is a guess's check (round 57).
		return "witness " + c.Key.Name() + " " + strconv.FormatUint(uint64(c.Key.KeyHash()), 16) + " " + redact.URL(c.URL)
	case *tessera.Witness:
		return policyForm(*c)
	case tessera.WitnessGroup:
		parts := make([]string, 0, len(c.Components))
		for _, m := range c.Components {
			parts = append(parts, policyForm(m))
		}
		slices.Sort(parts)
		return "group " + strconv.Itoa(c.N) + " (" + strings.Join(parts, "; ") + ")"
	case *tessera.WitnessGroup:
		return policyForm(*c)
	default:
		return fmt.Sprintf("component %T", c) // a kind tessera adds later: named by its type alone
	}
}

// policyWatch is a replica's part in the agreement on witness policies.
type policyWatch struct {
	id      string // this process's row
	digest  string
	log     *Log
	alerted string // the disagreement last alerted ("": none)
	differ  atomic.Pointer[string]
	count   atomic.Int64 // policies among the live replicas (0: not read yet)
	wrote   atomic.Bool  // the last round wrote this replica's row (leave removes it only then)
}

func newPolicyWatch(l *Log, g *tessera.WitnessGroup) *policyWatch {
	var b [16]byte
	rand.Read(b[:])
	return &policyWatch{id: hex.EncodeToString(b[:]), digest: policyDigest(g), log: l}
}

// round refreshes this replica's row, forgets rows long dead, and compares the live ones.
func (w *policyWatch) round(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, rowRead)
	defer cancel()
	db := w.log.db
	_, err := db.ExecContext(ctx, "INSERT INTO `"+replicaPolicyTable+"` (`replica`, `policy`, `seen`) VALUES (?, ?, NOW(3)) ON DUPLICATE KEY UPDATE `policy` = VALUES(`policy`), `seen` = NOW(3)", w.id, w.digest)
	w.wrote.Store(err == nil)
	if err != nil {
		return // the engine away: its own watches say so; the next round tries again
	}
	db.ExecContext(ctx, "DELETE FROM `"+replicaPolicyTable+"` WHERE `seen` < NOW(3) - INTERVAL ? SECOND", int(policyForget.Seconds()))
	rows, err := db.QueryContext(ctx, "SELECT `policy`, COUNT(*) FROM `"+replicaPolicyTable+"` WHERE `seen` >= NOW(3) - INTERVAL ? SECOND GROUP BY `policy`", int(policyAlive.Seconds()))
	if err != nil {
		return
	}
	defer rows.Close()
	others, mine := map[string]int{}, 0
	for rows.Next() {
		var p string
		var n int
		if err := rows.Scan(&p, &n); err != nil {
			return
		}
		if p == w.digest {
			mine = n
		} else {
			others[p] = n
		}
	}
	if rows.Err() != nil || mine == 0 {
		return // this replica's own row not read back: nothing known
	}
	w.count.Store(int64(1 + len(others)))
	if len(others) == 0 {
		w.differ.Store(nil)
		if w.alerted != "" {
			w.alerted = ""
			w.log.log.Warn("audit log: the log's replicas run one witness policy again", "policy", short(w.digest), "replicas", mine)
		}
		return
	}
	var set, counts []string
	for p, n := range others {
		set = append(set, short(p))
		counts = append(counts, short(p)+" on "+strconv.Itoa(n))
	}
	slices.Sort(set)
	slices.Sort(counts)
	msg := "audit log: the log's replicas run different witness policies (this replica's " + short(w.digest) + " on " + strconv.Itoa(mine) +
		", others " + strings.Join(counts, ", ") + "); the replica holding the signer's lock decides what is cosigned"
	w.differ.Store(&msg)
	if key := strings.Join(set, " "); key != w.alerted { // once a set of policies, not once a count
		w.alerted = key
		w.log.log.Error("ALERT audit log: replicas of this log run different witness policies: what outsiders are given follows the signer's policy, which may be weaker than this replica's or none; give every replica the same witnesses and quorum (a rolling change of policy shows this until its last replica restarts)",
			"this_policy", short(w.digest), "this_policy_replicas", mine, "other_policies", strings.Join(counts, ", "), "signer_here", w.log.Signer())
	}
}

// leave removes this replica's row (Close): a replica stopped on purpose stops counting at
// once. Only when the last round could write it, and briefly: with the database away, Close
// does not wait on it (the row stops counting policyAlive after its last refresh anyway).
func (w *policyWatch) leave(ctx context.Context) {
	if !w.wrote.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	w.log.db.ExecContext(ctx, "DELETE FROM `"+replicaPolicyTable+"` WHERE `replica` = ?", w.id)
}

// short is a policy digest as said in a message.
func short(p string) string {
	if len(p) > 16 {
		return p[:16]
	}
	return p
}

// WitnessPoliciesDiffer is non-nil while the live replicas of this shared log run
// different witness policies (nil on a log on local disk). A warning: /healthz says it.
func (l *Log) WitnessPoliciesDiffer() error {
	if l.policies == nil {
		return nil
	}
	if m := l.policies.differ.Load(); m != nil {
		return fmt.Errorf("%s", *m)
	}
	return nil
}
