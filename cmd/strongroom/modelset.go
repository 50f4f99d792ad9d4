package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/modelrec"
)

// modelSetCmd changes a version's model record: the one place classification, owner,
// countries, watermarking and hardening are set; gateways and custody follow it within
// seconds. Only the flags given change; the change is recorded in the log first.
func modelSetCmd(g *globals) *cobra.Command {
	var (
		classification, owner, by, logitBias string
		countries, denied                    []string
		watermark, defaultHardening          bool
		maxTop, maxN, maxTokens, round       int
		noise                                float64
	)
	c := refCmd(g, "set NAME:VERSION [--classification C] [--owner O] [--countries CC,..] [--deny-countries CC,..] [--watermark] [--logit-bias reject|strip|allow] [--max-top-logprobs N] [--max-n N] [--max-tokens N] [--round-logprobs D] [--logprob-noise S] [--default-hardening]",
		"Set a version's record: classification, owner, countries, watermarking, hardening (recorded; applies to running gateways)",
		func(cmd *cobra.Command, a *app.App, name, version string) error {
			v, err := a.Inventory.Get(cmd.Context(), name, version)
			if err != nil {
				return err
			}
			attrs := v.Attrs()
			f := cmd.Flags()
			if f.Changed("classification") {
				attrs.Classification = classification
			}
			if f.Changed("owner") {
				attrs.Owner = owner
			}
			if f.Changed("countries") {
				attrs.AllowedCountries = countryList(countries)
			}
			if f.Changed("deny-countries") {
				attrs.DeniedCountries = countryList(denied)
			}
			if f.Changed("watermark") {
				attrs.Watermark = watermark
			}
			if defaultHardening {
				attrs.Hardening = nil
			}
			if f.Changed("logit-bias") || f.Changed("max-top-logprobs") || f.Changed("max-n") || f.Changed("max-tokens") || f.Changed("round-logprobs") || f.Changed("logprob-noise") {
				h := attrs.EffectiveHardening()
				for name, set := range map[string]func(){
					"logit-bias": func() { h.LogitBias = logitBias }, "max-top-logprobs": func() { h.MaxTopLogprobs = maxTop },
					"max-n": func() { h.MaxN = maxN }, "max-tokens": func() { h.MaxTokens = maxTokens },
					"round-logprobs": func() { h.RoundLogprobs = round }, "logprob-noise": func() { h.LogprobNoise = noise },
				} {
					if f.Changed(name) {
						set()
					}
				}
				attrs.Hardening = &h
			}
			nv, err := a.Inventory.SetAttrs(cmd.Context(), name, version, attrs, by)
			if err != nil {
				return err
			}
			vv := view(nv, false)
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), vv)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s:%s: classification %s, countries %s, denied %s, watermark %v, hardening %s\n",
				name, version, nv.Classification, listOr(nv.AllowedCountries, "any"), listOr(nv.DeniedCountries, "none"), nv.Watermark,
				hardeningText(vv.Hardening, vv.HardeningDefault))
			return nil
		})
	f := c.Flags()
	f.StringVar(&classification, "classification", "", "classification, e.g. public, restricted, export-controlled:4E091")
	f.StringVar(&owner, "owner", "", "owning team or person")
	f.StringSliceVar(&countries, "countries", nil, `the only countries (ISO 3166-1 alpha-2) it may be used from or run in; "" for any`)
	f.StringSliceVar(&denied, "deny-countries", nil, `countries always refused; "" for none`)
	f.BoolVar(&watermark, "watermark", false, "watermark outputs per tenant (--watermark=false to stop)")
	f.StringVar(&logitBias, "logit-bias", "", "logit_bias: reject (400), strip, or allow")
	f.IntVar(&maxTop, "max-top-logprobs", 0, "cap on top_logprobs; -1 forbids logprobs")
	f.IntVar(&maxN, "max-n", 0, "cap on n and best_of")
	f.IntVar(&maxTokens, "max-tokens", 0, "cap on max_tokens")
	f.IntVar(&round, "round-logprobs", 0, "round returned logprobs to D decimals (0: off)")
	f.Float64Var(&noise, "logprob-noise", 0, "Gaussian noise (nats) on returned logprobs (0: off)")
	f.BoolVar(&defaultHardening, "default-hardening", false, "back to the default hardening")
	f.StringVar(&by, "as", "", "who makes the change (recorded)")
	return c
}

// countryList upper-cases and drops empty entries, so that --countries "" clears the list.
func countryList(in []string) []string {
	var out []string
	for _, c := range in {
		if c = strings.ToUpper(strings.TrimSpace(c)); c != "" {
			out = append(out, c)
		}
	}
	return out
}

func listOr(l []string, none string) string {
	if len(l) == 0 {
		return none
	}
	return strings.Join(l, ",")
}

func hardeningText(h modelrec.Hardening, isDefault bool) string {
	s := fmt.Sprintf("logit_bias=%s max_top_logprobs=%d max_n=%d max_tokens=%d", h.LogitBias, h.MaxTopLogprobs, h.MaxN, h.MaxTokens)
	if h.RoundLogprobs > 0 {
		s += fmt.Sprintf(" round_logprobs=%d", h.RoundLogprobs)
	}
	if h.LogprobNoise > 0 {
		s += fmt.Sprintf(" logprob_noise=%g", h.LogprobNoise)
	}
	if isDefault {
		s += " (default)"
	}
	return s
}

// modelRegisterCmd records an external model: served from engines whose weights
// Strongroom does not hold, with a record like any other (then `model set` it).
func modelRegisterCmd(g *globals) *cobra.Command {
	var classification, owner, by string
	var countries, denied []string
	c := refCmd(g, "register NAME:VERSION --classification C [--owner O] [--countries CC,..] [--deny-countries CC,..]",
		"Record a model served from engines whose weights Strongroom does not hold (a record only: no leases, no unseal)",
		func(cmd *cobra.Command, a *app.App, name, version string) error {
			v, err := a.Inventory.Register(cmd.Context(), name, version, modelrec.Attrs{Classification: classification, Owner: owner,
				AllowedCountries: countryList(countries), DeniedCountries: countryList(denied)}, by)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), view(v, false))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "registered external model %s:%s, classification %s\n", name, version, v.Classification)
			return nil
		})
	f := c.Flags()
	f.StringVar(&classification, "classification", "", "classification (required)")
	f.StringVar(&owner, "owner", "", "owning team or person")
	f.StringSliceVar(&countries, "countries", nil, "the only countries it may be used from")
	f.StringSliceVar(&denied, "deny-countries", nil, "countries always refused")
	f.StringVar(&by, "as", "", "who registers it (recorded)")
	return c
}
