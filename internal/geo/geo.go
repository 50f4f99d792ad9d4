// Package geo maps a client address to its ISO 3166-1 country: from a MaxMind-format .mmdb
// file, or, when none is configured, from Debian's tor-geoipdb ranges if installed.
package geo

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/oschwald/maxminddb-golang/v2"
)

// Locator answers Country; "" means unknown, which policy treats as untrusted.
type Locator interface {
	Country(ip netip.Addr) string
	Close() error
}

// MMDB is a MaxMind-format database (GeoLite2/GeoIP2 Country or City, or compatible).
type MMDB struct{ r *maxminddb.Reader }

// OpenMMDB opens a .mmdb file.
func OpenMMDB(path string) (*MMDB, error) {
	r, err := maxminddb.Open(path)
	if err != nil {
		return nil, fmt.Errorf("geo: %s: %w", path, err)
	}
	return &MMDB{r: r}, nil
}

type countryRecord struct {
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
}

// Country implements Locator.
func (m *MMDB) Country(ip netip.Addr) string {
	var rec countryRecord
	if err := m.r.Lookup(ip.Unmap()).Decode(&rec); err != nil {
		return ""
	}
	return rec.Country.ISOCode
}

// Close releases the database.
func (m *MMDB) Close() error { return m.r.Close() }

// Ranges is a sorted table of address ranges, as in tor's geoip files.
type Ranges struct {
	from, to []netip.Addr
	cc       []string
}

// Tor's files in Debian's tor-geoipdb package.
const (
	TorGeoIP4 = "/usr/share/tor/geoip"
	TorGeoIP6 = "/usr/share/tor/geoip6"
)

// OpenTor loads tor's geoip (IPv4: "FROM,TO,CC" as integers) and geoip6 ("FROM,TO,CC" as
// addresses) files; a missing file is skipped, both missing is an error.
func OpenTor(v4, v6 string) (*Ranges, error) {
	r := &Ranges{}
	found := false
	for _, p := range []string{v4, v6} {
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		err = r.parse(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("geo: %s: %w", p, err)
		}
		found = true
	}
	if !found {
		return nil, errors.New("geo: no tor geoip files (install tor-geoipdb, or configure an .mmdb file)")
	}
	r.sort()
	return r, nil
}

func parseAddr(s string) (netip.Addr, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), nil
	}
	return netip.ParseAddr(s)
}

// parse reads "FROM,TO,CC" lines; comments start with #.
func (r *Ranges) parse(rd io.Reader) error {
	sc := bufio.NewScanner(rd)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		parts := strings.Split(line, ",")
		if len(parts) != 3 {
			return fmt.Errorf("line %d: want FROM,TO,CC", n)
		}
		from, err1 := parseAddr(parts[0])
		to, err2 := parseAddr(parts[1])
		if err1 != nil || err2 != nil || from.Is4() != to.Is4() || to.Less(from) || len(parts[2]) != 2 {
			return fmt.Errorf("line %d: bad range", n)
		}
		r.from, r.to, r.cc = append(r.from, from), append(r.to, to), append(r.cc, strings.ToUpper(parts[2]))
	}
	return sc.Err()
}

func (r *Ranges) sort() {
	idx := make([]int, len(r.from))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return r.from[idx[a]].Less(r.from[idx[b]]) })
	from, to, cc := make([]netip.Addr, len(idx)), make([]netip.Addr, len(idx)), make([]string, len(idx))
	for i, j := range idx {
		from[i], to[i], cc[i] = r.from[j], r.to[j], r.cc[j]
	}
	r.from, r.to, r.cc = from, to, cc
}

// Country implements Locator with a binary search.
func (r *Ranges) Country(ip netip.Addr) string {
	ip = ip.Unmap()
	i := sort.Search(len(r.from), func(i int) bool { return ip.Less(r.from[i]) }) - 1
	if i < 0 || r.to[i].Less(ip) || r.from[i].Is4() != ip.Is4() {
		return ""
	}
	if r.cc[i] == "??" {
		return ""
	}
	return r.cc[i]
}

// Close implements Locator.
func (r *Ranges) Close() error { return nil }

// Internal places the deployment's own networks: loopback, private (RFC 1918, RFC 4193)
// and link-local clients are in Home, which no public database can say; every other
// address is Next's (nil Next: unknown). An empty Home leaves them unknown.
type Internal struct {
	Home string
	Next interface{ Country(netip.Addr) string }
}

func (in Internal) Country(ip netip.Addr) string {
	ip = ip.Unmap()
	if in.Home != "" && (ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast()) {
		return in.Home
	}
	if in.Next == nil {
		return ""
	}
	return in.Next.Country(ip)
}
