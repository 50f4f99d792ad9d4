package fingerprint

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"math"
	"math/rand/v2"
)

// The mark (spec): for each 2-D tensor T of the model (norms and other vectors are left
// alone), a subset of its elements keyed by the model, each element kept with probability
// Fraction (per-element decision from ChaCha8 seeded by HMAC-SHA256(model key, "subset" ‖
// T)); every licensee adds Amplitude·rms(T) times a ±1 sign to each element of the subset,
// the signs drawn in element order from ChaCha8 seeded by HMAC-SHA256(licensee key,
// "signs" ‖ T) (64 per draw, low bit first). rms(T) is the original tensor's root mean
// square, so the mark scales with each tensor. Keys: HKDF-SHA256 of the deployment secret,
// salt "strongroom/fingerprint/v1", info "model\x00NAME:VERSION" (the subset) and
// "licensee\x00NAME:VERSION\x00LICENSEE" (the signs).
const (
	Fraction  = 0.25
	Amplitude = 0.01
)

// Key is a 32-byte mark key.
type Key [32]byte

// ModelKey keys the subset of weights marked in every licensee's copy of a model.
func ModelKey(secret []byte, model string) (Key, error) {
	return derive(secret, "model\x00"+model)
}

// LicenseeKey keys one licensee's signs.
func LicenseeKey(secret []byte, model, licensee string) (Key, error) {
	if licensee == "" {
		return Key{}, errors.New("fingerprint: empty licensee")
	}
	return derive(secret, "licensee\x00"+model+"\x00"+licensee)
}

func derive(secret []byte, info string) (Key, error) {
	var k Key
	if len(secret) < 16 {
		return k, errors.New("fingerprint: secret shorter than 16 bytes")
	}
	b, err := hkdf.Key(sha256.New, secret, []byte("strongroom/fingerprint/v1"), info, 32)
	copy(k[:], b)
	clear(b)
	return k, err
}

func (k Key) stream(label, tensor string) *rand.ChaCha8 {
	m := hmac.New(sha256.New, k[:])
	m.Write([]byte(label))
	m.Write([]byte{0})
	m.Write([]byte(tensor))
	var seed [32]byte
	copy(seed[:], m.Sum(nil))
	return rand.NewChaCha8(seed)
}

// Marked reports whether a tensor carries the mark: matrices, not vectors.
func Marked(t *Tensor) bool { return len(t.Shape) >= 2 && len(t.Data) >= 64 }

// Subset lists the marked element indices of a tensor of n elements, in order.
func (k Key) Subset(tensor string, n int) []int32 {
	s := k.stream("subset", tensor)
	threshold := uint64(Fraction * (1 << 63) * 2)
	out := make([]int32, 0, int(float64(n)*Fraction*1.01)+16)
	for i := range n {
		if s.Uint64() < threshold {
			out = append(out, int32(i))
		}
	}
	return out
}

// Signs returns n signs (+1/-1) of a licensee for a tensor.
func (k Key) Signs(tensor string, n int) []int8 {
	s := k.stream("signs", tensor)
	out := make([]int8, n)
	var w uint64
	for i := range out {
		if i%64 == 0 {
			w = s.Uint64()
		}
		out[i] = int8(1 - 2*int(w&1))
		w >>= 1
	}
	return out
}

// RMS is a tensor's root mean square.
func RMS(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	if len(x) == 0 {
		return 0
	}
	return math.Sqrt(s / float64(len(x)))
}

// Embed adds licensee's mark to every marked tensor of m in place.
func Embed(m *Model, model, licensee Key) {
	for i := range m.Tensors {
		t := &m.Tensors[i]
		if !Marked(t) {
			continue
		}
		sub := model.Subset(t.Name, len(t.Data))
		signs := licensee.Signs(t.Name, len(sub))
		a := float32(Amplitude * RMS(t.Data))
		for j, idx := range sub {
			t.Data[idx] += a * float32(signs[j])
		}
	}
}
