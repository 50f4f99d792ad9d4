package testenv

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// FakeRedis listens on 127.0.0.1:0 and runs serve on each connection until t ends, when the
// listener and every connection are closed: an attacker's Redis server for tests, which
// answers as serve writes (ReadCommand reads what the client sends).
func FakeRedis(t testing.TB, serve func(net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln
}

// ReadCommand reads one client command: a RESP array of bulk strings, at least one.
func ReadCommand(br *bufio.Reader) ([]string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 4 || line[0] != '*' {
		return nil, fmt.Errorf("not a command: %q", line)
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("not a command: %q", line)
	}
	args := make([]string, n)
	for i := range args {
		h, err := br.ReadString('\n')
		if err != nil {
			return nil, err
		}
		if h[0] != '$' {
			return nil, fmt.Errorf("not a bulk string: %q", h)
		}
		m, err := strconv.Atoi(strings.TrimSpace(h[1:]))
		if err != nil || m < 0 {
			return nil, fmt.Errorf("not a bulk string: %q", h)
		}
		b := make([]byte, m+2)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, err
		}
		args[i] = string(b[:m])
	}
	return args, nil
}
