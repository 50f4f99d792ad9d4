package policy

import (
	"strconv"
	"sync"
)

// decisionCacheSize bounds a set's cache of gateway decisions; when full it starts over.
const decisionCacheSize = 8192

// decisionCache remembers Decide's answers for one Set: a set is immutable (a reload makes
// a new one, with an empty cache), and Decide is a function of the request alone, so a
// request seen before has the same answer. A key is every field of the request.
type decisionCache struct {
	mu sync.Mutex
	m  map[string]Decision
}

func (c *decisionCache) get(k []byte) (Decision, bool) {
	c.mu.Lock()
	d, ok := c.m[string(k)] // no string made for a lookup
	c.mu.Unlock()
	return d, ok
}

func (c *decisionCache) put(k string, d Decision) {
	c.mu.Lock()
	if c.m == nil || len(c.m) >= decisionCacheSize {
		c.m = make(map[string]Decision, 256)
	}
	c.m[k] = d
	c.mu.Unlock()
}

// appendKey appends to b an encoding of every field of r, unambiguous (strings and lists
// length-prefixed).
func (r *Request) appendKey(b []byte) []byte {
	str := func(s string) {
		b = strconv.AppendInt(b, int64(len(s)), 10)
		b = append(b, ':')
		b = append(b, s...)
	}
	list := func(xs []string) {
		b = strconv.AppendInt(b, int64(len(xs)), 10)
		b = append(b, '[')
		for _, x := range xs {
			str(x)
		}
	}
	num := func(n int64) {
		b = strconv.AppendInt(b, n, 10)
		b = append(b, ';')
	}
	flag := func(v bool) {
		if v {
			b = append(b, 't')
		} else {
			b = append(b, 'f')
		}
	}
	p, m, c := &r.Principal, &r.Model, &r.Context
	str(r.Action)
	str(p.ID)
	str(p.Tenant)
	str(p.Org)
	str(p.Country)
	str(p.Screening)
	list(p.Roles)
	str(m.Name)
	str(m.Classification)
	list(m.AllowedCountries)
	list(m.DeniedCountries)
	str(c.Endpoint)
	str(c.ClientCountry)
	str(c.IP)
	num(int64(c.HourUTC))
	num(c.MFAAgeS)
	flag(c.Stream)
	flag(c.Logprobs)
	num(int64(c.TopLogprobs))
	flag(c.LogitBias)
	num(int64(c.N))
	num(int64(c.MaxTokens))
	num(c.TemperatureMilli)
	return b
}
