package seal

import (
	"crypto/cipher"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// Slicer is implemented by sources that hold the sealed file in memory (such as Bytes);
// Reader then decrypts from the source's memory without copying it first. Slice returns
// fewer than n bytes when the range is out of bounds.
type Slicer interface {
	Slice(off, n int64) []byte
}

// Bytes is a sealed file held in memory.
type Bytes []byte

// ReadAt implements io.ReaderAt.
func (b Bytes) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Slice implements Slicer.
func (b Bytes) Slice(off, n int64) []byte {
	if off < 0 || off > int64(len(b)) {
		return nil
	}
	return b[off:min(off+n, int64(len(b)))]
}

// OpenOptions configure opening a sealed file.
type OpenOptions struct {
	Context string // must equal the context used when sealing
	Name    string // used in error messages
	Workers int    // for WriteTo; defaults to GOMAXPROCS
}

// Reader decrypts a sealed file. ReadAt decrypts only the chunks a range touches and is
// safe for concurrent use; WriteTo decrypts the whole file on all cores.
type Reader struct {
	src     io.ReaderAt
	name    string
	hdr     Header
	aead    cipher.AEAD
	cs      int64
	nchunks int64
	size    int64
	workers int

	mu       sync.Mutex
	cacheIdx int64 // chunk held in cache, -1 if none
	cache    []byte
}

// PeekHeader reads and parses the header of a sealed file, e.g. to learn its key id.
func PeekHeader(src io.ReaderAt) (Header, error) {
	b := make([]byte, HeaderSize)
	if n, err := src.ReadAt(b, 0); n < HeaderSize {
		if err == nil || err == io.EOF {
			err = fmt.Errorf("%w: %d-byte file is shorter than a header", ErrFormat, n)
		}
		return Header{}, err
	}
	return ParseHeader(b)
}

// Open checks the header's key commitment and authenticates the final chunk, so that a
// wrong key, an altered header and truncation are reported before any data is returned.
func Open(src io.ReaderAt, fileSize int64, dek []byte, opts OpenOptions) (*Reader, error) {
	r := &Reader{src: src, name: opts.Name, workers: opts.Workers, cacheIdx: -1}
	h, err := PeekHeader(src)
	if err != nil {
		return nil, r.errAt(-1, err)
	}
	aead, commit, err := fileKeys(dek, &h, opts.Context)
	if err != nil {
		return nil, r.errAt(-1, err)
	}
	if subtle.ConstantTimeCompare(commit[:], h.Commitment[:]) != 1 {
		return nil, r.errAt(-1, ErrKey)
	}
	r.hdr, r.aead, r.cs = h, aead, int64(h.ChunkSize)
	body := fileSize - HeaderSize
	full := r.cs + tagSize
	if body < tagSize {
		return nil, r.errAt(0, ErrTruncated)
	}
	r.nchunks = (body + full - 1) / full
	last := body - (r.nchunks-1)*full
	if last < tagSize {
		return nil, r.errAt(r.nchunks-1, ErrTruncated)
	}
	r.size = (r.nchunks-1)*r.cs + last - tagSize
	if r.nchunks > 1 && last == tagSize {
		return nil, r.errAt(r.nchunks-1, fmt.Errorf("%w: empty final chunk", ErrAuth))
	}
	buf := make([]byte, full)
	if _, err := r.chunk(buf, r.nchunks-1); err != nil {
		return nil, err
	}
	return r, nil
}

// Header returns the parsed header.
func (r *Reader) Header() Header { return r.hdr }

// Size is the plaintext size, authenticated by Open.
func (r *Reader) Size() int64 { return r.size }

func (r *Reader) errAt(chunk int64, err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{File: r.name, Chunk: chunk, Err: err}
}

// chunkLen is the plaintext length of chunk i.
func (r *Reader) chunkLen(i int64) int64 {
	if i == r.nchunks-1 {
		return r.size - i*r.cs
	}
	return r.cs
}

// chunk reads and decrypts chunk i into buf (capacity >= chunk size + tag) and returns
// the plaintext, which aliases buf.
func (r *Reader) chunk(buf []byte, i int64) ([]byte, error) { return r.open(buf, buf, i) }

// open decrypts chunk i into dst (capacity >= its plaintext), reading the ciphertext into
// scratch (capacity >= chunk size + tag) unless the source can hand out a slice. dst may
// alias scratch.
func (r *Reader) open(dst, scratch []byte, i int64) ([]byte, error) {
	n := r.chunkLen(i) + tagSize
	off := HeaderSize + i*(r.cs+tagSize)
	var ct []byte
	if sl, ok := r.src.(Slicer); ok {
		ct = sl.Slice(off, n) // decrypt straight from memory, saving a copy
	}
	if int64(len(ct)) != n {
		ct = scratch[:n]
		if m, err := r.src.ReadAt(ct, off); int64(m) < n {
			if err == nil || err == io.EOF {
				err = ErrTruncated
			}
			return nil, r.errAt(i, err)
		}
	}
	final := i == r.nchunks-1
	pt, err := r.aead.Open(dst[:0], nonce(uint64(i), final), ct, nil)
	if err != nil {
		// A chunk that opens as non-final where a final one belongs means the file was cut
		// at a chunk boundary; say so rather than "altered".
		// The failed Open may have overwritten ct, so read the chunk again.
		if final {
			again := make([]byte, n)
			if m, _ := r.src.ReadAt(again, HeaderSize+i*(r.cs+tagSize)); int64(m) == n {
				if _, e2 := r.aead.Open(again[:0], nonce(uint64(i), false), again, nil); e2 == nil {
					return nil, r.errAt(i, fmt.Errorf("%w after this chunk", ErrTruncated))
				}
			}
		}
		return nil, r.errAt(i, ErrAuth)
	}
	return pt, nil
}

// DecryptAt decrypts the whole file on all cores, each worker writing the chunks it
// decrypts at their plaintext offsets in w (a file: pwrite, no ordering and no pipe). On
// error w holds partial plaintext that the caller must discard.
func (r *Reader) DecryptAt(w io.WriterAt) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, workerCount(r.workers))
	for k := range errs {
		wg.Go(func() {
			scratch := make([]byte, r.cs+tagSize)
			for {
				i := next.Add(1) - 1
				if i >= r.nchunks {
					return
				}
				pt, err := r.open(scratch, scratch, i)
				if err == nil {
					_, err = w.WriteAt(pt, i*r.cs)
				}
				if err != nil {
					errs[k] = err
					next.Store(r.nchunks) // the others stop too
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ReadAt implements io.ReaderAt over the plaintext.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("seal: negative offset")
	}
	if off >= r.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off < r.size {
		i := off / r.cs
		within := off - i*r.cs
		m, err := r.copyChunk(p[n:], i, within)
		if err != nil {
			return n, err
		}
		n += m
		off += int64(m)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// copyChunk copies plaintext of chunk i from offset within into p, keeping the last
// decrypted chunk so that small sequential reads decrypt each chunk once.
func (r *Reader) copyChunk(p []byte, i, within int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cacheIdx != i {
		if r.cache == nil {
			r.cache = make([]byte, r.cs+tagSize)
		}
		r.cacheIdx = -1
		pt, err := r.chunk(r.cache, i)
		if err != nil {
			return 0, err
		}
		r.cache = r.cache[:len(pt)]
		r.cacheIdx = i
	}
	return copy(p, r.cache[within:]), nil
}

// WriteTo decrypts every chunk on all cores and writes the plaintext to w in order.
// Nothing after a failed chunk is written.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	var written int64
	p := newPipe(r.workers, int(r.cs+tagSize), func(s *slot) error {
		pt, err := r.chunk(s.buf[:cap(s.buf)], int64(s.idx))
		s.n = len(pt)
		return err
	}, func(s *slot) error {
		m, err := w.Write(s.buf[:s.n])
		written += int64(m)
		return err
	})
	for i := int64(0); i < r.nchunks && p.failed() == nil; i++ {
		s := p.get()
		s.idx = uint64(i)
		p.submit(s)
	}
	return written, p.close()
}

// Verify authenticates every chunk without returning plaintext.
func (r *Reader) Verify() error {
	_, err := r.WriteTo(io.Discard)
	return err
}
