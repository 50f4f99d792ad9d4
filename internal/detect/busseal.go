package detect

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// The records a RedisBus writes are sealed: whoever can read or write Redis (its operator, a
// stolen password, another tenant of a shared instance) must neither learn from them nor
// make the replicas act on what no replica saw. Unsealed, a record carried the principal,
// the model, the request's parameters and its prompt's features under fixed, unkeyed hashes
// (a guessed prompt confirmed by its exact hash; a client's /24 found among 2^24); and a
// record written by hand was detected on like any other, so a forged logit sweep
// suspended the principal it named.
//
// Each record is sealed with XChaCha20-Poly1305 (random 24-byte nonces: no nonce
// bookkeeping across replicas and restarts) under a key every replica derives from the
// audit key, with the stream's name and the record's header as associated data:
//
//	record = version (1) | sealed at (8, Unix ns, big-endian) | nonce (24) | ciphertext
//
// What Redis can still do is drop, delay or repeat records. A repeated one is refused: it
// must have been sealed within busMaxDelay of its stream entry's time (Redis names entries
// by its own clock, and an entry cannot be added before the stream's last) or of the
// reader's clock (a stream whose clock was moved ahead by an entry far in the future still
// carries fresh records), and a nonce seen in the last 2·busMaxDelay of the reader's time
// is not taken twice. So a replica's clock must be within busMaxDelay of Redis's or of the
// reader's. Refused records are counted
// (strongroom_detect_bus_rejected_total) and raise an ALERT line at most every
// busWarnEvery.

const (
	sealVersion  = 1
	sealHeader   = 1 + 8
	sealOverhead = sealHeader + chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead
	// busMaxDelay bounds the time between a record's seal and its stream entry (and the
	// clock difference between a replica and Redis).
	busMaxDelay  = 30 * time.Second
	busWarnEvery = 10 * time.Second
)

// sealer seals and opens one stream's records and remembers the nonces of recent ones.
type sealer struct {
	aead     cipher.AEAD
	claimKey []byte // names claims (claimName)
	stream   string

	mu        sync.Mutex
	cur, prev map[uint64]struct{} // nonces (their first 8 bytes) of the last two generations
	genStart  int64               // the time (Unix ms) at which cur began

	rejected atomic.Int64
	lastWarn atomic.Int64 // Unix ns of the last ALERT line
	log      *slog.Logger
}

func newSealer(key []byte, stream string, log *slog.Logger) (*sealer, error) {
	if len(key) != 32 {
		return nil, errors.New("detect bus: the sealing key must be 32 bytes")
	}
	enc := subKey(key, "seal")
	defer clear(enc)
	aead, err := chacha20poly1305.NewX(enc)
	if err != nil {
		return nil, fmt.Errorf("detect bus: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &sealer{aead: aead, claimKey: subKey(key, "claim"), stream: stream, log: log,
		cur: map[uint64]struct{}{}, prev: map[uint64]struct{}{}}, nil
}

func subKey(key []byte, use string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("strongroom/detect-bus/" + use))
	return m.Sum(nil)
}

// seal returns plain sealed at now.
func (s *sealer) seal(plain []byte, now time.Time) []byte {
	out := make([]byte, sealHeader+chacha20poly1305.NonceSizeX, sealOverhead+len(plain))
	out[0] = sealVersion
	binary.BigEndian.PutUint64(out[1:sealHeader], uint64(now.UnixNano()))
	nonce := out[sealHeader:]
	rand.Read(nonce)
	return s.aead.Seal(out, nonce, plain, s.aad(out[:sealHeader]))
}

func (s *sealer) aad(header []byte) []byte {
	return append([]byte(s.stream+"\x00"), header...)
}

// open checks rec, read at the stream entry id at now, and returns its plaintext.
func (s *sealer) open(rec []byte, id string, now time.Time) ([]byte, error) {
	if len(rec) < sealOverhead || rec[0] != sealVersion {
		return nil, errors.New("not a sealed record")
	}
	nonce := rec[sealHeader : sealHeader+chacha20poly1305.NonceSizeX]
	plain, err := s.aead.Open(nil, nonce, rec[sealHeader+chacha20poly1305.NonceSizeX:], s.aad(rec[:sealHeader]))
	if err != nil {
		return nil, errors.New("not sealed under this fleet's key (forged, altered, or another deployment's)")
	}
	ms, ok := entryTime(id)
	if !ok {
		return nil, fmt.Errorf("stream entry id %q is not Redis's", id)
	}
	// Sealed within busMaxDelay of its entry (Redis's clock) or of now (this replica's:
	// a stream whose clock someone moved ahead still carries fresh records).
	sealed := time.Unix(0, int64(binary.BigEndian.Uint64(rec[1:sealHeader])))
	within := func(d time.Duration) bool { return d <= busMaxDelay && d >= -busMaxDelay }
	if late := time.UnixMilli(ms).Sub(sealed); !within(late) && !within(now.Sub(sealed)) {
		return nil, fmt.Errorf("appended %v after its seal (more than %v: a repeated record, or a replica's clock off Redis's)", late.Round(time.Millisecond), busMaxDelay)
	}
	n := binary.BigEndian.Uint64(nonce)
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := now.UnixMilli(); t-s.genStart > 2*busMaxDelay.Milliseconds() {
		s.prev, s.cur, s.genStart = s.cur, make(map[uint64]struct{}, len(s.cur)), t
	}
	_, a := s.cur[n]
	_, b := s.prev[n]
	if a || b {
		return nil, errors.New("a record the stream already held (repeated)")
	}
	s.cur[n] = struct{}{}
	return plain, nil
}

// refuse counts a refused record and says so, at most every busWarnEvery.
func (s *sealer) refuse(id string, err error) {
	n := s.rejected.Add(1)
	now := time.Now().UnixNano()
	if last := s.lastWarn.Load(); now-last >= int64(busWarnEvery) && s.lastWarn.CompareAndSwap(last, now) {
		s.log.Error("ALERT detect bus: a record refused (someone with access to Redis wrote or repeated it, or the replicas' keys or clocks differ)",
			"stream", s.stream, "entry", id, "err", err, "refused_total", n)
	}
}

// claimName is a claim's key in Redis: keyed, so that neither the principal nor the alert
// can be read from it, nor a claim taken ahead of the replicas to keep an alert unrecorded.
func (s *sealer) claimName(key string) string {
	m := hmac.New(sha256.New, s.claimKey)
	m.Write([]byte(key))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// entryTime is the time (Unix ms) in a Redis stream entry id ("<ms>-<seq>").
func entryTime(id string) (int64, bool) {
	ms, seq, ok := strings.Cut(id, "-")
	if !ok {
		return 0, false
	}
	t, err := strconv.ParseInt(ms, 10, 64)
	if _, err2 := strconv.ParseUint(seq, 10, 64); err != nil || err2 != nil || t < 0 {
		return 0, false
	}
	return t, true
}
