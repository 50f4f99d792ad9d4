package launcher

// The reaper is the strongroom binary re-executed (any binary that links this package: the
// init below takes over when reaperEnv is set) to hold the engine's process tree. It is a
// child subreaper, so every orphan of the tree — a setsid'd or double-forked descendant —
// is reparented to it instead of init; in cgroup mode it also creates the run's cgroup v2
// and starts the engine inside it. It lives in its own session, talks to the launcher over
// a SOCK_SEQPACKET socket (fd 3), and when that socket ends — the launcher exited, however
// it died — it kills the whole tree, waits until nothing of it is left, and removes the
// cgroup and the directory of links.
//
// Protocol (one JSON object per packet; file descriptors ride along with SCM_RIGHTS):
//
//	reaper → launcher  {"ev":"ready","mode":"cgroup|subreaper","cgroup":PATH,"note":...}
//	launcher → reaper  {"op":"files"} + up to 200 memfds, repeated; then
//	                   {"op":"run","cmd":[...],"env":[...],"dir":DIR,"grace":NS}
//	reaper → launcher  {"ev":"started","pid":N}
//	launcher → reaper  {"op":"stop"}: SIGTERM to the engine's group, SIGKILL to the whole
//	                   tree once the engine exits or the grace runs out
//	reaper → launcher  {"ev":"done","code":N,"err":...}: the engine's exit status, sent
//	                   only when every descendant is dead (the engine ending on its own
//	                   also kills what it left behind)
//	EOF (either side)  the tree is killed at once

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// reaperEnv carries the reaper's mode: "subreaper", "cgroup:PARENT", or "probe" (exit at
// once: a child used to check that processes can be started inside the cgroup).
const reaperEnv = "STRONGROOM_REAPER"

func init() {
	v, ok := os.LookupEnv(reaperEnv)
	if !ok {
		return
	}
	if os.Getenv("STRONGROOM_REAPER_PPID") != strconv.Itoa(os.Getppid()) {
		os.Exit(1) // the launcher died while starting it: nothing to hold
	}
	if v == "probe" {
		os.Exit(0)
	}
	os.Exit(reaperMain(v))
}

// Cgroup v2 mode names and the run-cgroup prefix (the sweep at start looks for it).
const (
	ModeCgroup    = "cgroup"
	ModeSubreaper = "subreaper"
	ModeNone      = "none"
	cgroupPrefix  = "strongroom-run-"
	maxRights     = 200 // memfds per packet (the kernel's limit is 253)
)

type reaperMsg struct {
	Op    string   `json:"op,omitempty"`
	Cmd   []string `json:"cmd,omitempty"`
	Env   []string `json:"env,omitempty"`
	Dir   string   `json:"dir,omitempty"`
	Grace int64    `json:"grace,omitempty"`

	Ev     string `json:"ev,omitempty"`
	Mode   string `json:"mode,omitempty"`
	Cgroup string `json:"cgroup,omitempty"`
	Note   string `json:"note,omitempty"`
	Pid    int    `json:"pid,omitempty"`
	Code   int    `json:"code,omitempty"`
	Err    string `json:"err,omitempty"`
}

func sendMsg(fd int, m reaperMsg, files []int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(files) > 0 {
		oob = unix.UnixRights(files...)
	}
	return unix.Sendmsg(fd, b, oob, nil, unix.MSG_NOSIGNAL)
}

// recvMsg reads one packet; io.EOF when the other side is gone. Received descriptors are
// close-on-exec.
func recvMsg(fd int) (reaperMsg, []int, error) {
	buf := make([]byte, 256<<10)
	oob := make([]byte, unix.CmsgSpace(maxRights*4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return reaperMsg{}, nil, err
		}
		if n == 0 && oobn == 0 {
			return reaperMsg{}, nil, errEOF
		}
		var fds []int
		if oobn > 0 {
			cms, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				return reaperMsg{}, nil, err
			}
			for _, cm := range cms {
				got, err := unix.ParseUnixRights(&cm)
				if err == nil {
					fds = append(fds, got...)
				}
			}
		}
		var m reaperMsg
		if err := json.Unmarshal(buf[:n], &m); err != nil {
			closeAll(fds)
			return m, nil, fmt.Errorf("launcher: bad packet: %w", err)
		}
		return m, fds, nil
	}
}

var errEOF = errors.New("peer gone")

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// reaper is the running reaper's state.
type reaper struct {
	sock   int
	cgroup string // the run's cgroup directory; "" in subreaper mode
	dir    string // the directory of links, removed at the end
}

func reaperMain(mode string) int {
	os.Unsetenv(reaperEnv)
	os.Unsetenv("STRONGROOM_REAPER_PPID")
	r := &reaper{sock: 3}
	unix.CloseOnExec(r.sock)
	// Terminal and service-manager signals end the tree too (the default action would
	// orphan it).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGINT)
	ready := reaperMsg{Ev: "ready", Mode: ModeSubreaper}
	if err := Harden(); err != nil {
		ready.Mode, ready.Note = ModeNone, err.Error()
	} else if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		ready.Mode, ready.Note = ModeNone, "PR_SET_CHILD_SUBREAPER: "+err.Error()
	} else if pfd, err := unix.PidfdOpen(os.Getpid(), 0); err != nil {
		ready.Mode, ready.Note = ModeNone, "pidfd_open: "+err.Error()
	} else {
		unix.Close(pfd)
		if parent, ok := strings.CutPrefix(mode, "cgroup:"); ok {
			cg, err := makeCgroup(parent)
			if err != nil {
				ready.Note = err.Error()
			} else {
				r.cgroup, ready.Mode, ready.Cgroup = cg, ModeCgroup, cg
			}
		}
	}
	if err := sendMsg(r.sock, ready, nil); err != nil || ready.Mode == ModeNone {
		r.cleanup()
		return 1
	}
	var files []int
	var run reaperMsg
	for run.Op != "run" {
		m, fds, err := recvMsg(r.sock)
		if err != nil { // no lease, or the launcher is gone before the engine started
			closeAll(files)
			r.cleanup()
			return 0
		}
		files = append(files, fds...)
		run = m
	}
	r.dir = run.Dir
	pid, err := r.start(run, files)
	closeAll(files) // the engine holds them now; the reaper must not
	if err != nil {
		sendMsg(r.sock, reaperMsg{Ev: "done", Code: 1, Err: err.Error()}, nil)
		r.cleanup()
		return 1
	}
	sendMsg(r.sock, reaperMsg{Ev: "started", Pid: pid}, nil)

	exited := make(chan int, 1) // the engine's exit status
	gone := make(chan struct{}) // no children left: nothing of the tree remains
	go reapAll(pid, exited, gone)
	msgs := make(chan reaperMsg)
	go func() {
		for {
			m, fds, err := recvMsg(r.sock)
			closeAll(fds)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- m
		}
	}()
	code := -1
	var grace <-chan time.Time
loop:
	for {
		select {
		case code = <-exited:
			break loop
		case m, ok := <-msgs:
			if !ok {
				break loop // the launcher is gone: no grace
			}
			if m.Op == "stop" && grace == nil {
				unix.Kill(-pid, unix.SIGTERM)
				grace = time.After(time.Duration(run.Grace))
			}
		case <-grace:
			break loop
		case <-sigs:
			break loop
		}
	}
	r.killAll(gone)
	if code == -1 {
		select {
		case code = <-exited:
		default:
		}
	}
	r.cleanup()
	sendMsg(r.sock, reaperMsg{Ev: "done", Code: code}, nil)
	return 0
}

// start runs the engine with the memfds at 3, 4, … in its own process group, inside the
// run's cgroup when there is one, killed if the reaper dies.
func (r *reaper) start(run reaperMsg, files []int) (int, error) {
	if len(run.Cmd) == 0 {
		return 0, errors.New("launcher: no engine command")
	}
	cmd := exec.Command(run.Cmd[0], run.Cmd[1:]...)
	cmd.Env = run.Env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	for _, fd := range files {
		cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(uintptr(fd), "weights"))
	}
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if r.cgroup != "" {
		cfd, err := unix.Open(r.cgroup, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, fmt.Errorf("launcher: cgroup: %w", err)
		}
		defer unix.Close(cfd)
		attr.UseCgroupFD, attr.CgroupFD = true, cfd
	}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("launcher: start engine: %w", err)
	}
	// Never cmd.Wait: reapAll reaps every child, the engine included.
	return cmd.Process.Pid, nil
}

// reapAll reaps every child until none is left (then the tree is gone: as a subreaper,
// the reaper inherits every orphan of it), reporting the engine's exit status on the way.
func reapAll(engine int, exited chan<- int, gone chan<- struct{}) {
	defer close(gone)
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil { // ECHILD
			return
		}
		if pid == engine {
			code := ws.ExitStatus()
			if ws.Signaled() {
				code = -1
			}
			exited <- code
		}
	}
}

// killAll kills every descendant and returns when none is left.
func (r *reaper) killAll(gone <-chan struct{}) {
	if r.cgroup != "" {
		// cgroup.kill is atomic against forks racing with it. A descendant privileged
		// enough to move itself out of the cgroup is still the reaper's descendant: the
		// passes below find it.
		if err := os.WriteFile(filepath.Join(r.cgroup, "cgroup.kill"), []byte("1"), 0); err == nil {
			select {
			case <-gone:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	for {
		killDescendants(os.Getpid())
		select {
		case <-gone:
			return
		case <-time.After(5 * time.Millisecond): // a fork that raced the last pass
		}
	}
}

// killDescendants sends SIGKILL, through a pidfd, to every process whose parent chain
// reaches root. The chain is checked again after the pidfd is open, so a recycled pid is
// never signalled.
func killDescendants(root int) int {
	n := 0
	for _, pid := range descendants(root) {
		pfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		if isDescendant(pid, root) && unix.PidfdSendSignal(pfd, unix.SIGKILL, nil, 0) == nil {
			n++
		}
		unix.Close(pfd)
	}
	return n
}

// ppid reads a process's parent from /proc/PID/stat.
func ppid(pid int) (int, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, false
	}
	p, err := strconv.Atoi(f[1])
	return p, err == nil
}

func isDescendant(pid, root int) bool {
	for range 4096 {
		p, ok := ppid(pid)
		if !ok || p <= 1 {
			return root == 1 && ok
		}
		if p == root {
			return true
		}
		pid = p
	}
	return false
}

// descendants lists root's descendants from /proc.
func descendants(root int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	kids := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := ppid(pid); ok {
			kids[p] = append(kids[p], pid)
		}
	}
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range kids[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// cleanup removes the run's cgroup (empty by now) and the directory of links.
func (r *reaper) cleanup() {
	if r.cgroup != "" {
		removeCgroup(r.cgroup)
	}
	if r.dir != "" {
		os.RemoveAll(r.dir)
	}
}
