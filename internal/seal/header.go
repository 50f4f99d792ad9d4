package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Format constants; they never change for version 1.
const (
	HeaderSize       = 92
	Version          = 1
	AlgAES256GCM     = 1
	MinChunkSize     = 4096
	MaxChunkSize     = 16 << 20
	DefaultChunkSize = 1 << 20
	KeySize          = 32
	tagSize          = 16
)

var magic = [4]byte{'S', 'R', 'S', 'L'}

// Sentinel errors. Every authentication failure wraps ErrIntegrity.
var (
	ErrIntegrity = errors.New("integrity check failed")
	ErrFormat    = errors.New("not a strongroom sealed file or unsupported format")
	ErrKey       = fmt.Errorf("%w: key commitment mismatch (wrong key, wrong file context or altered header)", ErrIntegrity)
	ErrAuth      = fmt.Errorf("%w: chunk authentication failed (altered, reordered, duplicated or misplaced chunk)", ErrIntegrity)
	ErrTruncated = fmt.Errorf("%w: file truncated", ErrIntegrity)
)

// Error reports which file and which chunk failed. Chunk is -1 for the header.
type Error struct {
	File  string
	Chunk int64
	Err   error
}

func (e *Error) Error() string {
	where := "header"
	if e.Chunk >= 0 {
		where = fmt.Sprintf("chunk %d", e.Chunk)
	}
	return fmt.Sprintf("%s: %s: %v", e.File, where, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Header is the decoded fixed header of a sealed file.
type Header struct {
	ChunkSize  int
	KeyID      [16]byte
	Salt       [32]byte
	Commitment [32]byte
}

// ParseHeader decodes and range-checks a header. It does not check the commitment,
// which needs the key.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("%w: header is %d bytes, want %d", ErrFormat, len(b), HeaderSize)
	}
	if [4]byte(b[0:4]) != magic {
		return h, fmt.Errorf("%w: bad magic", ErrFormat)
	}
	if b[4] != Version {
		return h, fmt.Errorf("%w: version %d", ErrFormat, b[4])
	}
	if b[5] != AlgAES256GCM {
		return h, fmt.Errorf("%w: algorithm %d", ErrFormat, b[5])
	}
	if b[6] != 0 || b[7] != 0 {
		return h, fmt.Errorf("%w: reserved bytes set", ErrFormat)
	}
	cs := binary.BigEndian.Uint32(b[8:12])
	if cs < MinChunkSize || cs > MaxChunkSize {
		return h, fmt.Errorf("%w: chunk size %d out of range", ErrFormat, cs)
	}
	h.ChunkSize = int(cs)
	h.KeyID = [16]byte(b[12:28])
	h.Salt = [32]byte(b[28:60])
	h.Commitment = [32]byte(b[60:92])
	return h, nil
}

// Marshal encodes the header; the inverse of ParseHeader.
func (h *Header) Marshal() []byte {
	b := make([]byte, HeaderSize)
	h.marshalUnsigned(b)
	copy(b[60:92], h.Commitment[:])
	return b
}

func (h *Header) marshalUnsigned(b []byte) {
	copy(b[0:4], magic[:])
	b[4] = Version
	b[5] = AlgAES256GCM
	binary.BigEndian.PutUint32(b[8:12], uint32(h.ChunkSize))
	copy(b[12:28], h.KeyID[:])
	copy(b[28:60], h.Salt[:])
}

// fileKeys derives the payload AEAD and the commitment for a header under dek and context.
// Derived key bytes are zeroed before returning.
func fileKeys(dek []byte, h *Header, context string) (cipher.AEAD, [32]byte, error) {
	var commit [32]byte
	if len(dek) != KeySize {
		return nil, commit, fmt.Errorf("data key is %d bytes, want %d", len(dek), KeySize)
	}
	kp, err := hkdf.Key(sha256.New, dek, h.Salt[:], "strongroom/seal/v1/payload\x00"+context, KeySize)
	if err != nil {
		return nil, commit, err
	}
	defer clear(kp)
	kc, err := hkdf.Key(sha256.New, dek, h.Salt[:], "strongroom/seal/v1/commit\x00"+context, KeySize)
	if err != nil {
		return nil, commit, err
	}
	defer clear(kc)
	block, err := aes.NewCipher(kp)
	if err != nil {
		return nil, commit, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, commit, err
	}
	var unsigned [60]byte
	h.marshalUnsigned(unsigned[:])
	mac := hmac.New(sha256.New, kc)
	mac.Write(unsigned[:])
	mac.Sum(commit[:0])
	return aead, commit, nil
}

// nonce returns the STREAM nonce for chunk i.
func nonce(i uint64, final bool) []byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[3:11], i)
	if final {
		n[11] = 1
	}
	return n[:]
}
