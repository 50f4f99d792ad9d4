package seal

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
)

// Options configure sealing.
type Options struct {
	// KeyID names the DEK in the inventory; it is written to the header.
	KeyID [16]byte
	// Context binds the file to its place (see the package doc); it must be given again to open.
	Context string
	// ChunkSize defaults to DefaultChunkSize.
	ChunkSize int
	// Workers defaults to GOMAXPROCS.
	Workers int
	// Rand supplies the salt; defaults to crypto/rand. Tests set it for golden vectors.
	Rand io.Reader
	// Name is used in error messages.
	Name string
}

// Writer seals a plaintext stream. Chunks are encrypted on all cores and written in order.
// Call Close to write the final chunk; until then the output is not a valid sealed file.
type Writer struct {
	name   string
	cs     int
	p      *pipe
	cur    *slot
	next   uint64
	closed bool
	err    error // a failed read poisons the writer: Close then writes no final chunk
}

// NewWriter writes the header to dst and returns a Writer for the plaintext.
func NewWriter(dst io.Writer, dek []byte, opts Options) (*Writer, error) {
	cs := opts.ChunkSize
	if cs == 0 {
		cs = DefaultChunkSize
	}
	if cs < MinChunkSize || cs > MaxChunkSize {
		return nil, fmt.Errorf("seal: chunk size %d out of range [%d, %d]", cs, MinChunkSize, MaxChunkSize)
	}
	r := opts.Rand
	if r == nil {
		r = rand.Reader
	}
	h := Header{ChunkSize: cs, KeyID: opts.KeyID}
	if _, err := io.ReadFull(r, h.Salt[:]); err != nil {
		return nil, fmt.Errorf("seal: salt: %w", err)
	}
	aead, commit, err := fileKeys(dek, &h, opts.Context)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	h.Commitment = commit
	// A seekable file is written by the workers themselves at each chunk's offset, so that
	// the write system calls run on all cores instead of one in-order writer.
	var at io.WriterAt
	var base int64
	if f, ok := dst.(interface {
		io.WriterAt
		io.Seeker
	}); ok {
		if off, err := f.Seek(0, io.SeekCurrent); err == nil {
			at, base = f, off+HeaderSize
		}
	}
	if _, err := dst.Write(h.Marshal()); err != nil {
		return nil, fmt.Errorf("seal: write header: %w", err)
	}
	w := &Writer{name: opts.Name, cs: cs}
	w.p = newPipe(opts.Workers, cs+tagSize,
		func(s *slot) error {
			out := aead.Seal(s.buf[:0], nonce(s.idx, s.final), s.buf[:s.n], nil)
			s.n = len(out)
			if at != nil {
				_, err := at.WriteAt(out, base+int64(s.idx)*int64(cs+tagSize))
				return err
			}
			return nil
		},
		func(s *slot) error {
			if at != nil {
				return nil
			}
			_, err := dst.Write(s.buf[:s.n])
			return err
		})
	return w, nil
}

// Write seals p. It is ReadFrom over p, so the two share one code path.
func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.ReadFrom(bytes.NewReader(p))
	return int(n), err
}

// ReadFrom reads r to EOF straight into chunk buffers (no extra copy) and seals it.
// A full chunk is handed to the workers only once at least one more byte exists, because
// only then is it known not to be the final chunk.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	if w.closed {
		return 0, errors.New("seal: write after close")
	}
	if w.err != nil {
		return 0, w.err
	}
	var total int64
	for {
		if err := w.p.failed(); err != nil {
			return total, w.wrap(err)
		}
		if w.cur == nil {
			w.cur = w.p.get()
		}
		var (
			m    int
			rerr error
		)
		if w.cur.n == w.cs {
			nx := w.p.get()
			m, rerr = io.ReadFull(r, nx.buf[:w.cs])
			nx.n = m
			if m > 0 {
				w.dispatch(w.cur, false)
				w.cur = nx
			} else {
				w.p.put(nx)
			}
		} else {
			m, rerr = io.ReadFull(r, w.cur.buf[w.cur.n:w.cs])
			w.cur.n += m
		}
		total += int64(m)
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return total, nil
		}
		if rerr != nil {
			w.err = rerr
			return total, rerr
		}
	}
}

func (w *Writer) dispatch(s *slot, final bool) {
	s.idx, s.final = w.next, final
	w.next++
	w.p.submit(s)
}

// Close seals the final chunk and waits until everything is written.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	if w.err != nil {
		if w.cur != nil {
			w.p.put(w.cur)
		}
		w.p.close()
		return w.wrap(w.err)
	}
	if w.cur == nil {
		w.cur = w.p.get()
	}
	w.dispatch(w.cur, true)
	w.cur = nil
	return w.wrap(w.p.close())
}

func (w *Writer) wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("seal %s: %w", w.name, err)
}
