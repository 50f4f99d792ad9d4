package audit

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/tessera"
	"golang.org/x/mod/sumdb/note"
)

// Witnesses of a log on a shared engine are asked outside tessera's transaction.
//
// tessera v1.0.4's storage/mysql makes each checkpoint — its witnesses' cosignatures
// included — inside the transaction that holds the tree state's row, which every append of
// every replica needs: a witness that hangs, fails or answers slowly held the fleet's
// appends for its whole round (outside rounds 39 and 40: 0.2 % of the rate with a hanging
// witness, 24 % with one answering in 2.6 s of 3). So tessera is given no witnesses on a
// shared engine: its Checkpoint row holds the signer's checkpoint alone, published in
// milliseconds. The signer replica then asks the witnesses for that checkpoint, with no
// lock held (cosigner.round), and writes the cosigned checkpoint to its own row
// (witnessedTable). That row is what the log serves (/log/checkpoint, Checkpoint, Reader):
// outsiders never see a checkpoint without the witness policy met. Everything the
// replicas check among themselves (rollbacks, the signer's floor, lost commits) stays on
// tessera's row.

// witnessedTable holds the latest checkpoint cosigned under the log's witness policy.
const witnessedTable = "StrongroomWitnessed"

const witnessedSchema = "CREATE TABLE IF NOT EXISTS `" + witnessedTable + "` (`id` TINYINT UNSIGNED NOT NULL, `size` BIGINT UNSIGNED NOT NULL, `note` MEDIUMBLOB NOT NULL, PRIMARY KEY(`id`))"

// cosignEvery is how often the signer replica looks for a checkpoint to have witnessed
// (one read of tessera's row while there is none).
const cosignEvery = 500 * time.Millisecond

// cosigner gathers the witnesses' cosignatures for tessera's published checkpoints, on
// the replica that signs (one goroutine: the Log's loop).
type cosigner struct {
	l         *Log
	signer    note.Signer // the log key's (not the leader's checks: what it cosigns was signed after them)
	replay    *replaySigner
	publish   func(context.Context, uint64, []byte) ([]byte, error)
	log       *slog.Logger
	pubFailed prometheus.Counter // strongroom_audit_publications_failed_total

	done     uint64    // the size of the witnessed row when last read or written
	failures int       // witness rounds in a row that failed
	retryAt  time.Time // no round before this
	rounds   atomic.Int64
}

func newCosigner(l *Log, s note.Signer, g tessera.WitnessGroup, timeout time.Duration, lg *slog.Logger, failed prometheus.Counter) *cosigner {
	c := &cosigner{l: l, signer: s, replay: &replaySigner{name: s.Name(), hash: s.KeyHash()}, log: lg, pubFailed: failed}
	// tessera's publisher makes the checkpoint (here: the signature already published,
	// replayed) and runs the witness protocol: each witness's last size, the consistency
	// proofs from the log's tiles, the policy.
	c.publish = tessera.NewAppendOptions().
		WithCheckpointSigner(c.replay).
		WithWitnesses(g, &tessera.WitnessOptions{Timeout: timeout}).
		CheckpointPublisher(witnessedReader{l.reader, c.readSigned}, http.DefaultClient)
	return c
}

// round asks the witnesses for tessera's latest checkpoint if it is larger than the
// witnessed one, and writes the cosigned checkpoint. Only the replica holding the signer
// lock asks. After a round that failed, the next waits publishBackoff (a hanging witness
// is not asked back to back: three times the failed round, doubling, at most 30 s).
func (c *cosigner) round(ctx context.Context) {
	if !c.l.leader.held.Load() {
		c.failures, c.retryAt = 0, time.Time{}
		return
	}
	now := time.Now()
	if now.Before(c.retryAt) {
		return
	}
	cp, err := c.l.reader.ReadCheckpoint(ctx)
	if err != nil || !signedBy(c.signer, cp) {
		return // none yet, or the row is not the log key's (the watch says so)
	}
	size, ok := checkpointSize(cp)
	if !ok || size <= c.done {
		return
	}
	// A row not signed by the log key (an insider's: a size of 2^64-1 would keep every
	// later write out) is replaced, not compared with.
	force := false
	if w, err := c.readNote(ctx); err == nil {
		if n, ok := checkpointSize(w); ok && signedBy(c.signer, w) {
			c.done = max(c.done, n)
		} else {
			force = true
		}
	}
	if size <= c.done {
		return
	}
	body, root, sig, err := splitCheckpoint(c.signer, cp)
	if err != nil {
		return
	}
	c.replay.set(body, sig)
	defer c.replay.set(nil, nil)
	c.rounds.Add(1)
	out, err := c.publish(ctx, size, root)
	if err == nil {
		err = c.store(ctx, size, out, force)
	}
	if err != nil {
		c.failures++
		if c.pubFailed != nil {
			c.pubFailed.Inc()
		}
		wait := publishBackoff(time.Since(now), c.failures)
		c.retryAt = time.Now().Add(wait)
		c.log.Warn("audit log: a checkpoint's witness round failed (no quorum of cosignatures, or the row's write failed); appends go on, the published checkpoint waits; the next round",
			"size", size, "failures_in_a_row", c.failures, "attempt", time.Since(now).Round(time.Millisecond), "wait", wait, "err", err)
		return
	}
	if c.failures > 0 {
		c.log.Info("audit log: witnesses cosign again", "size", size)
	}
	c.failures, c.retryAt, c.done = 0, time.Time{}, size
}

// store writes a cosigned checkpoint to the witnessed row unless that row already holds
// a larger tree (a signer that took over meanwhile); force: whatever the row holds.
func (c *cosigner) store(ctx context.Context, size uint64, cp []byte, force bool) error {
	q := "INSERT INTO `" + witnessedTable + "` (`id`, `size`, `note`) VALUES (0, ?, ?) " +
		"ON DUPLICATE KEY UPDATE `note` = IF(VALUES(`size`) > `size`, VALUES(`note`), `note`), `size` = GREATEST(`size`, VALUES(`size`))"
	if force {
		q = "REPLACE INTO `" + witnessedTable + "` (`id`, `size`, `note`) VALUES (0, ?, ?)"
	}
	_, err := c.l.db.ExecContext(ctx, q, size, cp)
	return err
}

// readNote reads the witnessed row (os.ErrNotExist: none yet).
func (c *cosigner) readNote(ctx context.Context) ([]byte, error) { return readWitnessed(ctx, c.l) }

// readSigned is the witnessed row for the witness round's "old" size: only a checkpoint the
// log key signed (anything else: none, and the witnesses say which size they hold).
func (c *cosigner) readSigned(ctx context.Context) ([]byte, error) {
	cp, err := c.readNote(ctx)
	if err == nil && !signedBy(c.signer, cp) {
		return nil, os.ErrNotExist
	}
	return cp, err
}

func readWitnessed(ctx context.Context, l *Log) ([]byte, error) {
	var cp []byte
	err := l.db.QueryRowContext(ctx, "SELECT `note` FROM `"+witnessedTable+"` WHERE `id` = 0").Scan(&cp)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, os.ErrNotExist
	}
	return cp, err
}

// splitCheckpoint checks that cp is signed by s and returns its body, root and s's
// signature.
func splitCheckpoint(s note.Signer, cp []byte) (body, root, sig []byte, err error) {
	i := bytes.Index(cp, []byte("\n\n"))
	if i < 0 || !signedBy(s, cp) {
		return nil, nil, nil, errors.New("audit: checkpoint not signed by the log key")
	}
	body = cp[:i+1]
	var c log.Checkpoint
	if _, err := c.Unmarshal(body); err != nil {
		return nil, nil, nil, fmt.Errorf("audit: checkpoint: %v", err)
	}
	prefix := "\u2014 " + s.Name() + " "
	for line := range strings.Lines(string(cp[i+2:])) {
		b64, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), prefix)
		if !ok {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(raw) < 5 || binary.BigEndian.Uint32(raw) != s.KeyHash() {
			continue
		}
		return body, c.Hash, raw[4:], nil
	}
	return nil, nil, nil, errors.New("audit: checkpoint without the log key's signature")
}

// replaySigner gives, for the one checkpoint body set, the signature the log key already
// made for it: the witness round does not sign again (nor anything else).
type replaySigner struct {
	name string
	hash uint32
	body []byte
	sig  []byte
}

func (r *replaySigner) set(body, sig []byte) { r.body, r.sig = body, sig }
func (r *replaySigner) Name() string         { return r.name }
func (r *replaySigner) KeyHash() uint32      { return r.hash }
func (r *replaySigner) Sign(msg []byte) ([]byte, error) {
	if r.body == nil || !bytes.Equal(msg, r.body) {
		return nil, errors.New("audit: the witness round asked to sign another checkpoint than the one published")
	}
	return bytes.Clone(r.sig), nil
}

// witnessedReader is the log's reader with the witnessed row as its checkpoint: what the
// log serves outsiders, and the witness round's "old" checkpoint (the size the witnesses
// last cosigned).
type witnessedReader struct {
	tessera.LogReader
	read func(context.Context) ([]byte, error)
}

func (r witnessedReader) ReadCheckpoint(ctx context.Context) ([]byte, error) { return r.read(ctx) }
