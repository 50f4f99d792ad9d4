package gateway

import (
	"net/http"
	"net/netip"
	"testing"
)

// FuzzIPText: whatever the peer address and the client address taken from it (or from a
// trusted proxy's header), ipText is the address's own text.
func FuzzIPText(f *testing.F) {
	for _, c := range [][2]string{
		{"1.2.3.4:5", "1.2.3.4"}, {"1.2.3.4:5", "5.6.7.8"}, {"[::1]:5", "::1"},
		{"[::ffff:1.2.3.4]:5", "1.2.3.4"}, {"01.2.3.4:5", "1.2.3.4"}, {"1.2.3.4", "1.2.3.4"},
		{"1.2.3.4:", "1.2.3.4"}, {":1.2.3.4:5", "1.2.3.4"}, {"", ""}, {"1.2.3.4%eth0:5", "1.2.3.4"},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, remote, addr string) {
		ip, _ := netip.ParseAddr(addr) // the zero Addr when not one: "invalid IP"
		if got, want := ipText(&http.Request{RemoteAddr: remote}, ip), ip.String(); got != want {
			t.Fatalf("peer %q, client %v: ipText %q, want %q", remote, ip, got, want)
		}
	})
}

// TestIPTextAllocates nothing for an IPv4 peer: every request's policy and detectors take it.
func TestIPTextAllocates(t *testing.T) {
	r := &http.Request{RemoteAddr: "192.0.2.77:51234"}
	ip := netip.MustParseAddr("192.0.2.77")
	if allocs := testing.AllocsPerRun(50, func() { ipText(r, ip) }); allocs != 0 {
		t.Errorf("%.0f allocations, want 0", allocs)
	}
}
