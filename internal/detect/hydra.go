package detect

import (
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"sort"
	"time"
)

// Distributed ("hydra") extraction (threat 5): one campaign spread over many keys, each
// below every per-principal threshold. The hot path only keeps a small sketch per
// principal; Cluster, run in the background (or every ClusterEvery requests in replay),
// links principals that share prompt templates and scores each linked group.

// hydraSketch is bounded: a few skeletons, a few /24 (or /48) networks, totals.
type hydraSketch struct {
	skels     [6]skelCount
	nets      [4]uint64
	first     time.Time
	last      time.Time
	reqs      int
	complToks int
	hours     uint32
	topics    [16]uint64 // 1024 buckets of the content words after the template
	words     int        // content words hashed into them
}

// addTopics sets the buckets of up to 32 content words (4+ bytes) after the first four,
// and returns how many it hashed.
func addTopics(topics *[16]uint64, p string) int {
	word, n := 0, 0
	for i := 0; i < len(p) && n < 32; {
		for i < len(p) && (p[i] == ' ' || p[i] == '\n' || p[i] == '\t') {
			i++
		}
		j := i
		for j < len(p) && p[j] != ' ' && p[j] != '\n' && p[j] != '\t' {
			j++
		}
		if word >= 4 && j-i >= 4 {
			b := hashLower(p[i:j]) % 1024
			topics[b/64] |= 1 << (b % 64)
			n++
		}
		word++
		i = j
	}
	return n
}

func (h *hydraSketch) coverage() int {
	n := 0
	for _, w := range h.topics {
		n += bits.OnesCount64(w)
	}
	return n
}

// netOf hashes the /24 (IPv4) or /48 (IPv6) network of ip, without allocating.
func netOf(ip string) uint64 {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return 0
	}
	a = a.Unmap()
	b := a.As16()
	n := 6
	if a.Is4() {
		n = 15 // ::ffff:a.b.c — the first three bytes of the IPv4 address
	}
	h := uint64(14695981039346656037)
	for _, c := range b[:n] {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h | 1 // never 0, which means "none"
}

func (h *hydraSketch) observe(r *Request, f *Features) {
	sk := f.Skel
	for i, w := range f.Topics {
		h.topics[i] |= w
	}
	h.words += f.TopicWords
	if h.first.IsZero() {
		h.first = r.TS
	}
	h.last = r.TS
	h.reqs++
	h.complToks += r.CompletionTokens
	h.hours |= 1 << uint(r.TS.UTC().Hour())
	hit := false
	for i := range h.skels {
		if h.skels[i].h == sk && h.skels[i].n > 0 {
			h.skels[i].n++
			hit = true
			break
		}
	}
	if !hit {
		lo := 0
		for i := range h.skels {
			if h.skels[i].n < h.skels[lo].n {
				lo = i
			}
		}
		h.skels[lo] = skelCount{h: sk, n: h.skels[lo].n + 1}
	}
	if n := f.Net; n != 0 && !slices.Contains(h.nets[:], n) {
		copy(h.nets[1:], h.nets[:len(h.nets)-1])
		h.nets[0] = n
	}
}

// clusterChunk is how many principals' sketches Cluster copies per hold of the engine lock.
const clusterChunk = 1024

// Campaign is a group of principals the clustering links and scores as one actor.
type Campaign struct {
	Members   []string
	Requests  int
	Tokens    int
	Networks  int
	Evidence  string
	Detected  time.Time
	Templates int
}

type unionFind map[string]string

func (u unionFind) find(x string) string {
	for u[x] != x {
		u[x] = u[u[x]]
		x = u[x]
	}
	return x
}

func (u unionFind) union(a, b string) {
	ra, rb := u.find(a), u.find(b)
	if ra != rb {
		u[ra] = rb
	}
}

// Cluster links principals seen within the window before now that share a main prompt
// template, and returns the groups that look like one campaign: at least
// HydraMinMembers keys, none of them heavy alone, together output-heavy, and concentrated
// in few networks or started together.
func (e *Engine) Cluster(now time.Time) []Campaign {
	type member struct {
		name string
		h    hydraSketch
	}
	// The request path waits on the engine lock: take the list of states in one short
	// hold, then copy their sketches a chunk at a time (a state evicted in between is
	// read as it was; CampaignAlerts skips principals no longer tracked).
	e.mu.Lock()
	sts := make([]*principalState, 0, e.lru.Len())
	for el := e.lru.Front(); el != nil; el = el.Next() {
		sts = append(sts, el.Value.(*principalState))
	}
	e.mu.Unlock()
	ms := make([]member, 0, len(sts))
	window := time.Duration(e.cfg.HydraWindowHours) * time.Hour
	for chunk := range slices.Chunk(sts, clusterChunk) {
		e.mu.Lock()
		for _, st := range chunk {
			if st.hy.reqs >= 3 && now.Sub(st.hy.last) <= window {
				ms = append(ms, member{st.name, st.hy})
			}
		}
		e.mu.Unlock()
	}

	// Link by shared main skeletons (a skeleton counts for a principal when it is at
	// least a quarter of its requests).
	uf := unionFind{}
	bySkel := map[uint64][]string{}
	users := map[uint64]int{} // principals that used a template at all (among their top 6)
	for _, m := range ms {
		uf[m.name] = m.name
		for _, s := range m.h.skels {
			if s.n > 0 {
				users[s.h]++
			}
			if s.n > 0 && s.n*4 >= m.h.reqs {
				bySkel[s.h] = append(bySkel[s.h], m.name)
			}
		}
	}
	for _, names := range bySkel {
		for _, n := range names[1:] {
			uf.union(names[0], n)
		}
	}
	groups := map[string][]int{}
	for i, m := range ms {
		r := uf.find(m.name)
		groups[r] = append(groups[r], i)
	}
	var out []Campaign
	for _, idx := range groups {
		if len(idx) < e.cfg.HydraMinMembers {
			continue
		}
		var c Campaign
		nets := map[uint64]bool{}
		var firsts []time.Time
		heavyAlone := 0
		skels := map[uint64]int{} // template -> members it links
		var union [16]uint64
		cover, words := 0, 0
		for _, i := range idx {
			m := ms[i]
			c.Members = append(c.Members, m.name)
			c.Requests += m.h.reqs
			c.Tokens += m.h.complToks
			for _, n := range m.h.nets {
				if n != 0 {
					nets[n] = true
				}
			}
			for _, s := range m.h.skels {
				if s.n*4 >= m.h.reqs {
					skels[s.h]++
				}
			}
			firsts = append(firsts, m.h.first)
			for k := range union {
				union[k] |= m.h.topics[k]
			}
			cover += m.h.coverage()
			words += m.h.words
			if m.h.complToks >= e.cfg.DistillMinTokens {
				heavyAlone++
			}
		}
		sort.Slice(firsts, func(a, b int) bool { return firsts[a].Before(firsts[b]) })
		// Spread of start times across the middle 80% of members.
		lo, hi := firsts[len(firsts)/10], firsts[len(firsts)-1-len(firsts)/10]
		together := hi.Sub(lo) <= time.Duration(e.cfg.HydraStartSpreadMinutes)*time.Minute
		concentrated := float64(len(nets)) <= 0.3*float64(len(idx))
		mean := float64(c.Tokens) / float64(max(c.Requests, 1))
		c.Networks, c.Templates = len(nets), len(skels)
		// Complementary coverage: each key keeps to a narrow vocabulary (few distinct
		// content words for the words it sends: it repeats its slice), while together they
		// reach far more. A fleet of replicas serving general traffic is broad per key.
		// Judged once the keys have sent 40 content words each on average.
		u := (&hydraSketch{topics: union}).coverage()
		spread := float64(u) / max(float64(cover)/float64(len(idx)), 1)
		narrow := float64(cover) <= 0.5*float64(words)
		complementary := words >= 40*len(idx) && narrow && spread >= 3
		// One pipeline: the most shared template links most members. Ordinary users who
		// reuse popular phrasings are chained pair by pair through many templates, none of
		// which most of the group uses.
		core, links, coreSkel := 0, 0, uint64(0)
		for h, n := range skels {
			if n > core || (n == core && h < coreSkel) {
				core, coreSkel = n, h
			}
			links += n
		}
		// A popular phrasing — a template many principals outside the group use too — is
		// no pipeline of the group's own.
		popular := users[coreSkel] > 2*len(idx)
		// Clones: the members use the same templates (a pipeline run under many keys), not
		// each a different personal mix that overlaps the others'.
		density := float64(links) / float64(len(idx)*max(len(skels), 1))
		cohesive := float64(core) >= e.cfg.HydraCore*float64(len(idx)) && density >= e.cfg.HydraDensity && !popular
		if heavyAlone*2 > len(idx) || mean < float64(e.cfg.DistillMeanOutput) || c.Tokens < e.cfg.HydraMinTokens ||
			!complementary || !(together || concentrated) || !cohesive {
			continue
		}
		sort.Strings(c.Members)
		c.Detected = now
		c.Evidence = fmt.Sprintf("%d keys share %d prompt template(s), one of them used by %d (and by %d principals in all), density %.2f; together %d requests, %d output tokens (%.0f per request) from %d networks; starts within %s; together they cover %.1f× the topics of one key",
			len(idx), len(skels), core, users[coreSkel], density, c.Requests, c.Tokens, mean, len(nets), hi.Sub(lo).Round(time.Minute), spread)
		out = append(out, c)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Members[0] < out[b].Members[0] })
	return out
}
