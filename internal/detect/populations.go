package detect

// Hard negatives (issue 14): benign populations written from published statistics of real
// LLM traffic, independently of how the detectors work. Every population lives within one
// UTC day (the outside trace that exposed the false alerts was one day), and every request
// is labelled "benign".
//
// Parameters and where they come from. "Published" numbers are from the papers named;
// "recalled" ones are from the paper's tables as remembered by the author and could not be
// re-read during this session; "assumption" means no published figure was found and the
// value is a judgement — change it when a measurement turns up.
//
//	parameter                                 value                        source
//	turns per conversation (mean)             2.52                         WildChat (Zhao et al. 2024, arXiv 2405.01470): 1,039,785 conversations, >2.5M turns
//	conversations longer than 10 turns        3.7%                         WildChat (same)
//	  -> mixture: 88% geometric mean 1.6,     mean 2.52, P(>10) ≈ 3.9%     fitted here to the two figures above
//	     12% geometric mean 9.3
//	turns per conversation, LMSYS             ≈ 2.0                        LMSYS-Chat-1M (Zheng et al. 2023, arXiv 2309.11998), Table 1 (recalled)
//	prompt length                             mean ≈ 70 tokens (LMSYS),    LMSYS-Chat-1M / WildChat Table 1 (recalled); modelled as
//	                                          ≈ 300 (WildChat, pastes)     85% questions, log-normal median 14 words σ 0.7, 15% pastes of 80–600 words
//	response length                           mean ≈ 215 (LMSYS),          (recalled); modelled log-normal median 250 tokens σ 0.7, cap 4,000
//	                                          ≈ 440 (WildChat) tokens
//	languages (share of turns)                en 53%, zh 13%, ru 12%,      WildChat (published); LMSYS-Chat-1M: 154 languages, English first
//	                                          other 22%
//	users, conversations                      210,479 users / 1M conv.     LMSYS-Chat-1M (published): duplicates kept on purpose
//	heavy users                               WildChat over-represents     Hicke & Tomlinson (arXiv 2605.29018); the daily volume per key here is
//	                                          "power users"                set to the outside trace (106k requests / 1,076 principals ≈ 100 a day): assumption
//	conversations per chat key per day        log-normal median 14, σ 0.8, assumption (gives ≈ 50–100 requests a day per key, outside-trace scale)
//	                                          cap 120
//	active window per user                    starts 0–16 h UTC, 3–10 h    assumption (time zones, working day)
//	users re-using personal phrasings         patterns form early and      Zhu, Rzeszotarski & Mimno (arXiv 2508.01213, 2605.05767): users converge
//	                                          stay ("sticky")              on recurring request expressions; share used here 60–80% of prompts,
//	                                                                       3–6 frames per user: assumption
//	retry / regenerate / edit-and-resend      20% of prompts retried;      assumption (no published rate found; "Prototypical Human-AI Collaboration
//	                                          1–4 retries (mean ≈ 1.5);    Behaviors" (Bing Copilot and WildChat) documents revising requests, no rate);
//	                                          kinds: 35% identical,        kinds and delays: assumption
//	                                          25% typo fixed, 25% one word
//	                                          changed, 15% clarifier added;
//	                                          10–120 s later
//	logprobs on chat requests                 2%                           assumption (chat UIs never send it; some API clients do)
//	max_tokens                                unset 50%, else 256–4,096    assumption
//	code completion requests per developer    150–500 a day, prefix grows  assumption (no public telemetry); IDE prefix window 6,000 chars
//	                                          by 1–12 chars per request
//	code chat: file resent after small diffs  10–40 a day, 1–3 lines       assumption
//	                                          changed between sends
//	grammar fix / translation per user key    8–25 documents, each sent    assumption
//	                                          2–6 times after small edits
//	support bot per business key              150–600 conversations a      assumption; canned system prompt ≈ 120 words, 25 intents × 4 wordings
//	                                          day, 2–8 turns
//	tool-using agent per key                  6–25 tasks, 3–20 steps,      assumption
//	                                          tool output JSON appended
//	RAG app per key                           400–1,500 queries, top-4 of  assumption; chunk popularity Zipf(1.1)
//	                                          300 chunks, FAQ questions
//	few-shot eval harness                     1 run of 800–1,500 items     assumption; 5-shot prefix shared by every item
//	robustness eval (PromptBench-style)       each item + 3 perturbed      PromptBench (Zhu et al. 2023) perturbs prompts with character and word
//	                                          variants (typos, word swaps) attacks; counts here: assumption. NOT part of benign-outside (see below)
//	catalog batch                             2,000–4,000 items, variants  assumption
//	                                          of one product in a row
//
// benign-robusteval is behaviourally a perturbation probe by design (an evaluation of a
// model's robustness to prompt perturbations); it is kept out of benign-outside and reported
// on its own, since whether it should alert is a policy question, not a detector one.

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// hardNegativeScenarios are the issue-14 populations; they are not part of "all".
var hardNegativeScenarios = []string{
	"benign-retry", "benign-phrasings", "benign-wildchat-mix", "benign-codeassist", "benign-translate",
	"benign-support", "benign-toolagent", "benign-ragchunks", "benign-fewshot", "benign-catalog",
	"benign-robusteval", "benign-outside",
}

func (s *sim) hardNegativeGens() map[string]func() {
	return map[string]func(){
		"benign-retry":     func() { s.chatUsers("retry-user", 100, chatOpts{langs: enOnly}) },
		"benign-phrasings": func() { s.chatUsers("phrasing-user", 100, chatOpts{langs: enOnly, phrasings: true}) },
		"benign-wildchat-mix": func() {
			s.chatUsers("wildchat-user", 200, chatOpts{langs: wildchatLangs, phrasings: true, someHistory: true})
		},
		"benign-codeassist": func() { s.codeAssist(30) },
		"benign-translate":  func() { s.grammarTranslate(40) },
		"benign-support":    func() { s.supportBots(6) },
		"benign-toolagent":  func() { s.toolAgents(15) },
		"benign-ragchunks":  func() { s.ragChunks(6) },
		"benign-fewshot":    func() { s.fewShotEval(3) },
		"benign-catalog":    func() { s.catalogBatch(3) },
		"benign-robusteval": func() { s.robustEval(2) },
		"benign-outside":    func() { s.outside() },
	}
}

// outside mixes the populations at the scale of the outside trace: ≈ 1,000 principals,
// ≈ 100k requests, one day, most of them chat users.
func (s *sim) outside() {
	s.chatUsers("wildchat-user", 480, chatOpts{langs: wildchatLangs, phrasings: true, someHistory: true})
	s.chatUsers("retry-user", 200, chatOpts{langs: enOnly})
	s.chatUsers("phrasing-user", 150, chatOpts{langs: enOnly, phrasings: true})
	s.codeAssist(40)
	s.grammarTranslate(80)
	s.supportBots(8)
	s.toolAgents(30)
	s.ragChunks(8)
	s.fewShotEval(3)
	s.catalogBatch(2)
}

// ---- helpers ----

func (s *sim) logNormal(median, sigma float64) float64 {
	return median * math.Exp(sigma*s.rng.NormFloat64())
}

// geometric returns a count ≥ 1 with the given mean.
func (s *sim) geometric(mean float64) int {
	p := 1 / mean
	n := 1
	for s.rng.Float64() > p && n < 200 {
		n++
	}
	return n
}

// dayHours clamps a time to the simulated day.
func dayHours(h float64) float64 { return math.Min(math.Max(h, 0), 23.999) }

func tokensOf(text string) int {
	if n := len(text) / 4; n > 0 {
		return n
	}
	return 1
}

func (s *sim) maxTokens() int {
	if s.rng.IntN(2) == 0 {
		return 0
	}
	return []int{256, 512, 1024, 2048, 4096}[s.rng.IntN(5)]
}

func (s *sim) completion(median float64) int {
	return int(math.Min(4000, math.Max(1, s.logNormal(median, 0.7))))
}

var cyrSyl = strings.Fields("ка ло ми не ру са ти во да зу ба де ли го ну па ра се то ве")

// textIn writes n words of a topic in a language: "en" uses the simulator's vocabulary,
// "ru" Cyrillic words, "zh" CJK characters with no spaces (n characters ≈ n/1.5 words),
// "other" a Latin vocabulary of its own.
func (s *sim) textIn(lang string, n, topic int) string {
	switch lang {
	case "zh":
		var b strings.Builder
		for range n * 2 {
			b.WriteRune(rune(0x4e00 + (topic*97+s.rng.IntN(600))%20000))
			if s.rng.IntN(25) == 0 {
				b.WriteString("，")
			}
		}
		b.WriteString("？")
		return b.String()
	case "ru":
		ws := make([]string, n)
		for i := range ws {
			w := ""
			for range 2 + s.rng.IntN(3) {
				w += cyrSyl[(topic+s.rng.IntN(len(cyrSyl)))%len(cyrSyl)]
			}
			ws[i] = w
		}
		return strings.Join(ws, " ")
	case "other":
		ws := strings.Fields(s.sentence(n, topic))
		for i := range ws {
			ws[i] = ws[i] + "o"
		}
		return strings.Join(ws, " ")
	}
	return s.sentence(n, topic)
}

type langShare struct {
	lang  string
	share float64
}

var (
	enOnly        = []langShare{{"en", 1}}
	wildchatLangs = []langShare{{"en", 0.53}, {"zh", 0.13}, {"ru", 0.12}, {"other", 0.22}}
)

func (s *sim) pickLang(ls []langShare) string {
	x := s.rng.Float64()
	for _, l := range ls {
		if x < l.share {
			return l.lang
		}
		x -= l.share
	}
	return ls[0].lang
}

// typo makes one human typo: a dropped, doubled, swapped or neighbouring letter.
func (s *sim) typo(text string) string {
	r := []rune(text)
	if len(r) < 4 {
		return text
	}
	for range 10 {
		i := 1 + s.rng.IntN(len(r)-2)
		if r[i] == ' ' || r[i-1] == ' ' {
			continue
		}
		switch s.rng.IntN(4) {
		case 0:
			return string(append(r[:i:i], r[i+1:]...))
		case 1:
			return string(append(r[:i+1:i+1], r[i:]...))
		case 2:
			r[i-1], r[i] = r[i], r[i-1]
			return string(r)
		default:
			if r[i] >= 'a' && r[i] <= 'y' {
				r[i]++
			}
			return string(r)
		}
	}
	return text
}

var clarifiers = []string{
	"in simple terms", "briefly", "with an example", "in Python", "step by step", "in bullet points",
	"for a beginner", "shorter please", "no I meant the second one", "in more detail",
}

// ---- chat users: conversations, retries, personal phrasings ----

type chatOpts struct {
	langs       []langShare
	phrasings   bool // 60–80% of first prompts come from 3–6 personal frames
	someHistory bool // half the keys send the whole conversation, half only the last message
}

var phrasingFrames = []string{
	"can you explain %s in simple terms",
	"whats the difference between %s and %s",
	"give me %d ideas for %s",
	"rewrite this to sound more professional: %s",
	"summarize this: %s",
	"how do i %s with %s",
	"write a short email to %s about %s",
	"is it true that %s",
	"pros and cons of %s",
	"what does %s mean",
	"write a poem about %s",
	"fix this: %s",
	"explain like im five: %s",
	"help me plan %s for %s",
}

// phrase fills a frame's slots: short slots are 1–4 topic words, text slots 20–120 words.
func (s *sim) phrase(frame string, lang string, topic int) string {
	var args []any
	for i := 0; i < len(frame)-1; i++ {
		if frame[i] != '%' {
			continue
		}
		switch frame[i+1] {
		case 'd':
			args = append(args, 3+s.rng.IntN(8))
		case 's':
			if strings.HasSuffix(frame[:i], ": ") {
				args = append(args, s.textIn(lang, 20+s.rng.IntN(100), topic))
			} else {
				args = append(args, s.textIn(lang, 1+s.rng.IntN(4), topic))
			}
		}
	}
	return fmt.Sprintf(frame, args...)
}

// userPrompt is a new message of a chat user: a question or, 15% of the time, a paste.
func (s *sim) userPrompt(lang string, topic int) string {
	if s.rng.IntN(100) < 15 {
		intro := []string{"summarize:", "what is wrong with this", "translate this", "explain this", ""}[s.rng.IntN(5)]
		return strings.TrimSpace(intro + " " + s.textIn(lang, 80+s.rng.IntN(520), topic))
	}
	n := int(math.Max(2, math.Min(120, s.logNormal(14, 0.7))))
	return s.textIn(lang, n, topic)
}

// edit is what a user changes before sending a prompt again.
func (s *sim) edit(prompt string) string {
	switch x := s.rng.IntN(100); {
	case x < 35: // regenerate: identical
		return prompt
	case x < 60: // a typo fixed (or made)
		return s.typo(prompt)
	case x < 85: // one word changed
		ws := strings.Fields(prompt)
		if len(ws) < 2 {
			return prompt + " " + s.sentence(1, -1)
		}
		ws[s.rng.IntN(len(ws))] = s.sentence(1, -1)
		return strings.Join(ws, " ")
	default:
		return prompt + " " + clarifiers[s.rng.IntN(len(clarifiers))]
	}
}

func (s *sim) conversationTurns() int {
	if s.rng.IntN(100) < 88 {
		return s.geometric(1.6)
	}
	return s.geometric(9.3)
}

func (s *sim) chatUsers(prefix string, users int, o chatOpts) {
	office := s.rng.IntN(1 << 22)
	for u := range users {
		p := fmt.Sprintf("%s-%d", prefix, u)
		ip := s.randIP()
		if u%12 < 3 { // a quarter behind a few shared NATs
			ip = s.ip(office + u%12)
		}
		lang := s.pickLang(o.langs)
		topics := []int{s.rng.IntN(nTopics), s.rng.IntN(nTopics), s.rng.IntN(nTopics)}
		var frames []string
		frameShare := 0
		if o.phrasings {
			for range 3 + s.rng.IntN(4) {
				frames = append(frames, phrasingFrames[s.rng.IntN(len(phrasingFrames))])
			}
			frameShare = 60 + s.rng.IntN(21)
		}
		history := o.someHistory && s.rng.IntN(2) == 0
		logprobs := s.rng.IntN(50) == 0
		start := s.rng.Float64() * 16
		span := 3 + s.rng.Float64()*7
		convs := int(math.Max(1, math.Min(120, s.logNormal(14, 0.8))))
		for c := range convs {
			t := start + span*float64(c)/float64(convs) + s.rng.Float64()*0.05
			topic := topics[s.rng.IntN(len(topics))]
			ctx := ""
			for range s.conversationTurns() {
				var msg string
				if len(frames) > 0 && s.rng.IntN(100) < frameShare {
					msg = s.phrase(frames[s.rng.IntN(len(frames))], lang, topic)
				} else {
					msg = s.userPrompt(lang, topic)
				}
				sends := 1
				if s.rng.IntN(100) < 20 {
					sends += int(math.Min(4, float64(s.geometric(1.5))))
				}
				var out int
				for k := range sends {
					if k > 0 {
						msg = s.edit(msg)
						t += (10 + s.rng.Float64()*110) / 3600
					}
					prompt := msg
					if history && ctx != "" {
						prompt = ctx + "\n" + msg
					}
					out = s.completion(250)
					r := Request{TS: s.at(dayHours(t)), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat", Prompt: prompt,
						Params: Params{MaxTokens: s.maxTokens(), Temperature: 0.7}, PromptTokens: tokensOf(prompt), CompletionTokens: out, Label: "benign"}
					if logprobs {
						r.Params.Logprobs, r.Params.TopLogprobs = true, 1+s.rng.IntN(5)
					}
					s.add(r)
				}
				if history {
					ctx += "\n" + msg + "\n" + s.textIn(lang, min(out*3/4, 150), topic)
					if len(ctx) > 24000 {
						ctx = ctx[len(ctx)-24000:]
					}
				}
				t += (30 + s.rng.Float64()*240) / 3600 // reading and typing the next turn
			}
		}
	}
}

// ---- code assistants: the same file, resent with small diffs ----

func (s *sim) codeLine(topic int) string {
	w := func() string { return topicWords[topic][s.rng.IntN(len(topicWords[topic]))] }
	switch s.rng.IntN(6) {
	case 0:
		return fmt.Sprintf("func %s(%s %s) error {", w(), w(), []string{"int", "string", "[]byte", "*Config"}[s.rng.IntN(4)])
	case 1:
		return fmt.Sprintf("\tif err := %s.%s(%s); err != nil {", w(), w(), w())
	case 2:
		return fmt.Sprintf("\t%s := %s(%s, %d)", w(), w(), w(), s.rng.IntN(100))
	case 3:
		return "\t}"
	case 4:
		return fmt.Sprintf("\treturn %s.%s", w(), w())
	}
	return fmt.Sprintf("\t// %s", s.sentence(4+s.rng.IntN(6), topic))
}

func (s *sim) codeAssist(devs int) {
	for d := range devs {
		p := fmt.Sprintf("code-dev-%d", d)
		ip := s.randIP()
		topic := s.rng.IntN(nTopics)
		start := 6 + s.rng.Float64()*8
		span := 6 + s.rng.Float64()*3
		completions := 150 + s.rng.IntN(351)
		chats := 10 + s.rng.IntN(31)
		files := 1 + s.rng.IntN(3)
		var lines []string
		path := ""
		newFile := func() {
			lines = lines[:0]
			for range 40 + s.rng.IntN(260) {
				lines = append(lines, s.codeLine(topic))
			}
			path = fmt.Sprintf("internal/%s/%s.go", topicWords[topic][s.rng.IntN(30)], topicWords[topic][s.rng.IntN(30)])
		}
		newFile()
		cursor := len(lines) / 2
		partial := ""
		total := completions + chats
		for i := range total {
			t := dayHours(start + span*float64(i)/float64(total) + s.rng.Float64()*0.01)
			if i > 0 && files > 1 && i%(total/files) == 0 {
				newFile()
				cursor = len(lines) / 2
			}
			if s.rng.IntN(total) < chats { // chat: the whole file with an instruction
				// small diff since the last send: 1–3 lines changed or added
				for range 1 + s.rng.IntN(3) {
					j := s.rng.IntN(len(lines))
					if s.rng.IntN(2) == 0 {
						lines[j] = s.codeLine(topic)
					} else {
						lines = append(lines[:j], append([]string{s.codeLine(topic)}, lines[j:]...)...)
					}
				}
				ask := []string{"Why does this fail to compile?", "Refactor this function to be clearer.", "Add error handling.",
					"Write a unit test for this file.", "Explain what this code does.", "Find the bug."}[s.rng.IntN(6)]
				prompt := ask + "\n\n```go\n// " + path + "\n" + strings.Join(lines, "\n") + "\n```"
				s.add(Request{TS: s.at(t), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat", Prompt: prompt,
					Params: Params{MaxTokens: 2048, Temperature: 0.2}, PromptTokens: tokensOf(prompt), CompletionTokens: s.completion(300), Label: "benign"})
				continue
			}
			// completion: the prefix up to the cursor (last 6,000 chars), which grows as the developer types
			if s.rng.IntN(8) == 0 { // the line is done; move on or jump
				lines = append(lines[:cursor], append([]string{partial}, lines[cursor:]...)...)
				partial = ""
				cursor++
				if s.rng.IntN(5) == 0 {
					cursor = s.rng.IntN(len(lines))
				}
			}
			next := s.codeLine(topic)
			k := min(len(next), len(partial)+1+s.rng.IntN(12))
			if k > len(partial) && strings.HasPrefix(next, partial) {
				partial = next[:k]
			} else {
				partial += next[:min(len(next), 1+s.rng.IntN(12))]
			}
			prefix := "// " + path + "\n" + strings.Join(lines[:cursor], "\n") + "\n" + partial
			if len(prefix) > 6000 {
				prefix = prefix[len(prefix)-6000:]
			}
			s.add(Request{TS: s.at(t), Principal: p, IP: ip, Model: "frontier-code", Endpoint: "completions", Prompt: prefix,
				Params: Params{MaxTokens: 64 + 64*s.rng.IntN(3), Temperature: 0.2}, PromptTokens: tokensOf(prefix),
				CompletionTokens: 3 + s.rng.IntN(60), Label: "benign"})
		}
	}
}

// ---- grammar fix and translation: the same text, sent again after small edits ----

func (s *sim) grammarTranslate(users int) {
	langs := strings.Fields("German French Spanish English Italian Polish Japanese Portuguese")
	for u := range users {
		p := fmt.Sprintf("writing-user-%d", u)
		ip := s.randIP()
		topic := s.rng.IntN(nTopics)
		start := s.rng.Float64() * 14
		span := 4 + s.rng.Float64()*6
		docs := 8 + s.rng.IntN(18)
		translate := s.rng.IntN(3) == 0
		target := langs[s.rng.IntN(len(langs))]
		for d := range docs {
			t := start + span*float64(d)/float64(docs)
			text := s.sentence(15+s.rng.IntN(120), topic)
			if s.rng.IntN(3) == 0 { // typed fast: a couple of typos the tool is asked to fix
				text = s.typo(s.typo(text))
			}
			for range 2 + s.rng.IntN(5) {
				var prompt string
				if translate {
					prompt = "Translate the following text into " + target + ". Keep the formatting.\n\n" + text
				} else {
					prompt = "Correct the grammar and spelling of the following text. Return only the corrected text.\n\n" + text
				}
				s.add(Request{TS: s.at(dayHours(t)), Principal: p, IP: ip, Model: "frontier-small", Endpoint: "chat", Prompt: prompt,
					Params: Params{MaxTokens: 1024, Temperature: 0.1}, PromptTokens: tokensOf(prompt), CompletionTokens: tokensOf(text) + s.rng.IntN(20), Label: "benign"})
				t += (20 + s.rng.Float64()*200) / 3600
				// the writer accepts a fix, changes a word, or adds a sentence, then checks again
				switch s.rng.IntN(3) {
				case 0:
					text = s.edit(text)
				case 1:
					text = s.typo(text)
				default:
					text += " " + s.sentence(5+s.rng.IntN(12), topic)
				}
			}
		}
	}
}

// ---- customer-support bots: canned system prompt + conversation + user text ----

func (s *sim) supportBots(businesses int) {
	for b := range businesses {
		p := fmt.Sprintf("support-bot-%d", b)
		ip := s.randIP()
		topic := s.rng.IntN(nTopics)
		system := "You are the customer support assistant of " + s.sentence(2, topic) + ". Be polite and concise. " + s.sentence(110, topic)
		intents := make([][]string, 25)
		for i := range intents {
			core := s.sentence(3+s.rng.IntN(4), topic)
			for _, f := range []string{"hi, %s", "%s?", "i need help with %s", "%s, order #%d"} {
				if strings.Contains(f, "%d") {
					intents[i] = append(intents[i], f)
				} else {
					intents[i] = append(intents[i], fmt.Sprintf(f, core))
				}
			}
		}
		msg := func() string {
			it := intents[s.rng.IntN(len(intents))]
			f := it[s.rng.IntN(len(it))]
			if strings.Contains(f, "%d") {
				return fmt.Sprintf(f, it[0][4:], 100000+s.rng.IntN(900000))
			}
			if s.rng.IntN(4) == 0 {
				return f + " " + s.sentence(3+s.rng.IntN(15), topic)
			}
			return f
		}
		convs := 150 + s.rng.IntN(451)
		for c := range convs {
			t := 24 * (float64(c) + s.rng.Float64()) / float64(convs)
			hist := ""
			for range 2 + s.rng.IntN(7) {
				m := msg()
				if s.rng.IntN(3) == 0 {
					m = s.typo(m)
				}
				sends := 1
				if s.rng.IntN(20) == 0 { // the customer resends when the bot is slow
					sends = 2
				}
				for range sends {
					prompt := system + "\n" + hist + "\nCustomer: " + m
					s.add(Request{TS: s.at(dayHours(t)), Principal: p, IP: ip, Model: "frontier-small", Endpoint: "chat", Prompt: prompt,
						Params: Params{MaxTokens: 400, Temperature: 0.3}, PromptTokens: tokensOf(prompt), CompletionTokens: s.completion(80), Label: "benign"})
					t += 5.0 / 3600
				}
				hist += "\nCustomer: " + m + "\nAssistant: " + s.sentence(20+s.rng.IntN(40), topic)
				t += (20 + s.rng.Float64()*100) / 3600
			}
		}
	}
}

// ---- tool-using agents: fixed system + tool schema, context grows with tool outputs ----

func (s *sim) toolAgents(agents int) {
	for a := range agents {
		p := fmt.Sprintf("tool-agent-%d", a)
		ip := s.randIP()
		topic := s.rng.IntN(nTopics)
		system := "You are an agent. Use the tools. Tools: search(query), fetch(url), run_sql(query), write_file(path, text). " +
			"Answer with a JSON tool call or a final answer. " + s.sentence(60, topic)
		tasks := 6 + s.rng.IntN(20)
		start := s.rng.Float64() * 10
		for k := range tasks {
			t := start + 12*float64(k)/float64(tasks)
			ctx := system + "\nTask: " + s.sentence(10+s.rng.IntN(30), topic)
			for range 3 + s.rng.IntN(18) {
				sends := 1
				if s.rng.IntN(20) == 0 { // transient error: the framework retries the identical request
					sends = 2
				}
				for range sends {
					s.add(Request{TS: s.at(dayHours(t)), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat", Prompt: ctx,
						Params: Params{MaxTokens: 1024, Temperature: 0}, PromptTokens: tokensOf(ctx), CompletionTokens: 20 + s.rng.IntN(200), Label: "benign"})
					t += (3 + s.rng.Float64()*20) / 3600
				}
				tool := []string{"search", "fetch", "run_sql", "write_file"}[s.rng.IntN(4)]
				ctx += fmt.Sprintf("\nAssistant: {\"tool\":%q,\"args\":{\"q\":%q}}\nTool: {\"status\":\"ok\",\"rows\":%d,\"result\":%q}",
					tool, s.sentence(3+s.rng.IntN(5), topic), s.rng.IntN(50), s.sentence(20+s.rng.IntN(150), topic))
				if len(ctx) > 40000 {
					ctx = system + "\n[earlier steps summarized] " + s.sentence(60, topic)
				}
			}
		}
	}
}

// ---- RAG: one instruction, retrieved chunks from a fixed corpus, FAQ-like questions ----

func (s *sim) ragChunks(apps int) {
	for a := range apps {
		p := fmt.Sprintf("rag-chunks-app-%d", a)
		ip := s.randIP()
		topic := s.rng.IntN(nTopics)
		chunks := make([]string, 300)
		for i := range chunks {
			chunks[i] = s.sentence(60+s.rng.IntN(80), topic)
		}
		questions := make([]string, 60)
		for i := range questions {
			questions[i] = s.sentence(6+s.rng.IntN(10), topic)
		}
		zipf := func(n int) int { // popularity ∝ 1/(rank^1.1)
			for {
				k := int(math.Pow(s.rng.Float64(), -1/0.1)) - 1
				if k < n {
					return k
				}
			}
		}
		n := 400 + s.rng.IntN(1101)
		for i := range n {
			q := questions[zipf(len(questions))]
			if s.rng.IntN(2) == 0 {
				q = s.edit(q)
			}
			var b strings.Builder
			b.WriteString("Answer the question using only the context below. If the answer is not in the context, say so.\n\n")
			for range 4 {
				b.WriteString("[doc] " + chunks[zipf(len(chunks))] + "\n")
			}
			b.WriteString("\nQuestion: " + q)
			prompt := b.String()
			s.add(Request{TS: s.at(8 + 10*float64(i)/float64(n)), Principal: p, IP: ip, Model: "frontier", Endpoint: "chat", Prompt: prompt,
				Params: Params{MaxTokens: 512, Temperature: 0}, PromptTokens: tokensOf(prompt), CompletionTokens: s.completion(120), Label: "benign"})
		}
	}
}

// ---- few-shot evaluation harness: a shared 5-shot prefix, templated items ----

func (s *sim) fewShotEval(harnesses int) {
	names := strings.Fields("Tom Ana Li Omar Sara Ivan Mia Raj Zoe Ken")
	things := strings.Fields("apples books coins marbles stamps cards pens shells")
	for h := range harnesses {
		p := fmt.Sprintf("fewshot-eval-%d", h)
		ip := s.randIP()
		var shots strings.Builder
		for range 5 {
			shots.WriteString("Question: " + s.sentence(25, -1) + "\nA) " + s.sentence(3, -1) + " B) " + s.sentence(3, -1) +
				" C) " + s.sentence(3, -1) + " D) " + s.sentence(3, -1) + "\nAnswer: " + string(rune('A'+s.rng.IntN(4))) + "\n\n")
		}
		prefix := shots.String()
		n := 800 + s.rng.IntN(701)
		start := 1 + s.rng.Float64()*12
		for i := range n {
			var q string
			if i%2 == 0 { // arithmetic word problems from a template (GSM-like)
				q = fmt.Sprintf("%s has %d %s and gives %d to %s. How many %s does %s have left?",
					names[s.rng.IntN(10)], 10+s.rng.IntN(90), things[s.rng.IntN(8)], 1+s.rng.IntN(9), names[s.rng.IntN(10)], things[s.rng.IntN(8)], names[s.rng.IntN(10)])
			} else {
				q = s.sentence(15+s.rng.IntN(25), -1)
			}
			prompt := prefix + "Question: " + q + "\nA) " + s.sentence(3, -1) + " B) " + s.sentence(3, -1) + " C) " + s.sentence(3, -1) + " D) " + s.sentence(3, -1) + "\nAnswer:"
			s.add(Request{TS: s.at(dayHours(start + 3*float64(i)/float64(n))), Principal: p, IP: ip, Model: "frontier", Endpoint: "completions", Prompt: prompt,
				Params: Params{MaxTokens: 1, Temperature: 0}, PromptTokens: tokensOf(prompt), CompletionTokens: 1, Label: "benign"})
		}
	}
}

// ---- robustness evaluation: every item and 3 perturbed variants (PromptBench-style) ----

func (s *sim) robustEval(harnesses int) {
	for h := range harnesses {
		p := fmt.Sprintf("robust-eval-%d", h)
		ip := s.randIP()
		n := 300 + s.rng.IntN(200)
		start := 2 + s.rng.Float64()*8
		for i := range n {
			item := "Classify the sentiment of this review as positive or negative: " + s.sentence(20+s.rng.IntN(30), -1)
			variants := []string{item, s.typo(s.typo(item)), s.edit(item), s.typo(s.edit(item))}
			for v, prompt := range variants {
				s.add(Request{TS: s.at(dayHours(start + 4*(float64(i)+float64(v)/4)/float64(n))), Principal: p, IP: ip, Model: "frontier", Endpoint: "completions",
					Prompt: prompt, Params: Params{MaxTokens: 2, Temperature: 0}, PromptTokens: tokensOf(prompt), CompletionTokens: 1, Label: "benign"})
			}
		}
	}
}

// ---- catalog batch: product variants in a row, differing in one or two attributes ----

func (s *sim) catalogBatch(jobs int) {
	sizes := strings.Fields("XS S M L XL XXL 36 38 40 42 44 46")
	colors := strings.Fields("black white navy grey red olive sand blue")
	caps := strings.Fields("64GB 128GB 256GB 512GB 1TB")
	for j := range jobs {
		p := fmt.Sprintf("catalog-job-%d", j)
		ip := s.randIP()
		n := 2000 + s.rng.IntN(2001)
		start := s.rng.Float64() * 18
		i := 0
		for i < n {
			base := s.sentence(3+s.rng.IntN(3), -1)
			attr := sizes
			if s.rng.IntN(3) == 0 {
				attr = caps
			}
			for range 3 + s.rng.IntN(15) { // the variants of one product come together
				title := base + " " + attr[s.rng.IntN(len(attr))] + " " + colors[s.rng.IntN(len(colors))] + " sku " + strconv.Itoa(100000+s.rng.IntN(900000))
				prompt := "Write a 50-word product description for an online shop. Product: " + title
				s.add(Request{TS: s.at(dayHours(start + 5*float64(i)/float64(n))), Principal: p, IP: ip, Model: "frontier-small", Endpoint: "completions",
					Prompt: prompt, Params: Params{MaxTokens: 120, Temperature: 0.7}, PromptTokens: tokensOf(prompt), CompletionTokens: 60 + s.rng.IntN(40), Label: "benign"})
				i++
			}
		}
	}
}
