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

	failures int       // witness rounds in a row that failed
	retryAt  time.Time // no round before this
	alerted  string    // the last tampering ALERT's cause
	rounds   atomic.Int64
}

// witnessAnswerMax bounds a witness's answer (a few cosignature lines): tessera's client
// reads it whole, and a hostile witness streamed 512 MiB into the signer's heap (outside
// round 41).
const witnessAnswerMax = 64 << 10

func newCosigner(l *Log, s note.Signer, g tessera.WitnessGroup, judge *witnessJudge, timeout time.Duration, lg *slog.Logger, failed prometheus.Counter) *cosigner {
	c := &cosigner{l: l, signer: s, replay: &replaySigner{name: s.Name(), hash: s.KeyHash()}, log: lg, pubFailed: failed}
	// tessera's publisher makes the checkpoint (here: the signature already published,
	// replayed) and runs the witness protocol: each witness's last size, the consistency
	// proofs from the log's tiles, the policy.
	client := witnessClient(witnessTransport{rt: http.DefaultTransport, max: witnessAnswerMax, judge: judge}, 0) // the round's context bounds it (timeout)
	c.publish = tessera.NewAppendOptions().
		WithCheckpointSigner(c.replay).
		WithWitnesses(g, &tessera.WitnessOptions{Timeout: timeout}).
		CheckpointPublisher(witnessedReader{l.reader, c.readSigned}, client)
	return c
}

// rowRead bounds a read or write of the witnessed row: a row locked by someone else (LOCK
// TABLES) must not take the witness round's whole time (outside round 41).
const rowRead = 2 * time.Second

// witnessedRow is the witnessed row as read: its note and size column (found false: no row).
type witnessedRow struct {
	note  []byte
	size  uint64
	found bool
}

// fault says what is wrong with the row for the log as this replica knows it ("": nothing):
// what checkWitnessed finds in its note (every replica's check), a size column that is not
// the note's (the column the signer's compare-and-set reads), or no row after a good one
// was seen. The row is anyone's with write access to the database (outside round 41
// changed each).
func (c *cosigner) fault(r witnessedRow) string {
	if !r.found {
		if c.l.goodCP.Load() != nil {
			return "the witnessed checkpoint's row was removed"
		}
		return ""
	}
	if err := c.l.checkWitnessed(r.note); err != nil {
		return err.Error()
	}
	if n, _ := checkpointSize(r.note); n != r.size {
		return "the witnessed checkpoint's size column is not its tree's size"
	}
	return ""
}

// round checks the witnessed row and, when tessera's latest checkpoint is larger than the
// witnessed one, asks the witnesses for it and writes the cosigned checkpoint. Only the
// replica holding the signer lock does. A row that was tampered with is put back to the
// last good checkpoint (or the next cosigned one), with an ALERT. After a witness round
// that failed, the next waits publishBackoff (a hanging witness is not asked back to back:
// three times the failed round, doubling, at most 30 s).
func (c *cosigner) round(ctx context.Context) {
	if !c.l.leader.held.Load() {
		c.failures, c.retryAt = 0, time.Time{}
		return
	}
	row, err := readWitnessedRow(ctx, c.l)
	if err != nil {
		return // the engine away or the row locked: the watch says so; the next tick tries again
	}
	fault := c.fault(row) // a good row (another signer's, before this one took over) is kept as l.goodCP
	good := c.l.goodCP.Load()
	if fault != "" {
		if fault != c.alerted {
			c.alerted = fault
			var goodSize uint64
			if good != nil {
				goodSize = good.size
			}
			who := "someone with write access to the log's database"
			if fault == errWitnessPolicy.Error() {
				// A row cosigned under another policy: an operator's change, or replicas
				// configured apart — not only an insider (outside round 42).
				who = "a witness policy changed, replicas configured with different witness policies, or someone with write access to the log's database"
			}
			then := "the signer writes it back"
			if good == nil {
				then = "the signer's next cosigned checkpoint replaces it"
			}
			c.log.Error("ALERT audit log: "+fault+" ("+who+"); "+then, "size_column", row.size, "last_good_size", goodSize)
		}
		if good != nil && c.write(ctx, row, good.size, good.note) {
			row = witnessedRow{note: good.note, size: good.size, found: true}
			fault = ""
		}
	} else {
		c.alerted = ""
	}
	now := time.Now()
	if now.Before(c.retryAt) {
		return
	}
	tctx, cancel := context.WithTimeout(ctx, rowRead)
	cp, err := c.l.reader.ReadCheckpoint(tctx)
	cancel()
	if err != nil || !signedBy(c.signer, cp) {
		return // none yet, or the row is not the log key's (the watch says so)
	}
	size, ok := checkpointSize(cp)
	if !ok || (good != nil && size <= good.size && fault == "") {
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
	if err != nil {
		c.failures++
		if c.pubFailed != nil {
			c.pubFailed.Inc()
		}
		wait := publishBackoff(time.Since(now), c.failures)
		c.retryAt = time.Now().Add(wait)
		c.log.Warn("audit log: a checkpoint's witness round failed (no quorum of cosignatures); appends go on, the published checkpoint waits; the next round",
			"size", size, "failures_in_a_row", c.failures, "attempt", time.Since(now).Round(time.Millisecond), "wait", wait, "err", err)
		return
	}
	if c.failures > 0 {
		c.log.Info("audit log: witnesses cosign again", "size", size)
	}
	c.failures, c.retryAt = 0, time.Time{}
	if (good == nil || size >= good.size) && c.write(ctx, row, size, out) {
		c.l.checkWitnessed(out) // the largest good one now
	}
}

// write replaces the witnessed row read as old with cp (of size) if the row still holds
// what was read: a compare-and-set, so that a replica that just lost the signer lock
// cannot put its checkpoint over a newer signer's. It reports whether the row changed.
func (c *cosigner) write(ctx context.Context, old witnessedRow, size uint64, cp []byte) bool {
	ctx, cancel := context.WithTimeout(ctx, rowRead)
	defer cancel()
	var res sql.Result
	var err error
	if old.found {
		res, err = c.l.db.ExecContext(ctx, "UPDATE `"+witnessedTable+"` SET `size` = ?, `note` = ? WHERE `id` = 0 AND `size` = ? AND `note` = ?", size, cp, old.size, old.note)
	} else {
		res, err = c.l.db.ExecContext(ctx, "INSERT IGNORE INTO `"+witnessedTable+"` (`id`, `size`, `note`) VALUES (0, ?, ?)", size, cp)
	}
	if err != nil {
		c.log.Warn("audit log: the witnessed checkpoint could not be written; the next round tries again", "size", size, "err", err)
		return false
	}
	n, err := res.RowsAffected()
	return err == nil && n == 1
}

// readWitnessedRow reads the witnessed row (found false: none), bounded by rowRead.
func readWitnessedRow(ctx context.Context, l *Log) (witnessedRow, error) {
	ctx, cancel := context.WithTimeout(ctx, rowRead)
	defer cancel()
	var r witnessedRow
	err := l.db.QueryRowContext(ctx, "SELECT `size`, `note` FROM `"+witnessedTable+"` WHERE `id` = 0").Scan(&r.size, &r.note)
	if errors.Is(err, sql.ErrNoRows) {
		return r, nil
	}
	r.found = err == nil
	return r, err
}

// readWitnessed is the witnessed row's note (os.ErrNotExist: no row).
func readWitnessed(ctx context.Context, l *Log) ([]byte, error) {
	r, err := readWitnessedRow(ctx, l)
	if err == nil && !r.found {
		err = os.ErrNotExist
	}
	return r.note, err
}

// readSigned is the witness round's "old" checkpoint (the size the witnesses last
// cosigned): the largest good witnessed checkpoint (anything else: none, and the
// witnesses say which size they hold).
func (c *cosigner) readSigned(context.Context) ([]byte, error) {
	if good := c.l.goodCP.Load(); good != nil {
		return good.note, nil
	}
	return nil, os.ErrNotExist
}

// servedCheckpoint is the checkpoint a shared log with witnesses gives outsiders: the
// witnessed row's if it is good (checkWitnessed), otherwise the largest good one this
// replica has seen (an insider's row — uncosigned, older, removed — is never served; the
// signer puts the row back, and the watch alerts).
func (l *Log) servedCheckpoint(ctx context.Context) ([]byte, error) {
	cp, err := readWitnessed(ctx, l)
	if err == nil && l.checkWitnessed(cp) == nil {
		return cp, nil
	}
	if good := l.goodCP.Load(); good != nil && (err == nil || errors.Is(err, os.ErrNotExist)) {
		return good.note, nil
	}
	if err == nil {
		err = os.ErrNotExist
	}
	return nil, err
}

// checkWitnessed says what is wrong with cp, read from the witnessed row, for this replica
// (nil: nothing, and it is kept as the largest good one seen): a note the log key did not
// sign, one without the witness policy met, or a tree smaller than one seen good before.
func (l *Log) checkWitnessed(cp []byte) error {
	switch {
	case !signedBy(l.signer.Signer, cp):
		return errors.New("the witnessed checkpoint is not signed by the log key")
	case !l.witnesses.Satisfied(cp):
		return errWitnessPolicy
	}
	n, ok := checkpointSize(cp)
	if !ok {
		return errors.New("the witnessed checkpoint has no tree size")
	}
	for {
		good := l.goodCP.Load()
		if good != nil && n < good.size {
			return fmt.Errorf("the witnessed checkpoint went back to an older tree (%d entries after %d)", n, good.size)
		}
		if good != nil && n == good.size || l.goodCP.CompareAndSwap(good, &goodCheckpoint{size: n, note: cp}) {
			return nil
		}
	}
}

var errWitnessPolicy = errors.New("the witnessed checkpoint does not meet the witness policy")

// goodCheckpoint is the largest good witnessed checkpoint a replica has seen.
type goodCheckpoint struct {
	size uint64
	note []byte
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
