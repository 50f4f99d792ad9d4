package detect

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Scenarios the simulator knows. "all" mixes every benign population with every attack.
var Scenarios = []string{"benign-chat", "benign-batch", "benign-agent", "benign-logitbias", "logit-harvest", "probing", "egress", "all"}

var words = strings.Fields(`the model data report market energy policy climate history music
science travel recipe garden health budget law contract river city school language network
security cloud storage planet ocean theory novel poem code function error design physics
chemistry biology finance sport film camera battery engine bridge museum festival`)

type sim struct {
	rng   *rand.Rand
	start time.Time
	out   []Request
}

func (s *sim) sentence(n int) string {
	ws := make([]string, n)
	for i := range ws {
		ws[i] = words[s.rng.IntN(len(words))]
	}
	return strings.Join(ws, " ")
}

func (s *sim) add(r Request) { s.out = append(s.out, r) }

func (s *sim) at(hours float64) time.Time {
	return s.start.Add(time.Duration(hours * float64(time.Hour)))
}

// Simulate writes a labelled trace for a scenario; intensity scales attack volume (1 is
// the default; 0.2 gives low-and-slow variants).
func Simulate(scenario string, seed uint64, intensity float64) ([]Request, error) {
	s := &sim{rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), start: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	if intensity <= 0 {
		intensity = 1
	}
	gens := map[string]func(){
		"benign-chat":      func() { s.benignChat(40) },
		"benign-batch":     func() { s.benignBatch(5) },
		"benign-agent":     func() { s.benignAgent(10) },
		"benign-logitbias": func() { s.benignLogitBias(10) },
		"logit-harvest":    func() { s.logitHarvest(3, intensity) },
		"probing":          func() { s.probing(3, intensity) },
		"egress":           func() { s.egress(2, intensity) },
	}
	if scenario == "all" {
		for _, n := range Scenarios[:len(Scenarios)-1] {
			gens[n]()
		}
	} else if g, ok := gens[scenario]; ok {
		if !strings.HasPrefix(scenario, "benign") {
			s.benignChat(20) // attacks hide in benign traffic
		}
		g()
	} else {
		return nil, fmt.Errorf("unknown scenario %q (want one of %s)", scenario, strings.Join(Scenarios, ", "))
	}
	sort.SliceStable(s.out, func(i, j int) bool { return s.out[i].TS.Before(s.out[j].TS) })
	return s.out, nil
}

func (s *sim) benignChat(users int) {
	for u := range users {
		p := fmt.Sprintf("chat-user-%d", u)
		n := 30 + s.rng.IntN(120)
		for i := range n {
			r := Request{TS: s.at(float64(i)*48/float64(n) + s.rng.Float64()), Principal: p, Model: "frontier", Endpoint: "chat",
				Prompt: s.sentence(8 + s.rng.IntN(40)), PromptTokens: 40, CompletionTokens: 100 + s.rng.IntN(400), Label: "benign"}
			if s.rng.IntN(10) == 0 {
				r.Params.Logprobs, r.Params.TopLogprobs = true, 1+s.rng.IntN(5)
			}
			s.add(r)
		}
	}
}

// benignBatch: fixed templates over a dataset — the classic hard negative for probing.
func (s *sim) benignBatch(jobs int) {
	for j := range jobs {
		p := fmt.Sprintf("batch-job-%d", j)
		tmpl := "Summarize the following customer review in one sentence and rate its sentiment:"
		for i := range 400 {
			s.add(Request{TS: s.at(float64(i) * 0.05), Principal: p, Model: "frontier", Endpoint: "completions",
				Prompt: tmpl + " " + s.sentence(25+s.rng.IntN(30)), PromptTokens: 60, CompletionTokens: 40, Label: "benign"})
		}
	}
}

// benignAgent: agents that retry the same prompt and grow a conversation turn by turn.
func (s *sim) benignAgent(agents int) {
	for a := range agents {
		p := fmt.Sprintf("agent-%d", a)
		ctx := s.sentence(30)
		for i := range 120 {
			if s.rng.IntN(4) != 0 {
				ctx += " " + s.sentence(15+s.rng.IntN(20))
			}
			for range 1 + s.rng.IntN(2) { // retries send the identical prompt
				s.add(Request{TS: s.at(float64(i) * 0.2), Principal: p, Model: "frontier", Endpoint: "chat",
					Prompt: ctx, PromptTokens: len(ctx) / 4, CompletionTokens: 200, Label: "benign"})
			}
			if len(ctx) > 4000 {
				ctx = s.sentence(30)
			}
		}
	}
}

// benignLogitBias: apps that ban a fixed handful of tokens and read logprobs.
func (s *sim) benignLogitBias(apps int) {
	for a := range apps {
		p := fmt.Sprintf("bias-app-%d", a)
		banned := map[string]float64{}
		for range 3 + s.rng.IntN(8) {
			banned[strconv.Itoa(s.rng.IntN(4096))] = -100
		}
		for i := range 300 {
			s.add(Request{TS: s.at(float64(i) * 0.1), Principal: p, Model: "frontier", Endpoint: "chat", Prompt: s.sentence(20),
				Params: Params{Logprobs: true, TopLogprobs: 5, LogitBias: banned}, PromptTokens: 30, CompletionTokens: 50, Label: "benign"})
		}
	}
}

// logitHarvest: sweep the vocabulary 5 biased tokens at a time, reading top-5 logprobs
// (Carlini et al. 2024), on a fixed prompt.
func (s *sim) logitHarvest(attackers int, intensity float64) {
	for a := range attackers {
		p := fmt.Sprintf("harvester-%d", a)
		prompt := s.sentence(12)
		n := int(1000 * intensity)
		for i := range n {
			bias := map[string]float64{}
			for k := range 5 {
				bias[strconv.Itoa((i*5+k)%4096)] = 100
			}
			s.add(Request{TS: s.at(10 + float64(i)*0.01/intensity), Principal: p, Model: "frontier", Endpoint: "completions", Prompt: prompt,
				Params: Params{MaxTokens: 1, Logprobs: true, TopLogprobs: 5, LogitBias: bias}, PromptTokens: 12, CompletionTokens: 1, Label: "logit-harvest"})
		}
	}
}

// probing: finite-difference style edits of one prompt.
func (s *sim) probing(attackers int, intensity float64) {
	for a := range attackers {
		p := fmt.Sprintf("prober-%d", a)
		base := []byte(s.sentence(40))
		n := int(300 * intensity)
		for i := range n {
			b := append([]byte(nil), base...)
			for range 1 + s.rng.IntN(2) {
				j := s.rng.IntN(len(b))
				if b[j] != ' ' {
					b[j] = byte('a' + s.rng.IntN(26))
				}
			}
			s.add(Request{TS: s.at(20 + float64(i)*0.02/intensity), Principal: p, Model: "frontier", Endpoint: "chat", Prompt: string(b),
				Params: Params{Logprobs: true, TopLogprobs: 5}, PromptTokens: 60, CompletionTokens: 5, Label: "probing"})
		}
	}
}

// egress: a steady user for two days, then an hour of bulk output.
func (s *sim) egress(users int, intensity float64) {
	for u := range users {
		p := fmt.Sprintf("exfil-%d", u)
		for h := range 30 {
			for i := range 5 {
				s.add(Request{TS: s.at(float64(h) + float64(i)*0.1), Principal: p, Model: "frontier", Endpoint: "chat", Prompt: s.sentence(20),
					PromptTokens: 30, CompletionTokens: 300, Label: "benign"})
			}
		}
		for i := range int(400 * intensity) {
			s.add(Request{TS: s.at(30.5 + float64(i)*0.002), Principal: p, Model: "frontier", Endpoint: "chat", Prompt: s.sentence(20),
				PromptTokens: 30, CompletionTokens: 4000, Label: "egress"})
		}
	}
}
