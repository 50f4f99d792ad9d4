package detect

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The records a RedisBus writes are sealed: whoever can read or write Redis (its operator, a
// stolen password, another tenant of a shared instance) must neither learn from them nor
// make the replicas act on what no replica saw. Unsealed, a record carried the principal,
// the model, the request's parameters and its prompt's features under fixed, unkeyed hashes
// (a guessed prompt confirmed by its exact hash; a client's /24 found among 2^24); and a
// record written by hand was detected on like any other, so a forged logit sweep
// suspended the principal it named.
//
// Each publisher (a RedisBus: one per gateway process) seals under a session key of its
// own, AES-256-GCM keyed by HMAC(bus key, a random 16-byte salt), with its records counted
// from 1 as their nonces: no nonce repeats under a key, and no random nonce a record. The
// session's salt and counter travel in the record; the key is derived from the audit key,
// which every replica holds alike:
//
//	record = version (1) | sealed at (8, Unix ns) | salt (16) | counter (8) | ciphertext+tag
//
// with the stream's name and the header (everything before the ciphertext) as associated
// data. Half the CPU of XChaCha20-Poly1305 with random nonces a record (0.5 against 1.1
// µs to seal and open 450 bytes here), and replays cost no memory a record: a publisher's
// records reach the stream in its order (one goroutine, pipelined XADDs), so a reader
// takes a session's counter only upward.
//
// What Redis can still do is drop, delay or repeat records. A repeated one is refused: its
// counter is not above its session's last, and a record must have been sealed within
// busMaxDelay of its stream entry's time (Redis names entries by its own clock, and an
// entry cannot be added before the stream's last) or of the reader's clock (a stream whose
// clock was moved ahead by an entry far in the future still carries fresh records) — so a
// session forgotten after 2·busMaxDelay without a record cannot be replayed either, and a
// replica's clock must be within busMaxDelay of Redis's or of the reader's. Refused records
// are counted (strongroom_detect_bus_rejected_total) and raise an ALERT line at most every
// busWarnEvery.

const (
	sealVersion = 2
	sealSalt    = 16
	sealHeader  = 1 + 8 + sealSalt + 8
	sealTag     = 16
	// busMaxDelay bounds the time between a record's seal and its stream entry (and the
	// clock difference between a replica and Redis or the reader).
	busMaxDelay  = 30 * time.Second
	busWarnEvery = 10 * time.Second
	// busHistoryAge: how old a record sealed before a reader started may be when it reads it
	// (a starting replica's view of the others' recent traffic, fed to its engine quietly).
	busHistoryAge = 15 * time.Minute
)

// sealer seals one publisher's records and opens every publisher's on one stream.
type sealer struct {
	key      []byte // the bus key's sealing subkey: sessions' keys derive from it
	claimKey []byte // names claims (claimName)
	stream   string
	aadHead  []byte // the stream's name and a 0: every record's associated data begins so

	out     cipher.AEAD // this publisher's session
	salt    [sealSalt]byte
	counter atomic.Uint64

	mu       sync.Mutex
	sessions map[[sealSalt]byte]*readSession // publishers whose records opened

	started time.Time // records sealed before it are history (open)

	rejected atomic.Int64
	warn     every // the ALERT line of refused records
	log      *slog.Logger
}

// readSession is what a reader knows of one publisher's session.
type readSession struct {
	aead cipher.AEAD
	last uint64    // the highest counter taken
	seen time.Time // when a record of it last opened (reader's clock)
}

func newSealer(key []byte, stream string, log *slog.Logger) (*sealer, error) {
	if len(key) != 32 {
		return nil, errors.New("detect bus: the sealing key must be 32 bytes")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &sealer{key: subKey(key, "seal"), claimKey: subKey(key, "claim"), stream: stream, aadHead: []byte(stream + "\x00"), log: log,
		sessions: map[[sealSalt]byte]*readSession{}, started: time.Now()}
	rand.Read(s.salt[:])
	var err error
	if s.out, err = s.session(s.salt[:]); err != nil {
		return nil, err
	}
	return s, nil
}

func subKey(key []byte, use string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("strongroom/detect-bus/" + use))
	return m.Sum(nil)
}

// session is the AEAD of the session named by salt.
func (s *sealer) session(salt []byte) (cipher.AEAD, error) {
	m := hmac.New(sha256.New, s.key)
	m.Write(salt)
	k := m.Sum(nil)
	defer clear(k)
	c, err := aes.NewCipher(k)
	if err != nil {
		return nil, fmt.Errorf("detect bus: %w", err)
	}
	return cipher.NewGCM(c)
}

// seal returns plain sealed at now, this session's next record.
// sealPad: a record's plaintext is padded with JSON whitespace to a multiple of it, so that a
// record's length tells Redis's reader little (a principal's or a model's name length, a
// prompt's feature counts) — nothing within a 256-byte step. open takes the padding off (a
// reader of an older version decodes it as JSON's trailing whitespace).
const sealPad = 256

func (s *sealer) seal(plain []byte, now time.Time) []byte {
	n := (len(plain) + sealPad - 1) / sealPad * sealPad
	out := make([]byte, sealHeader+n, sealHeader+n+sealTag)
	out[0] = sealVersion
	binary.BigEndian.PutUint64(out[1:9], uint64(now.UnixNano()))
	copy(out[9:], s.salt[:])
	binary.BigEndian.PutUint64(out[9+sealSalt:], s.counter.Add(1))
	body := out[sealHeader:]
	for i := copy(body, plain); i < n; i++ {
		body[i] = ' '
	}
	// In place: the ciphertext takes the plaintext's bytes (GCM allows the exact overlap).
	return s.out.Seal(out[:sealHeader], nonceOf(out), body, s.aad(out[:sealHeader]))
}

// nonceOf is a record's GCM nonce: its counter, zero-padded to 12 bytes.
func nonceOf(rec []byte) []byte {
	var n [12]byte
	copy(n[4:], rec[9+sealSalt:sealHeader])
	return n[:]
}

func (s *sealer) aad(header []byte) []byte {
	return append(s.aadHead[:len(s.aadHead):len(s.aadHead)], header...)
}

// open checks rec, read at the stream entry id at now, and returns its plaintext.
func (s *sealer) open(rec []byte, id string, now time.Time) ([]byte, error) {
	if len(rec) < sealHeader+sealTag || rec[0] != sealVersion {
		return nil, errors.New("not a sealed record")
	}
	ms, ok := entryTime(id)
	if !ok {
		return nil, fmt.Errorf("stream entry id %q is not Redis's", id)
	}
	// Sealed within busMaxDelay of now (this replica's clock); or history: sealed before this
	// reader started, at most busHistoryAge before, and within busMaxDelay of its entry
	// (Redis's clock). Redis names the entries, so the entry's time alone is its word: a
	// lying Redis had replayed records sealed an hour before under entry ids of their seal
	// time, and every reader that did not know their session took them (outside round 60).
	sealed := time.Unix(0, int64(binary.BigEndian.Uint64(rec[1:9])))
	within := func(d time.Duration) bool { return d <= busMaxDelay && d >= -busMaxDelay }
	late := time.UnixMilli(ms).Sub(sealed)
	history := sealed.Before(s.started) && s.started.Sub(sealed) <= busHistoryAge && within(late)
	fresh := within(now.Sub(sealed)) || history
	var salt [sealSalt]byte
	copy(salt[:], rec[9:])
	n := binary.BigEndian.Uint64(rec[9+sealSalt:])
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.sessions[salt]
	var aead cipher.AEAD
	if rs != nil {
		aead = rs.aead
	} else if fresh { // an unknown session's key is derived only for a record that may count
		var err error
		if aead, err = s.session(salt[:]); err != nil {
			return nil, err
		}
	}
	if aead == nil {
		return nil, staleRecord(now, sealed)
	}
	plain, err := aead.Open(nil, nonceOf(rec), rec[sealHeader:], s.aad(rec[:sealHeader]))
	switch {
	case err != nil:
		return nil, errors.New("not sealed under this fleet's key (forged, altered, or another deployment's)")
	case !fresh:
		return nil, staleRecord(now, sealed)
	case rs != nil && n <= rs.last:
		return nil, fmt.Errorf("record %d of its publisher after record %d (repeated)", n, rs.last)
	}
	if rs == nil {
		s.forget(now)
		rs = &readSession{aead: aead}
		s.sessions[salt] = rs
	}
	rs.last, rs.seen = n, now
	return bytes.TrimRight(plain, " "), nil // the padding (seal)
}

func staleRecord(now, sealed time.Time) error {
	return fmt.Errorf("sealed %v before it was read (more than %v, and not this reader's history of the last %v: a repeated record, a reader that lags, or a replica's clock off this one's)",
		now.Sub(sealed).Round(time.Millisecond), busMaxDelay, busHistoryAge)
}

// forget drops the sessions without a record for 2·busMaxDelay: a record of theirs sealed
// that long ago is refused as late. Called as a session is added, so the map holds at
// most the publishers of the last minute and one more.
func (s *sealer) forget(now time.Time) {
	for salt, rs := range s.sessions {
		if now.Sub(rs.seen) > 2*busMaxDelay {
			delete(s.sessions, salt)
		}
	}
}

// refuse counts a refused record and says so, at most every busWarnEvery.
func (s *sealer) refuse(id string, err error) {
	n := s.rejected.Add(1)
	if s.warn.due(time.Now(), busWarnEvery) {
		s.log.Error("ALERT detect bus: a record refused (someone with access to Redis wrote or repeated it, or the replicas' keys or clocks differ)",
			"stream", s.stream, "entry", id, "err", err, "refused_total", n)
	}
}

// every lets something happen at most once a period, whichever goroutines ask.
type every struct{ last atomic.Int64 } // Unix ns of the last time it was due

// due reports whether period has passed since it was last due, and if so, it is due now.
func (e *every) due(now time.Time, period time.Duration) bool {
	last, t := e.last.Load(), now.UnixNano()
	return t-last >= int64(period) && e.last.CompareAndSwap(last, t)
}

// claimName is a claim's key in Redis: keyed, so that neither the principal nor the alert
// can be read from it, nor a claim taken ahead of the replicas to keep an alert unrecorded.
func (s *sealer) claimName(key string) string {
	m := hmac.New(sha256.New, s.claimKey)
	m.Write([]byte(key))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// entryTime is the time (Unix ms) in a Redis stream entry id.
func entryTime(id string) (int64, bool) {
	ms, _, ok := parseID(id)
	return int64(ms), ok && ms <= math.MaxInt64
}

// parseID reads a Redis stream entry id, "<ms>-<seq>".
func parseID(id string) (ms, seq uint64, ok bool) {
	m, q, ok := strings.Cut(id, "-")
	if !ok {
		return 0, 0, false
	}
	ms, err1 := strconv.ParseUint(m, 10, 64)
	seq, err2 := strconv.ParseUint(q, 10, 64)
	return ms, seq, err1 == nil && err2 == nil
}
