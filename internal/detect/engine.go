package detect

import (
	"bytes"
	"container/list"
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"sync"
	"time"

	"github.com/strongroom/strongroom/internal/obs"
)

// Config tunes the detectors; zero values take the defaults in New.
type Config struct {
	// Logit harvesting: alert once a principal has had logprobs for this many distinct
	// logit-biased token ids on one model.
	HarvestTokens int `json:"harvest_tokens,omitempty"`
	// Vocab is the vocabulary size used to report the leakage meter (full logit vectors).
	Vocab int `json:"vocab,omitempty"`
	// Probing: alert when this many of the last ProbeWindow prompts are near-duplicates
	// of an earlier prompt in the window, not identical — SimHash of word bigrams within
	// ProbeBits (character edits), or word sets differing in at most ProbeWords bits of
	// their 128-bit signatures (about ProbeWords/2 words swapped, inserted or deleted) —
	// and those edits fall in at least ProbeSpread different places of the prompt. (A
	// template whose slots are a word or two also yields prompts a few words apart, but
	// always at the same places: its slots.)
	//
	// The count is per base prompt: a near-duplicate joins the family of the prompt it is
	// a near-duplicate of, and only one family's members count. A prober perturbs one or a
	// few base prompts many times; a chat user retries many different prompts a few times
	// each, which makes many small families. And the family's edits must be dispersed:
	// at most ProbeTop3 of them in its three most edited places (a phrasing reused with
	// different words in its slots is edited at the slots; typo retries add a few places).
	ProbeWindow int     `json:"probe_window,omitempty"`
	ProbeHits   int     `json:"probe_hits,omitempty"`
	ProbeTop3   float64 `json:"probe_top3,omitempty"`
	ProbeBits   int     `json:"probe_bits,omitempty"`
	ProbeWords  int     `json:"probe_words,omitempty"`
	ProbeSpread int     `json:"probe_spread,omitempty"`
	// Egress: alert when a principal's completion tokens in the current hour exceed
	// EgressFactor times its hourly baseline (and EgressFloor), after EgressWarmup hours.
	EgressFactor float64 `json:"egress_factor,omitempty"`
	EgressFloor  int     `json:"egress_floor,omitempty"`
	EgressWarmup int     `json:"egress_warmup_hours,omitempty"`
	// Distillation, per principal and UTC day: alert from DistillMinRequests requests and
	// DistillMinTokens output tokens, when outputs average DistillMeanOutput tokens, the
	// principal was active in DistillActiveHours hours, and the prompts are templated or
	// ask for reasoning.
	DistillMinRequests int `json:"distill_min_requests,omitempty"`
	DistillMinTokens   int `json:"distill_min_tokens,omitempty"`
	DistillMeanOutput  int `json:"distill_mean_output,omitempty"`
	DistillActiveHours int `json:"distill_active_hours,omitempty"`
	// Hydra: groups of at least HydraMinMembers principals linked by shared templates
	// within HydraWindowHours, together HydraMinTokens output tokens, each on a narrow
	// slice of topics that together cover far more, started within HydraStartSpreadMinutes
	// of each other or from few networks. ClusterEvery > 0 clusters every that many
	// requests inside Observe (replay, evaluation); 0 leaves it to the caller (the
	// gateway's responder runs it in the background).
	HydraMinMembers         int `json:"hydra_min_members,omitempty"`
	HydraMinTokens          int `json:"hydra_min_tokens,omitempty"`
	HydraWindowHours        int `json:"hydra_window_hours,omitempty"`
	HydraStartSpreadMinutes int `json:"hydra_start_spread_minutes,omitempty"`
	// HydraCore: the group's most shared template must link at least this share of its
	// members (one pipeline, not users chained through popular phrasings).
	HydraCore float64 `json:"hydra_core,omitempty"`
	// HydraDensity: and the members must use the same templates — of all (member, group
	// template) pairs at least this share used — clones of one pipeline, not personal mixes
	// of popular phrasings that overlap.
	HydraDensity float64 `json:"hydra_density,omitempty"`
	ClusterEvery int     `json:"cluster_every,omitempty"`
	// PradaW: the "prada" detector alerts when the Shapiro–Wilk W of a principal's last 64
	// nearest-neighbour prompt distances falls below it (0: off). Off by default: on the
	// simulated suite it does not separate probers (W ≈ 0.89–0.90, a narrow but normal-looking
	// distribution) from agents with growing conversations (W down to 0.71). W is always
	// computed and reported in probing alerts as a second opinion.
	PradaW float64 `json:"prada_w,omitempty"`
	// MaxPrincipals bounds memory: the least recently seen principal is forgotten.
	MaxPrincipals int `json:"max_principals,omitempty"`
	// Actions per detector: "alert", "throttle", "step_up", "strip_logprobs", "suspend": the
	// action once evidence has accumulated (the top of the detector's ladder).
	Actions map[string]obs.Action `json:"actions,omitempty"`
	// Ladders: per detector, the action of its first, second, … alert on one principal;
	// a detector alerts once per step, so as many times as its ladder has steps. It re-arms after each alert, so each step needs as
	// much new evidence as the first (probing: a fresh window of near-duplicates; harvesting:
	// twice the distinct biased ids; distillation: another day; egress: another hour).
	// Default: probing and distillation ["alert", action] — the first alert carries evidence
	// and a score, the sanction comes with the second —, the others [action].
	Ladders map[string][]obs.Action `json:"ladders,omitempty"`
	// Modes: per detector ("*" for any not named) "enforce" or "shadow" (alerts recorded,
	// incidents opened, nothing imposed). A new deployment starts every detector in shadow
	// (config.Defaults); a config without modes enforces (deployments from before modes).
	Modes map[string]string `json:"modes,omitempty"`
}

// ParseConfig reads a config file's "detect" section strictly (an unknown key is an
// error, as everywhere in the config file); an empty section is the zero Config, whose
// defaults New sets.
func ParseConfig(raw []byte) (Config, error) {
	var c Config
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return c, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("config: detect: %w", err)
	}
	return c, nil
}

// JSON is c as a config file's "detect" section (the inverse of ParseConfig).
func (c Config) JSON() json.RawMessage {
	b, _ := json.Marshal(c) // maps, numbers and strings only: cannot fail
	return b
}

// Detectors are the detectors' names.
var Detectors = []string{"logit_harvest", "probing", "egress", "distillation", "hydra", "prada"}

// Mode is "shadow" or "enforce" for detector d.
func (c *Config) Mode(d string) string {
	if m, ok := c.Modes[d]; ok {
		return m
	}
	if m, ok := c.Modes["*"]; ok {
		return m
	}
	return "enforce"
}

// actionAt is the action of detector d's step-th alert (1-based) on one principal.
func (c *Config) actionAt(d string, step int) obs.Action {
	l := c.Ladders[d]
	if len(l) == 0 {
		return c.Actions[d]
	}
	return l[min(step, len(l))-1]
}

func (c *Config) defaults() {
	set := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	set(&c.HarvestTokens, 64)
	set(&c.Vocab, 4096)
	set(&c.ProbeWindow, 64)
	set(&c.ProbeHits, 16)
	set(&c.ProbeBits, 6)
	set(&c.ProbeWords, 6)
	set(&c.ProbeSpread, 6)
	if c.HydraCore == 0 {
		c.HydraCore = 0.75
	}
	if c.HydraDensity == 0 {
		c.HydraDensity = 0.5
	}
	if c.ProbeTop3 == 0 {
		c.ProbeTop3 = 0.6
	}
	set(&c.EgressFloor, 200_000)
	set(&c.EgressWarmup, 24)
	set(&c.MaxPrincipals, 100_000)
	set(&c.DistillMinRequests, 300)
	set(&c.DistillMinTokens, 150_000)
	set(&c.DistillMeanOutput, 250)
	set(&c.DistillActiveHours, 10)
	set(&c.HydraMinMembers, 10)
	set(&c.HydraMinTokens, 100_000)
	set(&c.HydraWindowHours, 72)
	set(&c.HydraStartSpreadMinutes, 360)
	if c.EgressFactor == 0 {
		c.EgressFactor = 10
	}
	if c.Actions == nil {
		c.Actions = map[string]obs.Action{}
	}
	for d, a := range map[string]obs.Action{"logit_harvest": obs.StripLogprobs, "probing": obs.Throttle, "egress": obs.Alert,
		"distillation": obs.Throttle, "hydra": obs.Suspend, "prada": obs.Alert} {
		if _, ok := c.Actions[d]; !ok {
			c.Actions[d] = a
		}
	}
	ladders := map[string][]obs.Action{}
	for d, l := range c.Ladders {
		ladders[d] = l
	}
	for _, d := range Detectors {
		if len(ladders[d]) > 0 {
			continue
		}
		switch d {
		case "probing", "distillation":
			ladders[d] = []obs.Action{obs.Alert, c.Actions[d]}
		default:
			ladders[d] = []obs.Action{c.Actions[d]}
		}
	}
	c.Ladders = ladders
}

// Engine runs every detector over a request stream.
type Engine struct {
	cfg  Config
	mu   sync.Mutex
	ps   map[string]*list.Element
	lru  *list.List
	seen int
}

// principalState is what the engine keeps per principal: bounded whatever the traffic.
type principalState struct {
	name string
	// logit harvesting: biased token ids seen with logprobs, per model (capped).
	biased map[string]map[int32]struct{}
	// probing: ring of the last ProbeWindow prompts (grown as they come, so a principal
	// with few requests holds few) and how many were near-duplicates.
	probes  []probe
	pos     int
	nearN   int
	familyN int32 // the next family id
	// egress: tokens this hour, and an EWMA of past hours.
	hour      int64
	hourToks  int
	baseline  float64
	hoursSeen int
	// distillation: the current UTC day; hydra: the sketch clustering reads.
	day   dayStats
	hy    hydraSketch
	prada pradaState
	// alerts raised per detector (the ladder step of the next one is this + 1), and when
	// the re-arming detectors last alerted (distillation: UTC day; egress: hour).
	alerted    map[string]int
	distillDay int64
	egressHour int64
}

// probe is what the probing detector keeps of one prompt.
type probe struct {
	sketch uint64
	exact  uint64
	wset   [2]uint64
	ends   [endWords * 2]uint8 // word hashes at the prompt's start and end
	plen   int32
	near   bool
	where  int8  // where its edit of a near-duplicate starts (editPlace); -1: none
	family int32 // the base prompt's family: inherited from the near-duplicate it edits
	drift  bool  // not a near-duplicate of the family's earliest prompt in the window
}

// nearDup says whether prompt f is within scale times the near-duplicate distances of q
// (h: their SimHash distance), at most 16 or 48 bytes longer or shorter. Two perturbations
// of one base are up to two edits apart: the family's earliest prompt is compared at scale
// 2; a prompt that grows (a prefix typed on, a draft extended) leaves the length window.
func (e *Engine) nearDup(q *probe, f *Features, h, scale int) bool {
	d := f.PromptLen - q.plen
	return (d <= 16 && d >= -16 && h <= scale*e.cfg.ProbeBits) ||
		(d <= 48 && d >= -48 && bits.OnesCount64(q.wset[0]^f.WordSet[0])+bits.OnesCount64(q.wset[1]^f.WordSet[1]) <= scale*e.cfg.ProbeWords)
}

// family is what the probing detector knows of one base prompt's family in the window.
type family struct {
	edits  int     // members that are near-duplicates (not the base)
	places int     // distinct edit places
	top3   float64 // share of the edits in the three most edited places
}

// familyOf gathers the window's members of family id.
func (st *principalState) familyOf(id int32) family {
	var hist [endWords * 2]int
	var f family
	for i := range st.probes {
		if p := &st.probes[i]; p.family == id && p.near && !p.drift && p.where >= 0 {
			f.edits++
			hist[p.where]++
		}
	}
	var t [3]int
	for _, n := range hist {
		if n > 0 {
			f.places++
		}
		switch {
		case n > t[0]:
			t[0], t[1], t[2] = n, t[0], t[1]
		case n > t[1]:
			t[1], t[2] = n, t[1]
		case n > t[2]:
			t[2] = n
		}
	}
	if f.edits > 0 {
		f.top3 = float64(t[0]+t[1]+t[2]) / float64(f.edits)
	}
	return f
}

// New returns an engine.
func New(cfg Config) *Engine {
	cfg.defaults()
	return &Engine{cfg: cfg, ps: map[string]*list.Element{}, lru: list.New()}
}

func (e *Engine) state(p string) *principalState {
	if el, ok := e.ps[p]; ok {
		e.lru.MoveToFront(el)
		return el.Value.(*principalState)
	}
	if e.lru.Len() >= e.cfg.MaxPrincipals {
		old := e.lru.Back()
		e.lru.Remove(old)
		delete(e.ps, old.Value.(*principalState).name)
	}
	st := &principalState{name: p, biased: map[string]map[int32]struct{}{}, alerted: map[string]int{}}
	e.ps[p] = e.lru.PushFront(st)
	return st
}

// Principals is how many principals are tracked.
func (e *Engine) Principals() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lru.Len()
}

// Observe runs the detectors on one request; index is its position in the stream. It
// returns the alerts this request raised (each detector alerts once per principal).
func (e *Engine) Observe(index int, r *Request) []Alert {
	f := ExtractFeatures(r)
	return e.ObserveFeatures(index, r, &f)
}

// CampaignAlerts clusters (see Cluster) and returns a "hydra" alert for every member of a
// campaign not alerted before.
func (e *Engine) CampaignAlerts(index int, now time.Time) []Alert {
	cs := e.Cluster(now)
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Alert
	for _, c := range cs {
		for _, m := range c.Members {
			el, ok := e.ps[m]
			if !ok {
				continue
			}
			st := el.Value.(*principalState)
			if st.alerted["hydra"] > 0 {
				continue
			}
			st.alerted["hydra"] = 1
			out = append(out, Alert{Principal: m, Detector: "hydra", Index: index, TS: now, Score: float64(len(c.Members)),
				Action: e.cfg.actionAt("hydra", 1), Step: 1, Evidence: c.Evidence})
		}
	}
	return out
}

// Features are what the detectors take from a request's prompt and client address:
// hashes and counts of fixed size, never the text or the address, so that they can travel
// between gateway replicas (see Relay) without carrying prompts.
type Features struct {
	PromptLen  int32               `json:"len,omitempty"` // bytes; 0: no prompt
	Sim        uint64              `json:"sim,omitempty"` // SimHash of word bigrams (probing)
	WordSet    [2]uint64           `json:"wset"`          // 128-bit signature of the set of words (probing)
	Ends       [endWords * 2]uint8 `json:"ends"`          // 8-bit hashes of the first and last words (probing)
	Exact      uint64              `json:"exact,omitempty"`
	Skel       uint64              `json:"skel,omitempty"` // template skeleton (distillation, hydra)
	CoT        bool                `json:"cot,omitempty"`  // asks for reasoning
	Topics     [16]uint64          `json:"topics"`         // content-word buckets (hydra)
	TopicWords int                 `json:"words,omitempty"`
	Net        uint64              `json:"net,omitempty"` // hash of the client's /24 or /48; 0: none
}

// ExtractFeatures computes r's features.
func ExtractFeatures(r *Request) Features {
	f := Features{Net: netOf(r.IP)}
	if r.Prompt != "" {
		f.PromptLen = int32(min(len(r.Prompt), math.MaxInt32))
		f.Sim, f.WordSet, f.Ends = promptSigs(r.Prompt)
		f.Exact = exactHash(r.Prompt)
		f.Skel, f.CoT = skeleton(r.Prompt), asksForReasoning(r.Prompt)
		f.TopicWords = addTopics(&f.Topics, r.Prompt)
	}
	return f
}

// ObserveFeatures is Observe for a request whose prompt and address were already reduced
// to f (r.Prompt and r.IP are not read).
func (e *Engine) ObserveFeatures(index int, r *Request, f *Features) []Alert {
	out := e.observe(index, r, f)
	if e.cfg.ClusterEvery > 0 {
		e.mu.Lock()
		e.seen++
		due := e.seen%e.cfg.ClusterEvery == 0
		e.mu.Unlock()
		if due {
			out = append(out, e.CampaignAlerts(index, r.TS)...)
		}
	}
	return out
}

func (e *Engine) observe(index int, r *Request, f *Features) []Alert {
	sk, ex, skel, cot := f.Sim, f.Exact, f.Skel, f.CoT
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.state(r.Principal)
	var out []Alert
	// raise records the detector's next alert on this principal; the caller has checked
	// that the detector is armed (each re-arms on its own evidence, see Config.Ladders).
	raise := func(det string, score float64, evidence string) {
		if st.alerted[det] >= len(e.cfg.Ladders[det]) {
			return // the top of the ladder is reached: more alerts would add nothing
		}
		st.alerted[det]++
		step := st.alerted[det]
		out = append(out, Alert{Principal: r.Principal, Detector: det, Index: index, TS: r.TS, Score: score,
			Action: e.cfg.actionAt(det, step), Step: step, Evidence: evidence})
	}

	// 1. Logit/logprob harvesting: logit_bias sweeps read back through logprobs.
	if len(r.Params.LogitBias) > 0 && (r.Params.Logprobs || r.Params.TopLogprobs > 0) {
		set := st.biased[r.Model]
		if set == nil {
			set = map[int32]struct{}{}
			st.biased[r.Model] = set
		}
		for tok, bias := range r.Params.LogitBias {
			if math.Abs(bias) < 1 || len(set) >= 4*e.cfg.Vocab {
				continue
			}
			if id, err := strconv.Atoi(tok); err == nil {
				set[int32(id)] = struct{}{}
			}
		}
		if len(set) >= e.cfg.HarvestTokens<<min(st.alerted["logit_harvest"], 16) {
			leak := float64(len(set)) / float64(e.cfg.Vocab)
			raise("logit_harvest", leak, fmt.Sprintf("logprobs read for %d distinct biased token ids on %s (%.3f of a %d-token logit vector)", len(set), r.Model, leak, e.cfg.Vocab))
		}
	}

	// 2. Perturbation probing: near-duplicate prompts in a sliding window. A small edit keeps
	// the length within a few bytes; a conversation that grows turn by turn (agents) or a
	// retry of the identical prompt is not probing.
	if f.PromptLen > 0 {
		near := false
		best := -1 // nearest earlier, non-identical prompt in the window (for PRADA)
		pl := f.PromptLen
		where := int8(-1)
		fam := int32(-1)
		n := len(st.probes)
		for k := 1; k <= n; k++ { // newest first: the place is taken against the latest near-duplicate
			q := &st.probes[(st.pos-k+n)%n]
			if q.exact == ex {
				continue
			}
			h := hamming(q.sketch, sk)
			if best < 0 || h < best {
				best = h
			}
			d := pl - q.plen
			if d > 48 || d < -48 || where >= 0 {
				continue
			}
			if e.nearDup(q, f, h, 1) {
				near, where, fam = true, editPlace(&q.ends, &f.Ends), q.family
			}
		}
		// A prober's perturbations stay edits of the base; a document edited and resent
		// (code, drafts) drifts away from it. Only the first are the family's edits.
		drift := false
		if near {
			for k := n; k >= 1; k-- { // oldest first: the family's earliest prompt in the window
				if q := &st.probes[(st.pos-k+n)%n]; q.family == fam {
					drift = q.exact != ex && !e.nearDup(q, f, hamming(q.sketch, sk), 2)
					break
				}
			}
		}
		if best >= 0 {
			if w, ok := st.prada.add(best); ok && w < e.cfg.PradaW && st.alerted["prada"] == 0 {
				raise("prada", 1-w, fmt.Sprintf("nearest-neighbour distances of the last %d prompts are far from normal (Shapiro-Wilk W %.3f)", pradaN, w))
			}
		}
		if fam < 0 {
			fam = st.familyN
			st.familyN++
		}
		p := probe{sketch: sk, exact: ex, wset: f.WordSet, ends: f.Ends, plen: pl, near: near, where: where, family: fam, drift: drift}
		if len(st.probes) < e.cfg.ProbeWindow {
			st.probes = append(st.probes, p)
		} else {
			if st.probes[st.pos].near {
				st.nearN--
			}
			st.probes[st.pos] = p
		}
		if near {
			st.nearN++
		}
		st.pos = (st.pos + 1) % e.cfg.ProbeWindow
		if near && st.nearN >= e.cfg.ProbeHits {
			if fm := st.familyOf(fam); fm.edits >= e.cfg.ProbeHits && fm.places >= e.cfg.ProbeSpread && fm.top3 <= e.cfg.ProbeTop3 {
				second := "PRADA: too few prompts for a second opinion"
				if st.prada.n >= pradaN {
					second = fmt.Sprintf("PRADA second opinion: Shapiro-Wilk W %.3f of nearest-neighbour distances", st.prada.w)
				}
				raise("probing", float64(fm.edits)/float64(e.cfg.ProbeWindow), fmt.Sprintf("%d of the last %d prompts are small edits of one base prompt, at %d different places (%.0f%% in the three most edited); %s",
					fm.edits, len(st.probes), fm.places, 100*fm.top3, second))
				st.probes, st.pos, st.nearN = st.probes[:0], 0, 0 // re-arm: the next step needs a fresh window
			}
		}
	}

	// 3. Egress against the principal's own hourly baseline.
	h := r.TS.Unix() / 3600
	if h != st.hour {
		if st.hour != 0 {
			gap := min(h-st.hour, 48)
			for range gap - 1 { // idle hours pull the baseline down
				st.baseline *= 0.9
			}
			st.baseline = 0.9*st.baseline + 0.1*float64(st.hourToks)
			st.hoursSeen++
		}
		st.hour, st.hourToks = h, 0
	}
	st.hourToks += r.CompletionTokens
	if st.hoursSeen >= e.cfg.EgressWarmup && st.hourToks > e.cfg.EgressFloor && float64(st.hourToks) > e.cfg.EgressFactor*st.baseline &&
		st.egressHour != h {
		st.egressHour = h
		raise("egress", float64(st.hourToks)/max(st.baseline, 1), fmt.Sprintf("%d completion tokens this hour, baseline %.0f", st.hourToks, st.baseline))
	}

	// 4. Distillation over the principal's day; 5. the sketch hydra clustering reads.
	st.day.observe(r, skel, cot)
	if day := r.TS.Unix() / 86400; st.distillDay != day {
		if score, ev, ok := e.cfg.distillation(&st.day); ok {
			st.distillDay = day
			raise("distillation", score, ev)
		}
	}
	st.hy.observe(r, f)
	return out
}
