package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"slices"
	"strings"
)

// Copied log entries. An entry's bytes are unique in an honest log (each carries its own
// time to the nanosecond; a batch entry names its records' bundle by their hash), but a
// byte copy of an authentic entry passes every check an entry gets — its entry MAC binds
// it to the log, not to its position — so someone who can write the log's database can
// append one, and a batch folded again after an append whose outcome was lost is one too.
// A copy says nothing new; counted as what it claims to be, it would count a batch's
// requests, or a security event, twice. So the index keeps each entry's digest
// (audit_entry_digests) and lists an entry whose bytes repeat an earlier entry's under
// KindCopiedEntry with no principal and no decision; a copied batch's records are not
// indexed again. The indexer (audit.Log) decides, with AuditDigests; IndexAudit stores the
// digests it is given.

// KindCopiedEntry is the kind under which the index lists a copy (audit.KindCopiedEntry).
const KindCopiedEntry = "audit.copied_entry"

// EntryDigest is what the index compares entries by: SHA-256 of their bytes.
func EntryDigest(raw []byte) [32]byte { return sha256.Sum256(raw) }

// digestRows is how many digests one statement carries.
const digestRows = 256

// AuditDigests returns, for each of digests already in the index, the lowest index of an
// entry with those bytes.
func (s *sqlStore) AuditDigests(ctx context.Context, digests [][32]byte) (map[[32]byte]uint64, error) {
	out := map[[32]byte]uint64{}
	for chunk := range slices.Chunk(digests, digestRows) {
		args := make([]any, len(chunk))
		for i := range chunk {
			args[i] = chunk[i][:]
		}
		q := `SELECT digest, MIN(idx) FROM audit_entry_digests WHERE digest IN (` +
			strings.TrimSuffix(strings.Repeat("?, ", len(chunk)), ", ") + `) GROUP BY digest`
		rows, err := s.db.QueryContext(ctx, s.q(q), args...)
		if err != nil {
			return nil, fmt.Errorf("store: audit entry digests: %w", err)
		}
		for rows.Next() {
			var d []byte
			var idx int64
			if err := rows.Scan(&d, &idx); err != nil {
				rows.Close()
				return nil, fmt.Errorf("store: audit entry digests: %w", err)
			}
			if len(d) == 32 {
				out[[32]byte(d)] = uint64(idx)
			}
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("store: audit entry digests: %w", err)
		}
	}
	return out, nil
}

// indexDigests stores the digests of the entries among evs that carry one.
func (s *sqlStore) indexDigests(ctx context.Context, tx *sql.Tx, evs []AuditEvent) error {
	args := make([]any, 0, 2*digestRows)
	n := 0
	flush := func() error {
		if n == 0 {
			return nil
		}
		q := `INSERT INTO audit_entry_digests (idx, digest) VALUES ` +
			strings.TrimSuffix(strings.Repeat("(?, ?), ", n), ", ") + ` ON CONFLICT (idx) DO NOTHING`
		_, err := tx.ExecContext(ctx, s.q(q), args...)
		args, n = args[:0], 0
		return err
	}
	for _, e := range evs {
		if len(e.Digest) != 32 || isRecordIndex(e.Index) {
			continue
		}
		args, n = append(args, int64(e.Index), e.Digest), n+1
		if n == digestRows {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// backfillDigests gives the entries indexed before audit_entry_digests existed their
// digests, and lists the copies among them as copies (migration 16).
func (s *sqlStore) backfillDigests(ctx context.Context, tx *sql.Tx) error {
	rows, err := tx.QueryContext(ctx, `SELECT idx, raw FROM audit_events WHERE idx < 4611686018427387904 ORDER BY idx`)
	if err != nil {
		return err
	}
	var evs []AuditEvent
	var copies []int64
	first := map[[32]byte]bool{}
	for rows.Next() {
		var idx int64
		var raw []byte
		if err := rows.Scan(&idx, &raw); err != nil {
			rows.Close()
			return err
		}
		d := EntryDigest(raw)
		if first[d] {
			copies = append(copies, idx)
		}
		first[d] = true
		evs = append(evs, AuditEvent{Index: uint64(idx), Digest: d[:]})
	}
	if err := rows.Close(); err != nil {
		return err
	}
	if err := s.indexDigests(ctx, tx, evs); err != nil {
		return err
	}
	for _, idx := range copies {
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE audit_events SET kind = ?, principal = '', decision = '' WHERE idx = ?`), KindCopiedEntry, idx); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM audit_record_groups WHERE entry = ?`), idx); err != nil {
			return err
		}
		// Records that earlier versions indexed one row each, under the copy's entry.
		first := int64(recordBit | uint64(idx)<<recordShift)
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM audit_events WHERE idx >= ? AND idx < ?`), first, first+1<<recordShift); err != nil {
			return err
		}
	}
	return nil
}

// ForgetAudit removes from the index every entry from index from on, their request records
// and their digests: the log's tail was rebuilt (audit.Log.Repair), and the index reads it
// again from the log.
func (s *sqlStore) ForgetAudit(ctx context.Context, from uint64) error {
	records := int64(recordBit | from<<recordShift) // the first record of entry from
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for _, st := range []struct {
			q   string
			arg int64
		}{
			{`DELETE FROM audit_events WHERE idx >= ? AND idx < 4611686018427387904`, int64(from)},
			{`DELETE FROM audit_events WHERE idx >= ?`, records}, // records indexed one row each by earlier versions
			{`DELETE FROM audit_record_groups WHERE entry >= ?`, int64(from)},
			{`DELETE FROM audit_entry_digests WHERE idx >= ?`, int64(from)},
		} {
			if _, err := tx.ExecContext(ctx, s.q(st.q), st.arg); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: forget audit entries from %d: %w", from, err)
	}
	return nil
}

// AuditDigestsAt returns the digests the index keeps for entries idxs (those it has).
func (s *sqlStore) AuditDigestsAt(ctx context.Context, idxs []uint64) (map[uint64][32]byte, error) {
	out := map[uint64][32]byte{}
	for chunk := range slices.Chunk(idxs, digestRows) {
		args := make([]any, len(chunk))
		for i, x := range chunk {
			args[i] = int64(x)
		}
		rows, err := s.db.QueryContext(ctx, s.q(`SELECT idx, digest FROM audit_entry_digests WHERE idx IN (`+
			strings.TrimSuffix(strings.Repeat("?, ", len(chunk)), ", ")+`)`), args...)
		if err != nil {
			return nil, fmt.Errorf("store: audit entry digests: %w", err)
		}
		for rows.Next() {
			var idx int64
			var d []byte
			if err := rows.Scan(&idx, &d); err != nil {
				rows.Close()
				return nil, fmt.Errorf("store: audit entry digests: %w", err)
			}
			if len(d) == 32 {
				out[uint64(idx)] = [32]byte(d)
			}
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("store: audit entry digests: %w", err)
		}
	}
	return out, nil
}
