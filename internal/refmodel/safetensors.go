package refmodel

import (
	"io"

	"github.com/strongroom/strongroom/internal/fingerprint"
)

// The safetensors reader lives with the other weight-file readers in fingerprint.
type (
	// Safetensors is a parsed safetensors file over an io.ReaderAt.
	Safetensors = fingerprint.Safetensors
	// TensorInfo is one entry of a safetensors header.
	TensorInfo = fingerprint.TensorInfo
)

// OpenSafetensors parses and checks a safetensors header (fingerprint.OpenSafetensors).
func OpenSafetensors(r io.ReaderAt, size int64) (*Safetensors, error) {
	return fingerprint.OpenSafetensors(r, size)
}

func f16ToF32(h uint16) float32 { return fingerprint.F16ToF32(h) }
