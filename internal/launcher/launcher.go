// Package launcher is `strongroom run` on a runtime host: it obtains a lease for a model
// version, decrypts every file into memfd memory (never to disk), hands the files to an
// engine process as /proc/self/fd paths, renews the lease at a third of its lifetime, and
// kills the engine when the lease is revoked or cannot be renewed in time.
package launcher

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strongroom/strongroom/internal/attest"
	"github.com/strongroom/strongroom/internal/custody"
	"github.com/strongroom/strongroom/internal/seal"
	"github.com/strongroom/strongroom/internal/store"
)

// Exit statuses of `strongroom run` when the launcher, not the engine, ends the run.
const (
	ExitRenewalLost = 75 // EX_TEMPFAIL: the control plane could not renew the lease in time
	ExitDenied      = 77 // EX_NOPERM: the lease was refused
	ExitRevoked     = 78 // the lease was revoked (or the version disabled)
	ExitRejected    = 79 // an approver denied the release this run waited for
	ExitInterrupted = 130
)

// Config is one run.
type Config struct {
	Identity       *custody.Identity
	Model, Version string
	Command        []string // the engine; {weights} and {weights_dir} are substituted
	// BlobDir, if set, reads sealed files from this directory (shared storage of the blob
	// store) instead of downloading them from the control plane. They are ciphertext.
	BlobDir string
	// Evidence makes attestation evidence for a binding; nil: dev attestation with the
	// runtime's identity key.
	Evidence     func(binding [64]byte) (attest.Evidence, error)
	VerifyDigest bool          // also hash every file against the inventory's SHA-256
	KillGrace    time.Duration // SIGTERM → SIGKILL; default 5s
	// RenewGrace caps how long renewal may fail before the engine is killed; default (and
	// maximum) the lease's remaining lifetime.
	RenewGrace     time.Duration
	Stdout, Stderr io.Writer
	Log            *slog.Logger
	// Started, if set, is called with the engine's pid once it runs (tests, benchmarks).
	Started func(pid int)
	// TempDir holds the directory of /proc/self/fd links; default os.TempDir().
	TempDir string
	// Env is added to the engine's environment.
	Env []string
	// Containment is how the engine's whole process tree is held and killed: "" (the best
	// available), "cgroup" (a cgroup v2 per run, killed with cgroup.kill), "subreaper"
	// (a reaper process that is the tree's subreaper and kills it through pidfds) or
	// "none" (the engine's process group only; the control plane refuses restricted
	// models then). Required modes that cannot be set up fail the run before any lease.
	Containment string
	// CgroupParent is the cgroup v2 directory run cgroups are made in; default the
	// launcher's own.
	CgroupParent string
}

// Outcome says why a run ended.
type Outcome struct {
	Code   int // exit status for `strongroom run`
	Reason string
	Lease  string
}

func (c *Config) defaults() {
	if c.KillGrace <= 0 {
		c.KillGrace = 5 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Stdout == nil {
		c.Stdout = os.Stdout
	}
	if c.Stderr == nil {
		c.Stderr = os.Stderr
	}
	// The engine's output is copied in by another goroutine while the launcher writes its
	// own lines: a writer that is not a file gets a lock (and loses ReadFrom, which
	// bytes.Buffer would run against concurrent writes).
	if _, ok := c.Stderr.(*os.File); !ok {
		lw := &lockedWriter{w: c.Stderr}
		if c.Stdout == c.Stderr {
			c.Stdout = lw
		}
		c.Stderr = lw
	}
	if _, ok := c.Stdout.(*os.File); !ok {
		if _, ok := c.Stdout.(*lockedWriter); !ok {
			c.Stdout = &lockedWriter{w: c.Stdout}
		}
	}
	if c.Evidence == nil {
		key := c.Identity.Key
		c.Evidence = func(b [64]byte) (attest.Evidence, error) { return attest.DevEvidence(key, b) }
	}
	if c.TempDir == "" {
		c.TempDir = os.TempDir()
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Harden makes this process undumpable (no core dumps, no ptrace attach by the same user)
// and gives children a zero core-size limit. Call it before any plaintext exists.
func Harden() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("launcher: PR_SET_DUMPABLE: %w", err)
	}
	return unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0})
}

// acquire asks for the lease until granted, refused or ctx ends, saying what it waits for.
// The request it waits on is named in every poll, so that a denial ends the wait instead
// of filing a new request.
func acquire(ctx context.Context, cfg *Config, c *custody.Client, pub []byte, containment string) (*custody.LeaseResponse, error) {
	said, waiting := "", ""
	for {
		n, err := c.Nonce(ctx)
		if err != nil {
			return nil, err
		}
		ev, err := cfg.Evidence(attest.Binding(pub, n))
		if err != nil {
			return nil, fmt.Errorf("launcher: attestation: %w", err)
		}
		r, err := c.Lease(ctx, custody.LeaseRequestWire{Model: cfg.Model, Version: cfg.Version, PublicKey: pub, Nonce: n, Evidence: ev,
			Containment: containment, Approval: waiting})
		if !errors.Is(err, custody.ErrPendingApproval) {
			return r, err
		}
		waiting = r.Approval.ID
		have := 0
		for _, a := range r.Approval.Approvals {
			if a.Decision == "approve" {
				have++
			}
		}
		msg := fmt.Sprintf("strongroom run: waiting for approvals of request %s (%d of %d): strongroom approval approve %s",
			r.Approval.ID, have, r.Approval.Needed, r.Approval.ID)
		if msg != said {
			fmt.Fprintln(cfg.Stderr, msg)
			said = msg
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// Run performs one run; the error is for failures before the engine started.
func Run(ctx context.Context, cfg Config) (Outcome, error) {
	cfg.defaults()
	if len(cfg.Command) == 0 {
		return Outcome{Code: 2}, errors.New("launcher: no engine command")
	}
	if err := Harden(); err != nil {
		return Outcome{Code: 1}, err
	}
	cgParent := cfg.CgroupParent
	if cgParent == "" {
		cgParent, _ = OwnCgroup()
	}
	if n := sweep(cfg.TempDir, cgParent); n > 0 {
		cfg.Log.Info("launcher: removed leftovers of launchers that were killed", "count", n)
	}
	// The tree's keeper exists before the lease is asked for: the control plane is told
	// which containment holds the engine, and refuses restricted models without one.
	k, err := startKeeper(&cfg)
	if err != nil {
		return Outcome{Code: 1}, err
	}
	defer k.close()
	switch k.mode {
	case ModeCgroup:
		fmt.Fprintf(cfg.Stderr, "strongroom run: engine tree contained by cgroup %s\n", k.cgroup)
	case ModeSubreaper:
		fmt.Fprintf(cfg.Stderr, "strongroom run: engine tree contained by a subreaper (no cgroup: %s)\n", k.note)
	default:
		fmt.Fprintf(cfg.Stderr, "strongroom run: engine tree NOT contained (%s); only unrestricted models can be leased\n", k.note)
	}
	cfg.Log.Info("launcher: containment", "mode", k.mode, "cgroup", k.cgroup, "note", k.note)
	client := cfg.Identity.Client()
	if time.Until(cfg.Identity.NotAfter()) < 8*time.Hour {
		if err := client.RenewCert(ctx); err != nil {
			cfg.Log.Warn("launcher: certificate renewal failed", "err", err)
		}
	}
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return Outcome{Code: 1}, err
	}
	grant, err := acquire(ctx, &cfg, client, priv.PublicKey().Bytes(), k.mode)
	if err != nil {
		switch {
		case errors.Is(err, context.Canceled):
			return Outcome{Code: ExitInterrupted, Reason: "interrupted while waiting"}, err
		case errors.Is(err, custody.ErrRejected):
			return Outcome{Code: ExitRejected, Reason: err.Error()}, err
		}
		return Outcome{Code: ExitDenied, Reason: err.Error()}, err
	}
	dek, err := custody.OpenKey(priv, grant.Lease, grant.SealedKey)
	if err != nil {
		return Outcome{Code: 1, Lease: grant.Lease.ID}, err
	}
	files, err := materialize(ctx, &cfg, client, grant, dek)
	clear(dek)
	if err != nil {
		return Outcome{Code: 1, Lease: grant.Lease.ID}, err
	}
	defer files.close()
	return supervise(ctx, &cfg, client, grant.Lease, files, k)
}

// memFile is one decrypted file in memory.
type memFile struct {
	path string
	f    *os.File
	mem  []byte // read-only mapping, locked when mlock is allowed
}

type memFiles struct {
	list []memFile
	dir  string
}

func (m *memFiles) close() {
	for _, f := range m.list {
		if f.mem != nil {
			unix.Munlock(f.mem)
			unix.Munmap(f.mem)
		}
		f.f.Close()
	}
	if m.dir != "" {
		os.RemoveAll(m.dir)
	}
}

func fileContext(model, version, p string) string { return model + "@" + version + "/" + p }

// materialize decrypts every file of the grant into a sealed memfd.
func materialize(ctx context.Context, cfg *Config, c *custody.Client, g *custody.LeaseResponse, dek []byte) (*memFiles, error) {
	out := &memFiles{}
	var blobs *store.FSBlobs
	if cfg.BlobDir != "" {
		var err error
		if blobs, err = store.NewFSBlobs(cfg.BlobDir); err != nil {
			return nil, err
		}
	}
	locked := true
	for _, f := range g.Files {
		if !validPath(f.Path) {
			out.close()
			return nil, fmt.Errorf("launcher: control plane sent a bad file path %q", f.Path)
		}
		src, size, done, err := openSealed(ctx, c, blobs, g.Lease.ID, f)
		if err != nil {
			out.close()
			return nil, err
		}
		mf, err := decryptToMemfd(src, size, dek, f, fileContext(g.Lease.Model, g.Lease.Version, f.Path), cfg.VerifyDigest)
		done()
		if err != nil {
			out.close()
			return nil, err
		}
		if mf.mem != nil && unix.Mlock(mf.mem) != nil {
			locked = false
		}
		out.list = append(out.list, mf)
	}
	if !locked {
		cfg.Log.Warn("launcher: mlock refused (RLIMIT_MEMLOCK); weights may be swapped out")
	}
	return out, nil
}

func validPath(p string) bool {
	return p != "" && !strings.HasPrefix(p, "/") && path.Clean(p) == p && !strings.HasPrefix(p, "..") && !strings.Contains(p, "\x00")
}

// openSealed returns the sealed file as a ReaderAt: from shared blob storage, or
// downloaded from the control plane into an anonymous memfd (ciphertext, never on disk).
func openSealed(ctx context.Context, c *custody.Client, blobs *store.FSBlobs, lease string, f store.File) (io.ReaderAt, int64, func(), error) {
	if blobs != nil {
		b, err := blobs.Open(ctx, f.Blob)
		if err != nil {
			return nil, 0, nil, err
		}
		return b, b.Size(), func() { b.Close() }, nil
	}
	body, n, err := c.File(ctx, lease, f.Path)
	if err != nil {
		return nil, 0, nil, err
	}
	defer body.Close()
	fd, err := unix.MemfdCreate("sealed", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("launcher: memfd_create: %w", err)
	}
	mf := os.NewFile(uintptr(fd), "sealed")
	if n > 0 {
		unix.Ftruncate(fd, n)
	}
	got, err := io.Copy(mf, body)
	if err != nil {
		mf.Close()
		return nil, 0, nil, fmt.Errorf("launcher: download %s: %w", f.Path, err)
	}
	return mf, got, func() { mf.Close() }, nil
}

func decryptToMemfd(src io.ReaderAt, sealedSize int64, dek []byte, f store.File, context string, verify bool) (memFile, error) {
	r, err := seal.Open(src, sealedSize, dek, seal.OpenOptions{Context: context, Name: f.Path})
	if err != nil {
		return memFile{}, err
	}
	fd, err := unix.MemfdCreate(path.Base(f.Path), unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return memFile{}, fmt.Errorf("launcher: memfd_create: %w", err)
	}
	mf := memFile{path: f.Path, f: os.NewFile(uintptr(fd), f.Path)}
	fail := func(err error) (memFile, error) {
		mf.f.Close()
		return memFile{}, err
	}
	size := r.Size()
	if err := unix.Ftruncate(fd, size); err != nil {
		return fail(err)
	}
	// Workers decrypt chunks and write them at their offsets (page allocation on the write
	// path is cheaper than faulting in a mapping on the VMs we measured).
	if err := r.DecryptAt(mf.f); err != nil {
		return fail(err)
	}
	if verify {
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(mf.f, 0, size)); err != nil {
			return fail(err)
		}
		if hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
			return fail(fmt.Errorf("launcher: %s: %w: SHA-256 differs from the inventory", f.Path, seal.ErrAuth))
		}
	}
	if size != f.Size {
		return fail(fmt.Errorf("launcher: %s: %w: size differs from the inventory", f.Path, seal.ErrAuth))
	}
	// Sealed: neither the engine nor anything else can change the weights now.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		return fail(fmt.Errorf("launcher: sealing memfd: %w", err))
	}
	if size > 0 {
		if mf.mem, err = unix.Mmap(fd, 0, int(size), unix.PROT_READ, unix.MAP_SHARED); err != nil {
			mf.mem = nil
		}
	}
	return mf, nil
}

// primary picks the file {weights} names: the first weights-looking file, else the first.
func primary(files []memFile) int {
	for i, f := range files {
		for _, ext := range []string{".safetensors", ".gguf", ".bin", ".pt"} {
			if strings.HasSuffix(f.path, ext) {
				return i
			}
		}
	}
	return 0
}

// linkDirPrefix names link directories; the launcher's pid follows, so that a later start
// can remove those of launchers that were killed.
const linkDirPrefix = "strongroom-weights-"

// layout makes a private directory of links to the engine's /proc/self/fd entries.
func layout(cfg *Config, files *memFiles) (string, error) {
	dir, err := os.MkdirTemp(cfg.TempDir, linkDirPrefix+strconv.Itoa(os.Getpid())+"-*")
	if err != nil {
		return "", err
	}
	files.dir = dir
	for i, f := range files.list {
		link := filepath.Join(dir, filepath.FromSlash(f.path))
		if err := os.MkdirAll(filepath.Dir(link), 0o700); err != nil {
			return "", err
		}
		if err := os.Symlink(fmt.Sprintf("/proc/self/fd/%d", 3+i), link); err != nil {
			return "", err
		}
	}
	return dir, nil
}

type stop struct {
	code   int
	reason string
}

// supervise starts the engine and ends it on revocation, lost renewal or interruption.
func supervise(ctx context.Context, cfg *Config, c *custody.Client, l store.Lease, files *memFiles, k *keeper) (Outcome, error) {
	dir, err := layout(cfg, files)
	if err != nil {
		return Outcome{Code: 1, Lease: l.ID}, err
	}
	weights := fmt.Sprintf("/proc/self/fd/%d", 3+primary(files.list))
	args := make([]string, len(cfg.Command))
	for i, a := range cfg.Command {
		args[i] = strings.NewReplacer("{weights_dir}", dir, "{weights}", weights).Replace(a)
	}
	fds := make([]string, len(files.list))
	for i := range files.list {
		fds[i] = strconv.Itoa(3 + i)
	}
	env := append(append(os.Environ(), cfg.Env...), "STRONGROOM_WEIGHTS_DIR="+dir, "STRONGROOM_WEIGHTS="+weights, "STRONGROOM_LEASE="+l.ID,
		"STRONGROOM_WEIGHTS_FDS="+strings.Join(fds, ","), "STRONGROOM_CONTAINMENT="+k.mode)
	var t tree
	if k.mode == ModeNone {
		t, err = startDirect(cfg, args, env, files)
	} else {
		t, err = startContained(cfg, k, args, env, dir, files)
	}
	if err != nil {
		return Outcome{Code: 1, Lease: l.ID}, err
	}
	cfg.Log.Info("launcher: engine started", "pid", t.pid(), "lease", l.ID, "containment", k.mode)
	if cfg.Started != nil {
		cfg.Started(t.pid())
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stops := make(chan stop, 2)
	go watch(sctx, cfg, c, l, stops)
	go renew(sctx, cfg, c, l, stops)

	var why stop
	select {
	case e := <-t.done():
		release(cfg, c, l, e.note)
		return Outcome{Code: e.code, Reason: "engine exited" + e.note, Lease: l.ID}, nil
	case why = <-stops:
	case <-ctx.Done():
		why = stop{ExitInterrupted, "interrupted"}
	}
	t.stop()
	e := <-t.done()
	fmt.Fprintf(cfg.Stderr, "strongroom run: %s; engine stopped%s\n", why.reason, e.note)
	if why.code == ExitInterrupted {
		release(cfg, c, l, e.note)
	}
	return Outcome{Code: why.code, Reason: why.reason, Lease: l.ID}, nil
}

// release hands the lease back once the engine is gone, so that it ends now rather than at
// its expiry. Only when the whole tree is known dead (note empty): a lease whose engine may
// live on stays on record until it expires. Best effort, with its own short deadline (the
// run's context is usually cancelled by then).
func release(cfg *Config, c *custody.Client, l store.Lease, note string) {
	if note != "" {
		fmt.Fprintf(cfg.Stderr, "strongroom run: lease %s kept until it expires at %s (the engine's end is in doubt)\n", l.ID, l.ExpiresAt.Format(time.RFC3339))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Release(ctx, l.ID); err != nil {
		fmt.Fprintf(cfg.Stderr, "strongroom run: lease %s not released (%v); it ends at %s\n", l.ID, err, l.ExpiresAt.Format(time.RFC3339))
		return
	}
	fmt.Fprintf(cfg.Stderr, "strongroom run: lease %s released\n", l.ID)
}

// tree is the running engine with its descendants.
type tree interface {
	pid() int
	// stop sends SIGTERM to the engine's process group and kills everything left once
	// the engine exits or the kill grace runs out.
	stop()
	// done yields once, when the engine has exited and (as far as the containment can
	// tell) every descendant is dead.
	done() <-chan treeEnd
}

type treeEnd struct {
	code int
	note string // said after "engine exited"/"engine stopped" when the tree's end is in doubt
}

func exitCode(code int) int {
	if code < 0 {
		return 1
	}
	return code
}

// contained is an engine run by the reaper.
type contained struct {
	enginePid int
	k         *keeper
	end       chan treeEnd
}

func startContained(cfg *Config, k *keeper, args, env []string, dir string, files *memFiles) (*contained, error) {
	fs := make([]*os.File, len(files.list))
	for i, f := range files.list {
		fs[i] = f.f
	}
	pid, err := k.run(args, env, dir, cfg.KillGrace, fs)
	if err != nil {
		return nil, err
	}
	t := &contained{enginePid: pid, k: k, end: make(chan treeEnd, 1)}
	go func() {
		code, ok := k.wait()
		if !ok {
			t.end <- treeEnd{code: 1, note: " (the reaper died; its cgroup, if any, was killed)"}
			return
		}
		t.end <- treeEnd{code: exitCode(code)}
	}()
	return t, nil
}

func (t *contained) pid() int             { return t.enginePid }
func (t *contained) stop()                { t.k.stop() }
func (t *contained) done() <-chan treeEnd { return t.end }

// direct is an engine started without a reaper: only its process group is signalled.
type direct struct {
	cmd   *exec.Cmd
	grace time.Duration
	end   chan treeEnd
	once  sync.Once
}

func startDirect(cfg *Config, args, env []string, files *memFiles) (*direct, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = cfg.Stdout, cfg.Stderr
	cmd.Env = env
	for _, f := range files.list {
		cmd.ExtraFiles = append(cmd.ExtraFiles, f.f)
	}
	// Own process group, so the group is signalled; killed if we die. Descendants that
	// leave the group, or outlive us, are not held.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("launcher: start engine: %w", err)
	}
	t := &direct{cmd: cmd, grace: cfg.KillGrace, end: make(chan treeEnd, 1)}
	go func() {
		err := cmd.Wait()
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // whatever of the group is left
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			code = 1
		}
		t.end <- treeEnd{code: exitCode(code), note: " (uncontained: descendants outside its process group may remain)"}
	}()
	return t, nil
}

func (t *direct) pid() int             { return t.cmd.Process.Pid }
func (t *direct) done() <-chan treeEnd { return t.end }
func (t *direct) stop() {
	t.once.Do(func() {
		pgid := t.cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGTERM)
		time.AfterFunc(t.grace, func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	})
}

// watch follows the revocation stream, reconnecting when it drops.
func watch(ctx context.Context, cfg *Config, c *custody.Client, l store.Lease, stops chan<- stop) {
	for ctx.Err() == nil {
		body, err := c.Watch(ctx, l.ID)
		if errors.Is(err, custody.ErrRevoked) || errors.Is(err, custody.ErrRuntimeRevoked) {
			stops <- stop{ExitRevoked, "lease " + l.ID + " revoked"}
			return
		}
		if err == nil {
			sc := bufio.NewScanner(body)
			for sc.Scan() {
				if r, ok := strings.CutPrefix(sc.Text(), "revoked"); ok {
					body.Close()
					stops <- stop{ExitRevoked, "lease " + l.ID + " revoked:" + r}
					return
				}
			}
			body.Close()
		}
		if ctx.Err() == nil {
			cfg.Log.Warn("launcher: revocation stream lost; reconnecting", "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// renew renews at a third of the lease's lifetime; a refusal stops the engine at once, and
// failures to reach the control plane stop it when the lease (or RenewGrace) runs out.
func renew(ctx context.Context, cfg *Config, c *custody.Client, l store.Lease, stops chan<- stop) {
	ttl := l.ExpiresAt.Sub(l.GrantedAt)
	expires := time.Now().Add(ttl) // our clock; the server's may differ
	next := time.Now().Add(ttl / 3)
	var failingSince time.Time
	for {
		wait := time.Until(next)
		if !failingSince.IsZero() {
			deadline := expires
			if cfg.RenewGrace > 0 && failingSince.Add(cfg.RenewGrace).Before(deadline) {
				deadline = failingSince.Add(cfg.RenewGrace)
			}
			if !time.Now().Before(deadline) {
				stops <- stop{ExitRenewalLost, fmt.Sprintf("lease %s could not be renewed since %s", l.ID, failingSince.Format(time.RFC3339))}
				return
			}
			wait = min(wait, time.Until(deadline))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(wait, 0)):
		}
		if time.Now().Before(next) {
			continue
		}
		if time.Until(cfg.Identity.NotAfter()) < 8*time.Hour {
			if err := c.RenewCert(ctx); err != nil {
				cfg.Log.Warn("launcher: certificate renewal failed", "err", err)
			}
		}
		nl, err := c.Renew(ctx, l.ID)
		switch {
		case err == nil:
			failingSince = time.Time{}
			_ = nl
			expires = time.Now().Add(ttl)
			next = time.Now().Add(ttl / 3)
		case errors.Is(err, custody.ErrRevoked) || errors.Is(err, custody.ErrExpired) || errors.Is(err, custody.ErrDenied) ||
			errors.Is(err, custody.ErrDisabled) || errors.Is(err, custody.ErrUnknown) || errors.Is(err, custody.ErrRuntimeRevoked):
			stops <- stop{ExitRevoked, "lease " + l.ID + " renewal refused: " + err.Error()}
			return
		default:
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			cfg.Log.Warn("launcher: renewal failed; retrying", "err", err)
			next = time.Now().Add(time.Second)
		}
	}
}
