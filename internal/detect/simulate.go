package detect

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Scenarios the simulator knows. "all" mixes every benign population listed before it with
// every attack; the hard negatives of issue 14 (populations.go) come after it, not in "all".
var Scenarios = append([]string{
	"benign-chat", "benign-batch", "benign-agent", "benign-logitbias", "benign-eval", "benign-rag", "benign-classifier",
	"benign-writer", "benign-fleet", "benign-slots",
	"logit-harvest", "probing", "egress", "distillation", "hydra", "all",
}, hardNegativeScenarios...)

// general words every topic shares; topic words are synthesized per topic so that topics
// have their own vocabularies (hydra campaigns split the topic space between their keys).
var general = strings.Fields(`the a of and to in is for on with that this how what why when which about from
between explain describe compare write summarize list give example please using new best main`)

const nTopics = 40

var topicWords = func() [][]string {
	syl := strings.Fields("ka lo mi ne ru sa ti vo xe zu ba de fi go hu ja ke li mo nu pa qui ra se to")
	out := make([][]string, nTopics)
	r := rand.New(rand.NewPCG(99, 99))
	for t := range out {
		for range 30 {
			w := ""
			for range 2 + r.IntN(3) {
				w += syl[r.IntN(len(syl))]
			}
			out[t] = append(out[t], w)
		}
	}
	return out
}()

type sim struct {
	rng   *rand.Rand
	start time.Time
	out   []Request
}

// sentence mixes general words with words of one topic (-1: any topic per word).
func (s *sim) sentence(n, topic int) string {
	ws := make([]string, n)
	for i := range ws {
		if s.rng.IntN(3) == 0 {
			ws[i] = general[s.rng.IntN(len(general))]
			continue
		}
		t := topic
		if t < 0 {
			t = s.rng.IntN(nTopics)
		}
		ws[i] = topicWords[t][s.rng.IntN(len(topicWords[t]))]
	}
	return strings.Join(ws, " ")
}

func (s *sim) ip(net int) string {
	return fmt.Sprintf("%d.%d.%d.%d", 11+net/65536%200, net/256%256, net%256, 2+s.rng.IntN(250))
}

func (s *sim) randIP() string { return s.ip(s.rng.IntN(1 << 22)) }

func (s *sim) add(r Request) { s.out = append(s.out, r) }

func (s *sim) at(hours float64) time.Time {
	return s.start.Add(time.Duration(hours * float64(time.Hour)))
}

// Simulate writes a labelled trace for a scenario; intensity scales attack volume (1 is
// the default; 0.3 gives low-and-slow variants).
func Simulate(scenario string, seed uint64, intensity float64) ([]Request, error) {
	s := &sim{rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), start: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	if intensity <= 0 {
		intensity = 1
	}
	gens := map[string]func(){
		"benign-chat":       func() { s.benignChat(40) },
		"benign-batch":      func() { s.benignBatch(5) },
		"benign-agent":      func() { s.benignAgent(10) },
		"benign-logitbias":  func() { s.benignLogitBias(10) },
		"benign-eval":       func() { s.benignEval(4) },
		"benign-rag":        func() { s.benignRAG(5) },
		"benign-classifier": func() { s.benignClassifier(3) },
		"benign-writer":     func() { s.benignWriter(6) },
		"benign-fleet":      func() { s.benignFleet(15) },
		"benign-slots":      func() { s.benignSlots() },
		"logit-harvest":     func() { s.logitHarvest(3, intensity) },
		"probing":           func() { s.probing(3, intensity) },
		"egress":            func() { s.egress(2, intensity) },
		"distillation":      func() { s.distillation(2, intensity) },
		"hydra":             func() { s.hydra(50, intensity) },
	}
	for n, g := range s.hardNegativeGens() {
		gens[n] = g
	}
	if scenario == "all" {
		for _, n := range Scenarios {
			if n == "all" {
				break
			}
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
	office := s.rng.IntN(1 << 22) // ten users behind one corporate NAT
	for u := range users {
		p := fmt.Sprintf("chat-user-%d", u)
		ip := s.randIP()
		if u < 10 {
			ip = s.ip(office)
		}
		n := 30 + s.rng.IntN(120)
		for i := range n {
			prompt := s.sentence(8+s.rng.IntN(40), -1)
			if s.rng.IntN(8) == 0 {
				prompt += " explain step by step"
			}
			r := Request{TS: s.at(float64(i)*48/float64(n) + s.rng.Float64()), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat",
				Prompt: prompt, PromptTokens: 40, CompletionTokens: 100 + s.rng.IntN(600), Label: "benign"}
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
		ip := s.randIP()
		tmpl := "Summarize the following customer review in one sentence and rate its sentiment:"
		for i := range 400 {
			s.add(Request{TS: s.at(float64(i) * 0.05), Principal: p, IP: ip, Model: "frontier", Endpoint: "completions",
				Prompt: tmpl + " " + s.sentence(25+s.rng.IntN(30), -1), PromptTokens: 60, CompletionTokens: 40, Label: "benign"})
		}
	}
}

// benignAgent: agents that retry the same prompt and grow a conversation turn by turn.
func (s *sim) benignAgent(agents int) {
	for a := range agents {
		p := fmt.Sprintf("agent-%d", a)
		ip := s.randIP()
		ctx := s.sentence(30, -1)
		for i := range 120 {
			if s.rng.IntN(4) != 0 {
				ctx += " " + s.sentence(15+s.rng.IntN(20), -1)
			}
			for range 1 + s.rng.IntN(2) { // retries send the identical prompt
				s.add(Request{TS: s.at(float64(i) * 0.2), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat",
					Prompt: ctx, PromptTokens: len(ctx) / 4, CompletionTokens: 200, Label: "benign"})
			}
			if len(ctx) > 4000 {
				ctx = s.sentence(30, -1)
			}
		}
	}
}

// benignLogitBias: apps that ban a fixed handful of tokens and read logprobs.
func (s *sim) benignLogitBias(apps int) {
	for a := range apps {
		p := fmt.Sprintf("bias-app-%d", a)
		ip := s.randIP()
		banned := map[string]float64{}
		for range 3 + s.rng.IntN(8) {
			banned[strconv.Itoa(s.rng.IntN(4096))] = -100
		}
		for i := range 300 {
			s.add(Request{TS: s.at(float64(i) * 0.1), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat", Prompt: s.sentence(20, -1),
				Params: Params{Logprobs: true, TopLogprobs: 5, LogitBias: banned}, PromptTokens: 30, CompletionTokens: 50, Label: "benign"})
		}
	}
}

// benignEval: evaluation harnesses — thousands of templated, diverse questions in a burst,
// the same dataset again the next day; one of them with chain-of-thought answers.
func (s *sim) benignEval(harnesses int) {
	for h := range harnesses {
		p := fmt.Sprintf("eval-harness-%d", h)
		ip := s.randIP()
		qs := make([]string, 1300)
		for i := range qs {
			qs[i] = s.sentence(20+s.rng.IntN(20), -1)
		}
		cot := h == 0
		for day := range 2 {
			start := float64(day*24) + 2 + s.rng.Float64()*4
			for i, q := range qs {
				prompt, out := "Question: "+q+"\nAnswer with the letter of the correct option.", 3
				if cot {
					prompt, out = "Solve the following problem. Think step by step.\n"+q, 250+s.rng.IntN(300)
				}
				s.add(Request{TS: s.at(start + float64(i)*2/float64(len(qs))), Principal: p, IP: ip, Model: "frontier", Endpoint: "completions",
					Prompt: prompt, PromptTokens: 80, CompletionTokens: out, Label: "benign"})
			}
		}
	}
}

// benignRAG: retrieval apps in office hours — long prompts, medium answers.
func (s *sim) benignRAG(apps int) {
	for a := range apps {
		p := fmt.Sprintf("rag-app-%d", a)
		ip := s.randIP()
		for day := range 2 {
			for i := range 500 {
				s.add(Request{TS: s.at(float64(day*24) + 9 + 9*float64(i)/500), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat",
					Prompt: "Context: " + s.sentence(200, -1) + "\n\nQuestion: " + s.sentence(12, -1), PromptTokens: 1500,
					CompletionTokens: 80 + s.rng.IntN(200), Label: "benign"})
			}
		}
	}
}

// benignClassifier: round-the-clock, high-volume, templated, tiny outputs.
func (s *sim) benignClassifier(services int) {
	for c := range services {
		p := fmt.Sprintf("classifier-%d", c)
		ip := s.randIP()
		for i := range 4000 {
			s.add(Request{TS: s.at(48 * float64(i) / 4000), Principal: p, IP: ip, Model: "frontier", Endpoint: "completions",
				Prompt: "Classify the topic of this message: " + s.sentence(30, -1), PromptTokens: 50, CompletionTokens: 3, Label: "benign"})
		}
	}
}

// benignWriter: people who ask for long essays, in their working hours.
func (s *sim) benignWriter(writers int) {
	for w := range writers {
		p := fmt.Sprintf("writer-%d", w)
		ip := s.randIP()
		for day := range 2 {
			for i := range 60 {
				s.add(Request{TS: s.at(float64(day*24) + 8 + 9*float64(i)/60), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat",
					Prompt: "Write a detailed essay on " + s.sentence(10, -1), PromptTokens: 30, CompletionTokens: 1200 + s.rng.IntN(800), Label: "benign"})
			}
		}
	}
}

// benignSlots: templated jobs whose slots are a word or two (product copy, arithmetic
// evaluations, translations of single words) — consecutive prompts differ by a few words,
// like word-level probing, but in short prompts and at fixed places.
func (s *sim) benignSlots() {
	colors := strings.Fields("red blue green black white grey navy beige olive coral amber teal ivory plum")
	stuff := strings.Fields("leather cotton linen wool silk denim suede canvas bamboo steel oak glass")
	items := strings.Fields("bag shirt jacket lamp chair table scarf wallet watch bottle mug desk sofa belt hat")
	langs := strings.Fields("French German Spanish Italian Dutch Polish Swedish Portuguese Czech Greek")
	jobs := []func() string{
		func() string {
			return fmt.Sprintf("Write a short product description for a %s %s %s in a friendly tone.",
				colors[s.rng.IntN(len(colors))], stuff[s.rng.IntN(len(stuff))], items[s.rng.IntN(len(items))])
		},
		func() string {
			return fmt.Sprintf("What is %d + %d? Answer with a number only.", s.rng.IntN(1000), s.rng.IntN(1000))
		},
		func() string {
			return fmt.Sprintf("Translate the word %s into %s and use it in one example sentence.", s.sentence(1, -1), langs[s.rng.IntN(len(langs))])
		},
		func() string {
			return fmt.Sprintf("Suggest five catchy blog post titles about %s %s for small business owners.", s.sentence(1, -1), s.sentence(1, -1))
		},
	}
	for j, gen := range jobs {
		p := fmt.Sprintf("slots-job-%d", j)
		ip := s.randIP()
		for day := range 2 {
			for i := range 500 {
				s.add(Request{TS: s.at(float64(day*24) + 10 + 3*float64(i)/500), Principal: p, IP: ip, Model: "frontier", Endpoint: "completions",
					Prompt: gen(), PromptTokens: 25, CompletionTokens: 60, Label: "benign"})
			}
		}
	}
}

// benignFleet: one customer's replicas, each with its own key, started together behind one
// network, sharing a template, with overlapping content — the hard negative for hydra.
func (s *sim) benignFleet(keys int) {
	net := s.rng.IntN(1 << 22)
	for k := range keys {
		p := fmt.Sprintf("fleet-replica-%d", k)
		for i := range 150 {
			s.add(Request{TS: s.at(1 + 30*float64(i)/150 + s.rng.Float64()*0.1), Principal: p, IP: s.ip(net), Model: "frontier", Endpoint: "chat",
				Prompt: "Write a product description for " + s.sentence(12, -1), PromptTokens: 30, CompletionTokens: 250 + s.rng.IntN(200), Label: "benign"})
		}
	}
}

// logitHarvest: sweep the vocabulary 5 biased tokens at a time, reading top-5 logprobs
// (Carlini et al. 2024), on a fixed prompt.
func (s *sim) logitHarvest(attackers int, intensity float64) {
	for a := range attackers {
		p := fmt.Sprintf("harvester-%d", a)
		ip := s.randIP()
		prompt := s.sentence(12, -1)
		n := int(1000 * intensity)
		for i := range n {
			bias := map[string]float64{}
			for k := range 5 {
				bias[strconv.Itoa((i*5+k)%4096)] = 100
			}
			s.add(Request{TS: s.at(10 + float64(i)*0.01/intensity), Principal: p, IP: ip, Model: "frontier", Endpoint: "completions", Prompt: prompt,
				Params: Params{MaxTokens: 1, Logprobs: true, TopLogprobs: 5, LogitBias: bias}, PromptTokens: 12, CompletionTokens: 1, Label: "logit-harvest"})
		}
	}
}

// probing: edits of one prompt — character edits (finite differences), word swaps and word
// insertions/deletions (jailbreak search), one kind per attacker in turn.
func (s *sim) probing(attackers int, intensity float64) {
	for a := range attackers {
		p := fmt.Sprintf("prober-%d", a)
		ip := s.randIP()
		base := s.sentence(40, -1)
		n := int(300 * intensity)
		for i := range n {
			var prompt string
			switch a % 3 {
			case 0:
				b := []byte(base)
				for range 1 + s.rng.IntN(2) {
					j := s.rng.IntN(len(b))
					if b[j] != ' ' {
						b[j] = byte('a' + s.rng.IntN(26))
					}
				}
				prompt = string(b)
			case 1:
				ws := strings.Fields(base)
				for range 1 + s.rng.IntN(3) {
					ws[s.rng.IntN(len(ws))] = s.sentence(1, -1)
				}
				prompt = strings.Join(ws, " ")
			default:
				ws := strings.Fields(base)
				for range 1 + s.rng.IntN(2) {
					j := s.rng.IntN(len(ws))
					if s.rng.IntN(2) == 0 {
						ws = append(ws[:j], ws[j+1:]...)
					} else {
						ws = append(ws[:j], append([]string{s.sentence(1, -1)}, ws[j:]...)...)
					}
				}
				prompt = strings.Join(ws, " ")
			}
			s.add(Request{TS: s.at(20 + float64(i)*0.02/intensity), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat", Prompt: prompt,
				Params: Params{Logprobs: true, TopLogprobs: 5}, PromptTokens: 60, CompletionTokens: 5, Label: "probing"})
		}
	}
}

// egress: a steady user for two days, then an hour of bulk output.
func (s *sim) egress(users int, intensity float64) {
	for u := range users {
		p := fmt.Sprintf("exfil-%d", u)
		ip := s.randIP()
		for h := range 30 {
			for i := range 5 {
				s.add(Request{TS: s.at(float64(h) + float64(i)*0.1), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat", Prompt: s.sentence(20, -1),
					PromptTokens: 30, CompletionTokens: 300, Label: "benign"})
			}
		}
		for i := range int(400 * intensity) {
			s.add(Request{TS: s.at(30.5 + float64(i)*0.002), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat", Prompt: s.sentence(20, -1),
				PromptTokens: 30, CompletionTokens: 4000, Label: "egress"})
		}
	}
}

var distillTemplates = []string{
	"Explain step by step how %s",
	"Write a detailed answer with your reasoning: %s",
	"Think carefully and solve: %s",
	"Give a thorough explanation of %s",
	"%s Show your work.",
}

// distillation: round-the-clock harvesting of long, reasoned answers over every topic,
// from a handful of templates (intensity 0.3: a third of the rate).
func (s *sim) distillation(attackers int, intensity float64) {
	for a := range attackers {
		p := fmt.Sprintf("distiller-%d", a)
		ip := s.randIP()
		n := int(48 * 150 * intensity) // two days at 150 requests an hour
		for i := range n {
			t := distillTemplates[s.rng.IntN(len(distillTemplates))]
			s.add(Request{TS: s.at(48 * float64(i) / float64(n)), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat",
				Prompt: fmt.Sprintf(t, s.sentence(15+s.rng.IntN(20), -1)), Params: Params{MaxTokens: 1024}, PromptTokens: 60,
				CompletionTokens: 400 + s.rng.IntN(500), Label: "distillation"})
		}
	}
}

// hydra: one campaign over many keys, each looking like a modest user: the same templates,
// a few proxy networks, started within hours, each key on its own slice of topics.
func (s *sim) hydra(keys int, intensity float64) {
	nets := []int{s.rng.IntN(1 << 22), s.rng.IntN(1 << 22), s.rng.IntN(1 << 22)}
	perKey := int(90 * intensity)
	for k := range keys {
		p := fmt.Sprintf("hydra-key-%d", k)
		ip := s.ip(nets[k%len(nets)])
		start := 3 + s.rng.Float64()*4
		topic := k % nTopics
		for i := range perKey {
			t := distillTemplates[(k+i)%3]
			s.add(Request{TS: s.at(start + 60*float64(i)/float64(perKey) + s.rng.Float64()*0.3), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat",
				Prompt: fmt.Sprintf(t, s.sentence(15+s.rng.IntN(10), topic)), Params: Params{MaxTokens: 1024}, PromptTokens: 50,
				CompletionTokens: 400 + s.rng.IntN(400), Label: "hydra"})
		}
	}
}
