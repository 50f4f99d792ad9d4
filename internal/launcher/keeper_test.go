package launcher

import (
	"io"
	"syscall"
	"testing"
)

// A run that ends before its engine starts (the lease refused, the approval denied) ends
// its reaper: the reaper sees its socket's end and exits by itself, not killed by the
// launcher after close's grace (which is what happened while the socket was closed under
// a reader blocked on it: every refused `strongroom run` took 10 s to return).
func TestKeeperCloseBeforeRunEndsReaper(t *testing.T) {
	for _, mode := range []string{ModeSubreaper, ""} {
		cfg := Config{Containment: mode, Stdout: io.Discard, Stderr: io.Discard}
		k, err := startKeeper(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		if k.cmd == nil {
			t.Fatalf("no reaper: %s", k.note)
		}
		cmd := k.cmd
		k.close()
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if ws.Signaled() || !ws.Exited() || ws.ExitStatus() != 0 {
			t.Fatalf("containment %q: the reaper did not end by itself when the launcher closed before any engine: %v", mode, cmd.ProcessState)
		}
	}
}
