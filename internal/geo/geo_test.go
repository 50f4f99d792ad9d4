package geo

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// writeMMDB builds a real MaxMind-format database with mmdbwriter.
func writeMMDB(t *testing.T, nets map[string]string) string {
	tree, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: "GeoLite2-Country", RecordSize: 24, IncludeReservedNetworks: true})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, cc := range nets {
		_, n, _ := net.ParseCIDR(cidr)
		if err := tree.Insert(n, mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(cc)}}); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(t.TempDir(), "geo.mmdb")
	f, _ := os.Create(p)
	defer f.Close()
	if _, err := tree.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMMDB(t *testing.T) {
	p := writeMMDB(t, map[string]string{"203.0.113.0/24": "IR", "198.51.100.0/24": "DE", "2001:db8::/32": "US"})
	m, err := OpenMMDB(p)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for ip, want := range map[string]string{
		"203.0.113.7": "IR", "198.51.100.1": "DE", "2001:db8::1": "US", "192.0.2.1": "", "::ffff:203.0.113.9": "IR",
	} {
		if got := m.Country(netip.MustParseAddr(ip)); got != want {
			t.Errorf("%s: %q, want %q", ip, got, want)
		}
	}
	if _, err := OpenMMDB(filepath.Join(t.TempDir(), "missing.mmdb")); err == nil {
		t.Fatal("missing file opened")
	}
}

func TestTorRanges(t *testing.T) {
	dir := t.TempDir()
	// 3405803776 = 203.0.113.0, 3405804031 = 203.0.113.255
	os.WriteFile(filepath.Join(dir, "geoip"), []byte("# comment\n3405803776,3405804031,kp\n16777216,16777471,AU\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "geoip6"), []byte("2001:db8::,2001:db8:ffff:ffff:ffff:ffff:ffff:ffff,SY\n"), 0o644)
	r, err := OpenTor(filepath.Join(dir, "geoip"), filepath.Join(dir, "geoip6"))
	if err != nil {
		t.Fatal(err)
	}
	for ip, want := range map[string]string{"203.0.113.1": "KP", "1.0.0.5": "AU", "1.0.1.0": "", "2001:db8::5": "SY", "2001:db9::": ""} {
		if got := r.Country(netip.MustParseAddr(ip)); got != want {
			t.Errorf("%s: %q, want %q", ip, got, want)
		}
	}
	if _, err := OpenTor(filepath.Join(dir, "none"), filepath.Join(dir, "none6")); err == nil {
		t.Fatal("no files accepted")
	}
}

func FuzzTorParse(f *testing.F) {
	f.Add("3405803776,3405804031,kp\n")
	f.Add("2001:db8::,2001:db8::ff,SY\n")
	f.Fuzz(func(t *testing.T, s string) {
		r := &Ranges{}
		if r.parse(strings.NewReader(s)) != nil {
			return
		}
		r.sort()
		for i := range r.from {
			r.Country(r.from[i])
		}
	})
}

func TestInternal(t *testing.T) {
	next := Internal{} // stands in for a database that knows nothing
	in := Internal{Home: "US", Next: next}
	for addr, want := range map[string]string{
		"127.0.0.1": "US", "::1": "US", "10.1.2.3": "US", "192.168.0.9": "US", "172.16.0.1": "US", "fd00::1": "US",
		"::ffff:10.0.0.1": "US", "169.254.1.1": "US", "8.8.8.8": "", "172.32.0.1": "", "2001:4860::1": "",
	} {
		if got := in.Country(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: %q, want %q", addr, got, want)
		}
	}
	if got := (Internal{}).Country(netip.MustParseAddr("127.0.0.1")); got != "" {
		t.Errorf("no internal country: %q", got)
	}
}
