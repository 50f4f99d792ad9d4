package policy

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/strongroom/strongroom/internal/tick"
)

// Engine serves decisions from the current set and reloads the policy directory when it
// changes, without dropping requests: a set that fails to load or validate is refused and
// the previous one stays in force.
type Engine struct {
	dir     string
	record  func(*Set) error
	log     *slog.Logger
	cur     atomic.Pointer[Set]
	version atomic.Value // [32]byte digest of the files last loaded
	errs    atomic.Int64
}

// NewEngine loads dir (which may be "" for the baseline only).
func NewEngine(dir string, log *slog.Logger) (*Engine, error) {
	return NewRecordedEngine(dir, log, nil)
}

// NewRecordedEngine is NewEngine that calls record with every set before it comes into
// force (the first included); a set that record refuses does not come into force — at
// start the engine is not made, on reload the previous set stays.
func NewRecordedEngine(dir string, log *slog.Logger, record func(*Set) error) (*Engine, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{dir: dir, log: log, record: record}
	s, err := Load(dir)
	if err != nil {
		return nil, err
	}
	if record != nil {
		if err := record(s); err != nil {
			return nil, fmt.Errorf("policy set not recorded: %w", err)
		}
	}
	e.cur.Store(s)
	e.version.Store(e.digest())
	return e, nil
}

// Decide uses the current set.
func (e *Engine) Decide(r Request) Decision { return e.cur.Load().Decide(r) }

// DecideLease evaluates a lease request against the current set.
func (e *Engine) DecideLease(r LeaseRequest) Decision { return e.cur.Load().DecideLease(r) }

// DecideConsole evaluates a console request with the current set.
func (e *Engine) DecideConsole(r ConsoleRequest) Decision { return e.cur.Load().DecideConsole(r) }

// ReloadErrors counts reloads that were refused.
func (e *Engine) ReloadErrors() int64 { return e.errs.Load() }

func (e *Engine) digest() [32]byte {
	h := sha256.New()
	if e.dir != "" {
		matches, _ := filepath.Glob(filepath.Join(e.dir, "*.cedar"))
		for _, m := range matches {
			b, _ := os.ReadFile(m)
			h.Write([]byte(m))
			h.Write(b)
		}
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// Reload loads the directory if its contents changed; it reports whether a new set is in force.
func (e *Engine) Reload() (bool, error) {
	d := e.digest()
	if d == e.version.Load().([32]byte) {
		return false, nil
	}
	s, err := Load(e.dir)
	if err != nil {
		e.errs.Add(1)
		e.log.Error("policy reload refused; previous policies stay in force", "err", err)
		return false, err
	}
	if e.record != nil {
		if err := e.record(s); err != nil {
			e.errs.Add(1)
			e.log.Error("ALERT policy change not recorded; previous policies stay in force", "err", err)
			return false, err
		}
	}
	e.cur.Store(s)
	e.version.Store(d)
	e.log.Info("policies reloaded", "files", len(s.Files()))
	return true, nil
}

// Watch reloads every interval until ctx ends.
func (e *Engine) Watch(ctx context.Context, interval time.Duration) {
	tick.Every(ctx, interval, func() { e.Reload() })
}
