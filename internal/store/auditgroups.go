package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Request records are indexed in groups. A batched request record's index (audit.RecordIndex)
// has bit 62 set, its batch entry in bits 16–61 and its position in the batch below; such
// records are many, matter little alone, and are only looked up by principal, kind, time and
// index. One SQL row per record cost the gateway ~15–20 µs of CPU per request in SQLite, more
// than the rest of the log together, so the index keeps them one row per (batch entry,
// principal, kind): each record's position, time and decision in `meta`, their canonical
// bytes, in the same order, in `raws`. SearchAudit, AuditHistogram and AuditPrincipalsPerDay
// expand the groups, so callers still see one AuditEvent per record. Entries (and request
// records indexed one row each by earlier versions) stay in audit_events.
//
// Once the log has given the store a RecordSource (audit.Open does), groups keep no bytes
// of their own (`bundled` 1, an empty `raws`; `meta` still has each record's length): the records are in
// their batch's bundle already, and writing them into the index a second time was most of
// the index's cost (copies into SQLite's pages and its WAL). A search fills them in from
// the bundle, which the source checks against the batch's log entry, so what a search
// returns is what the log holds.

// RecordSource gives the records of a batch — their canonical bytes, in batch order — from
// the batch's log entry (its canonical bytes). An error fails the search that needed them.
type RecordSource func(ctx context.Context, batchEntry []byte) ([][]byte, error)

// SetRecordSource makes the index keep request records' bytes out of its groups and read
// them through src. Set it before the first IndexAudit; it applies to groups indexed after.
func (s *sqlStore) SetRecordSource(src RecordSource) { s.records.Store(&src) }

const (
	recordBit   = 1 << 62
	recordShift = 16
	// groupRows is how many groups one INSERT carries (9 parameters each).
	groupRows = 64
)

func isRecordIndex(idx uint64) bool { return idx&recordBit != 0 }
func recordEntry(idx uint64) uint64 { return (idx &^ recordBit) >> recordShift }

// recordGroup is one row of audit_record_groups.
type recordGroup struct {
	entry           uint64
	principal, kind string
	tsMin, tsMax    int64
	n               int
	size            int // of raws
	meta, raws      []byte
	bundled         bool // raws are not kept: they are in the batch's bundle
}

// groupRecords gathers records (RecordIndex numbers) into rows, in order of first appearance;
// with raws false, the rows keep no record bytes (an empty raws, see RecordSource).
func groupRecords(recs []AuditEvent, raws bool) []*recordGroup {
	type key struct {
		entry           uint64
		principal, kind string
	}
	var out []*recordGroup
	at := map[key]*recordGroup{}
	of := make([]*recordGroup, len(recs)) // each record's group, for the second pass
	for i, e := range recs {
		k := key{recordEntry(e.Index), e.Principal, e.Kind}
		g := at[k]
		ts := e.TS.UnixNano()
		if g == nil {
			g = &recordGroup{entry: k.entry, principal: e.Principal, kind: e.Kind, tsMin: ts, tsMax: ts, bundled: !raws}
			at[k] = g
			out = append(out, g)
		}
		g.tsMin, g.tsMax = min(g.tsMin, ts), max(g.tsMax, ts)
		g.n++
		if raws {
			g.size += len(e.Raw)
		}
		of[i] = g
	}
	for _, g := range out {
		g.meta, g.raws = make([]byte, 0, g.n*24), make([]byte, 0, g.size)
	}
	// meta stores times relative to the group's earliest (non-negative, short varints).
	for i, e := range recs {
		g := of[i]
		g.meta = binary.AppendUvarint(g.meta, e.Index&(1<<recordShift-1))
		g.meta = binary.AppendUvarint(g.meta, uint64(e.TS.UnixNano()-g.tsMin))
		g.meta = binary.AppendUvarint(g.meta, uint64(len(e.Decision)))
		g.meta = append(g.meta, e.Decision...)
		g.meta = binary.AppendUvarint(g.meta, uint64(len(e.Raw)))
		if raws {
			g.raws = append(g.raws, e.Raw...)
		}
	}
	return out
}

var errGroup = errors.New("store: damaged request-record group in the audit index")

// eachRecord expands a group row. raws may be nil (the caller needs no Raw, or the group
// keeps none): records then have none, and fn is given each record's length. The group's
// bytes come from our own database, but are checked all the same.
func eachRecord(entry uint64, principal, kind string, tsMin int64, meta, raws []byte, fn func(e AuditEvent, size int)) error {
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(meta)
		if n <= 0 {
			return 0, false
		}
		meta = meta[n:]
		return v, true
	}
	for len(meta) > 0 {
		pos, ok1 := next()
		dt, ok2 := next()
		dl, ok3 := next()
		if !ok1 || !ok2 || !ok3 || pos >= 1<<recordShift || dl > uint64(len(meta)) {
			return errGroup
		}
		dec := string(meta[:dl])
		meta = meta[dl:]
		rl, ok := next()
		if !ok {
			return errGroup
		}
		e := AuditEvent{Index: recordBit | entry<<recordShift | pos, Kind: kind, Principal: principal, Decision: dec}
		e.TS = unixNanoUTC(tsMin + int64(dt))
		if raws != nil {
			if rl > uint64(len(raws)) {
				return errGroup
			}
			e.Raw, raws = raws[:rl:rl], raws[rl:]
		}
		fn(e, int(rl))
	}
	return nil
}

// indexRecordGroups writes records' groups inside an IndexAudit transaction; a group
// already present is skipped (a batch's records are always indexed together).
func (s *sqlStore) indexRecordGroups(ctx context.Context, tx *sql.Tx, recs []AuditEvent) error {
	args := make([]any, 0, 9*groupRows)
	for chunk := range slices.Chunk(groupRecords(recs, s.records.Load() == nil), groupRows) {
		args = args[:0]
		for _, g := range chunk {
			bundled := 0
			if g.bundled {
				bundled = 1
			}
			args = append(args, int64(g.entry), g.principal, g.kind, g.tsMin, g.tsMax, g.n, g.meta, g.raws, bundled)
		}
		q := `INSERT INTO audit_record_groups (entry, principal, kind, ts_min, ts_max, n, meta, raws, bundled) VALUES ` +
			strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?, ?, ?, ?, ?), ", len(chunk)), ", ") +
			` ON CONFLICT (entry, principal, kind) DO NOTHING`
		if _, err := tx.ExecContext(ctx, s.q(q), args...); err != nil {
			return err
		}
	}
	return nil
}

// searchRecords answers q from the record groups: at most q.Limit records, by index in q's
// order. Rows come entry by entry; a batch entry's groups are gathered before its records
// are sorted, so a limit is applied only at an entry's end.
func (s *sqlStore) searchRecords(ctx context.Context, q AuditQuery) ([]AuditEvent, error) {
	where, args := []string{"1 = 1"}, []any{}
	var want map[uint64]bool
	if len(q.Indexes) > 0 {
		want = map[uint64]bool{}
		var marks []string
		for _, x := range q.Indexes {
			if isRecordIndex(x) && !want[x] {
				want[x] = true
				marks, args = append(marks, "?"), append(args, int64(recordEntry(x)))
			}
		}
		if len(want) == 0 {
			return nil, nil
		}
		where = append(where, "entry IN ("+strings.Join(marks, ", ")+")")
	}
	if q.Before > 0 {
		if !isRecordIndex(q.Before) {
			return nil, nil // every record's index is above every entry's
		}
		where, args = append(where, "entry <= ?"), append(args, int64(recordEntry(q.Before)))
	}
	since, until := q.Since.UnixNano(), q.Until.UnixNano()
	if !q.Since.IsZero() {
		where, args = append(where, "ts_max >= ?"), append(args, since)
	}
	if !q.Until.IsZero() {
		where, args = append(where, "ts_min < ?"), append(args, until)
	}
	if q.Principal != "" {
		where, args = append(where, "principal = ?"), append(args, q.Principal)
	}
	if q.Kind != "" {
		where, args = append(where, "kind = ?"), append(args, q.Kind)
	}
	query := `SELECT entry, principal, kind, ts_min, meta, raws, bundled FROM audit_record_groups WHERE ` + strings.Join(where, " AND ") + ` ORDER BY entry`
	if q.Desc {
		query += ` DESC`
	}
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("store: search audit: %w", err)
	}
	defer rows.Close()
	var out, cur []AuditEvent
	flush := func() {
		slices.SortFunc(cur, func(a, b AuditEvent) int { return cmpIndex(a, b, q.Desc) })
		out, cur = append(out, cur...), cur[:0]
	}
	var curEntry int64 = -1
	sizes := map[uint64]int{} // records whose bytes are in their bundle: their length
	keep := func(e AuditEvent, size int) {
		if (want != nil && !want[e.Index]) || (q.Before > 0 && e.Index >= q.Before) ||
			(!q.Since.IsZero() && e.TS.UnixNano() < since) || (!q.Until.IsZero() && e.TS.UnixNano() >= until) {
			return
		}
		if e.Raw == nil {
			sizes[e.Index] = size // the bundle's record must have the indexed length
		}
		cur = append(cur, e)
	}
	for rows.Next() {
		var entry, tsMin int64
		var principal, kind string
		var meta, raws []byte
		var bundled int
		if err := rows.Scan(&entry, &principal, &kind, &tsMin, &meta, &raws, &bundled); err != nil {
			return nil, fmt.Errorf("store: search audit: %w", err)
		}
		if entry != curEntry {
			flush()
			if q.Limit > 0 && len(out) >= q.Limit {
				break
			}
			curEntry = entry
		}
		if bundled != 0 {
			raws = nil // in the batch's bundle (fillRecords)
		} else if raws == nil {
			raws = []byte{} // kept here, all of them empty: not "none"
		}
		if err := eachRecord(uint64(entry), principal, kind, tsMin, meta, raws, keep); err != nil {
			return nil, fmt.Errorf("%w (entry %d)", err, entry)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: search audit: %w", err)
	}
	rows.Close()
	flush()
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	if err := s.fillRecords(ctx, out, sizes); err != nil {
		return nil, err
	}
	return out, nil
}

var errNoRecordSource = errors.New("store: request records' bytes are in the log's bundles, and this store was given no way to read them (audit.Open sets one)")

// fillRecords gives the records that have no Raw theirs, from their batches' bundles.
func (s *sqlStore) fillRecords(ctx context.Context, evs []AuditEvent, sizes map[uint64]int) error {
	var entries []uint64
	seen := map[uint64]bool{}
	for _, e := range evs {
		if n := recordEntry(e.Index); e.Raw == nil && !seen[n] {
			seen[n] = true
			entries = append(entries, n)
		}
	}
	if len(entries) == 0 {
		return nil
	}
	src := s.records.Load()
	if src == nil {
		return errNoRecordSource
	}
	// The batch entries' own bytes, from audit_events (searchEntries returns with no rows
	// open: the source may read the same database).
	batches := map[uint64][][]byte{}
	for chunk := range slices.Chunk(entries, 500) {
		found, err := s.searchEntries(ctx, AuditQuery{Indexes: chunk})
		if err != nil {
			return err
		}
		for _, b := range found {
			recs, err := (*src)(ctx, b.Raw)
			if err != nil {
				return fmt.Errorf("store: search audit: batch entry %d: %w", b.Index, err)
			}
			batches[b.Index] = recs
		}
	}
	for i, e := range evs {
		if e.Raw != nil {
			continue
		}
		recs, ok := batches[recordEntry(e.Index)]
		pos := int(e.Index & (1<<recordShift - 1))
		if !ok || pos >= len(recs) || len(recs[pos]) != sizes[e.Index] {
			return fmt.Errorf("%w (record %d of entry %d is not in its bundle as indexed)", errGroup, pos, recordEntry(e.Index))
		}
		evs[i].Raw = recs[pos][:len(recs[pos]):len(recs[pos])]
	}
	return nil
}

func cmpIndex(a, b AuditEvent, desc bool) int {
	if desc {
		return cmp.Compare(b.Index, a.Index)
	}
	return cmp.Compare(a.Index, b.Index)
}

// mergeByIndex merges two answers sorted in the same order, keeping at most limit (0: all).
// A record in both (indexed one row each by an earlier version, then again in a group:
// only if the index were ever rebuilt over old rows) is kept once.
func mergeByIndex(a, b []AuditEvent, desc bool, limit int) []AuditEvent {
	if len(b) == 0 {
		return a
	}
	if len(a) == 0 {
		return b
	}
	out := make([]AuditEvent, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 && (limit <= 0 || len(out) < limit) {
		switch c := cmpIndex(a[0], b[0], desc); {
		case c == 0:
			out, a, b = append(out, a[0]), a[1:], b[1:]
		case c < 0:
			out, a = append(out, a[0]), a[1:]
		default:
			out, b = append(out, b[0]), b[1:]
		}
	}
	out = append(append(out, a...), b...)
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// eachGroupRecord expands, without their bytes, the records of kind whose group may hold
// records at or after since.
func (s *sqlStore) eachGroupRecord(ctx context.Context, kind string, since int64, fn func(AuditEvent)) error {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT entry, principal, ts_min, meta FROM audit_record_groups WHERE kind = ? AND ts_max >= ?`), kind, since)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var entry, tsMin int64
		var principal string
		var meta []byte
		if err := rows.Scan(&entry, &principal, &tsMin, &meta); err != nil {
			return err
		}
		err := eachRecord(uint64(entry), principal, kind, tsMin, meta, nil, func(e AuditEvent, _ int) {
			if e.TS.UnixNano() >= since {
				fn(e)
			}
		})
		if err != nil {
			return fmt.Errorf("%w (entry %d)", err, entry)
		}
	}
	return rows.Err()
}

// dayKey is a UTC day's "2006-01-02" from a count of days since the epoch.
func dayKey(d int64) string { return unixNanoUTC(d * 86400e9).Format("2006-01-02") }

func unixNanoUTC(n int64) time.Time { return time.Unix(0, n).UTC() }
