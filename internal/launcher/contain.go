package launcher

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// keeper is the launcher's side of the reaper: it starts it, hands it the engine, stops it
// and, should the reaper itself die, kills the run's cgroup.
type keeper struct {
	mode, cgroup, note string
	cmd                *exec.Cmd
	fd                 int
	events             chan reaperMsg // closed when the reaper's socket ends
	waited             chan struct{}  // closed when the reaper process is reaped
}

// startKeeper starts the reaper and learns which containment it could set up. want is
// Config.Containment: "" (the best available), cgroup, subreaper or none.
func startKeeper(cfg *Config) (*keeper, error) {
	want := cfg.Containment
	if want == ModeNone {
		return &keeper{mode: ModeNone, note: "asked for none"}, nil
	}
	if want != "" && want != ModeCgroup && want != ModeSubreaper {
		return nil, fmt.Errorf("launcher: containment %q: want cgroup, subreaper or none", want)
	}
	mode := ModeSubreaper
	var note string
	if want != ModeSubreaper {
		parent := cfg.CgroupParent
		if parent == "" {
			var err error
			if parent, err = OwnCgroup(); err != nil {
				note = err.Error()
			}
		}
		if parent != "" {
			mode = "cgroup:" + parent
		}
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("launcher: socketpair: %w", err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "reaper")
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"strongroom-reaper"}
	cmd.Env = append(os.Environ(), reaperEnv+"="+mode, "STRONGROOM_REAPER_PPID="+strconv.Itoa(os.Getpid()))
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stdout, cmd.Stderr = cfg.Stdout, cfg.Stderr
	// Its own session: a signal to the launcher's terminal or process group does not
	// reach it; it outlives the launcher just long enough to kill the tree.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		unix.Close(fds[0])
		return degraded(want, "reaper: "+err.Error())
	}
	k := &keeper{cmd: cmd, fd: fds[0], events: make(chan reaperMsg, 4), waited: make(chan struct{})}
	go func() { cmd.Wait(); close(k.waited) }()
	go func() {
		defer close(k.events)
		for {
			m, fds, err := recvMsg(k.fd)
			closeAll(fds)
			if err != nil {
				return
			}
			k.events <- m
		}
	}()
	ready, ok := <-k.events
	if !ok || ready.Ev != "ready" || ready.Mode == ModeNone {
		k.close()
		return degraded(want, strings.TrimSpace("reaper not ready: "+ready.Note))
	}
	k.mode, k.cgroup, k.note = ready.Mode, ready.Cgroup, strings.Join(nonEmpty(note, ready.Note), "; ")
	if want == ModeCgroup && k.mode != ModeCgroup {
		k.close()
		return nil, fmt.Errorf("launcher: cgroup containment unavailable: %s", k.note)
	}
	return k, nil
}

func nonEmpty(s ...string) []string {
	var out []string
	for _, x := range s {
		if x != "" {
			out = append(out, x)
		}
	}
	return out
}

// degraded is what is left when no reaper runs: nothing, unless a mode was required.
func degraded(want, why string) (*keeper, error) {
	if want != "" {
		return nil, fmt.Errorf("launcher: %s containment unavailable: %s", want, why)
	}
	return &keeper{mode: ModeNone, note: why}, nil
}

// run hands the engine and its memfds to the reaper and returns the engine's pid.
func (k *keeper) run(cmd, env []string, dir string, grace time.Duration, files []*os.File) (int, error) {
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	for len(fds) > 0 {
		n := min(len(fds), maxRights)
		if err := sendMsg(k.fd, reaperMsg{Op: "files"}, fds[:n]); err != nil {
			return 0, fmt.Errorf("launcher: to reaper: %w", err)
		}
		fds = fds[n:]
	}
	if err := sendMsg(k.fd, reaperMsg{Op: "run", Cmd: cmd, Env: env, Dir: dir, Grace: int64(grace)}, nil); err != nil {
		return 0, fmt.Errorf("launcher: to reaper: %w", err)
	}
	m, ok := <-k.events
	switch {
	case !ok:
		return 0, errors.New("launcher: the reaper died before starting the engine")
	case m.Ev == "done":
		return 0, errors.New(m.Err)
	case m.Ev != "started":
		return 0, fmt.Errorf("launcher: reaper said %q", m.Ev)
	}
	return m.Pid, nil
}

// stop asks for the tree to end (SIGTERM, then SIGKILL to everything after the grace).
func (k *keeper) stop() { sendMsg(k.fd, reaperMsg{Op: "stop"}, nil) }

// wait returns the engine's exit status once every descendant is gone; ok is false when
// the reaper died instead (its cgroup, if any, has been killed then).
func (k *keeper) wait() (code int, ok bool) {
	for m := range k.events {
		if m.Ev == "done" {
			<-k.waited
			return m.Code, true
		}
	}
	k.close()
	return 0, false
}

// close ends the reaper's socket (the reaper kills whatever is left), waits for it, and
// kills the cgroup itself if the reaper was gone first.
func (k *keeper) close() {
	if k.cmd == nil {
		return
	}
	// Shut the socket down before closing it: close alone does not end the reader's
	// recvmsg blocked on it (the call holds the socket open), so the reaper saw no end and
	// every run that ended before its engine started (a refusal, a denial) waited out the
	// 10 s below and killed it. Shutdown ends both directions now; the descriptor is closed
	// once the reader has returned (not reused under it).
	unix.Shutdown(k.fd, unix.SHUT_RDWR)
	for range k.events {
	}
	unix.Close(k.fd)
	select {
	case <-k.waited:
	case <-time.After(10 * time.Second):
		k.cmd.Process.Kill()
		<-k.waited
	}
	if k.cgroup != "" {
		killCgroup(k.cgroup, 5*time.Second)
		removeCgroup(k.cgroup)
	}
	k.cmd = nil
}

// OwnCgroup is the cgroup v2 directory of this process (run cgroups are made under it by
// default).
func OwnCgroup() (string, error) {
	mnt, err := cgroup2Mount()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(mnt, filepath.Clean("/"+p)), nil
		}
	}
	return "", errors.New("no cgroup v2 membership in /proc/self/cgroup")
}

func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		if pf, qf := strings.Fields(pre), strings.Fields(post); len(pf) >= 5 && len(qf) >= 1 && qf[0] == "cgroup2" && pf[3] == "/" {
			return pf[4], nil
		}
	}
	return "", errors.New("no cgroup v2 file system mounted")
}

// makeCgroup creates the run's cgroup under parent and checks that it can be killed and
// that a process can be started in it.
func makeCgroup(parent string) (string, error) {
	var b [6]byte
	rand.Read(b[:])
	cg := filepath.Join(parent, cgroupPrefix+strconv.Itoa(os.Getppid())+"-"+hex.EncodeToString(b[:]))
	if err := os.Mkdir(cg, 0o755); err != nil {
		return "", fmt.Errorf("cgroup %s: %w", parent, err)
	}
	fail := func(err error) (string, error) {
		removeCgroup(cg)
		return "", fmt.Errorf("cgroup %s: %w", cg, err)
	}
	if _, err := os.Stat(filepath.Join(cg, "cgroup.kill")); err != nil {
		return fail(errors.New("no cgroup.kill (kernel older than 5.14)"))
	}
	cfd, err := unix.Open(cg, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail(err)
	}
	defer unix.Close(cfd)
	probe := exec.Command("/proc/self/exe")
	probe.Env = append(os.Environ(), reaperEnv+"=probe", "STRONGROOM_REAPER_PPID="+strconv.Itoa(os.Getpid()))
	probe.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cfd}
	if err := probe.Run(); err != nil {
		return fail(fmt.Errorf("starting a process inside: %w", err))
	}
	return cg, nil
}

// killCgroup kills every process in cg and waits (up to limit) until it is empty.
func killCgroup(cg string, limit time.Duration) bool {
	os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0)
	deadline := time.Now().Add(limit)
	for {
		b, err := os.ReadFile(filepath.Join(cg, "cgroup.events"))
		if err != nil || strings.Contains(string(b), "populated 0") {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// removeCgroup removes an emptied cgroup (rmdir can briefly see the last exiting task).
func removeCgroup(cg string) {
	for range 100 {
		if err := unix.Rmdir(cg); err == nil || errors.Is(err, unix.ENOENT) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// alive says whether pid names a process (a recycled pid looks alive: the sweep then
// leaves a leftover for a later start).
func alive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// ownerPid parses the launcher pid out of "PREFIX<pid>-<random>".
func ownerPid(name, prefix string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false
	}
	p, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(p)
	return pid, err == nil && pid > 0
}

// sweep removes what launchers killed with -9 left behind and their reapers did not
// clean: link directories in tempDir and run cgroups under cgParent (killed first) whose
// launcher is gone. It returns how many it removed.
func sweep(tempDir, cgParent string) int {
	n := 0
	if ents, err := os.ReadDir(tempDir); err == nil {
		for _, e := range ents {
			if pid, ok := ownerPid(e.Name(), linkDirPrefix); ok && e.IsDir() && !alive(pid) {
				if os.RemoveAll(filepath.Join(tempDir, e.Name())) == nil {
					n++
				}
			}
		}
	}
	if cgParent == "" {
		return n
	}
	if ents, err := os.ReadDir(cgParent); err == nil {
		for _, e := range ents {
			if pid, ok := ownerPid(e.Name(), cgroupPrefix); ok && e.IsDir() && !alive(pid) {
				cg := filepath.Join(cgParent, e.Name())
				killCgroup(cg, time.Second)
				removeCgroup(cg)
				n++
			}
		}
	}
	return n
}
