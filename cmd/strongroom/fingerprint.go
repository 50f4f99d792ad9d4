package main

import (
	"fmt"
	"math"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/inventory"
)

func modelExportCmd(g *globals) *cobra.Command {
	var out, licensee, as string
	c := refCmd(g, "export NAME:VERSION --licensee L --out DIR [--as PRINCIPAL]", "Write licensee L's fingerprinted copy of a version to DIR (logged; approvals for restricted models)", func(cmd *cobra.Command, a *app.App, name, version string) error {
		r, err := a.Export(cmd.Context(), name, version, licensee, out, as)
		if err != nil {
			return err
		}
		if g.json {
			return g.printJSON(cmd.OutOrStdout(), r)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "exported %s:%s for %s: %d files in %s (export %s, sha256 %s, log entry %d)\n",
			name, version, licensee, len(r.Files), out, r.ID, r.SHA256, r.LogIndex)
		return nil
	})
	c.PreRunE = func(*cobra.Command, []string) error {
		if out == "" || licensee == "" {
			return usagef("export needs --licensee L and --out DIR")
		}
		return nil
	}
	c.Flags().StringVar(&out, "out", "", "output directory (must not exist or be empty)")
	c.Flags().StringVar(&licensee, "licensee", "", "who receives the copy (its mark names them)")
	c.Flags().StringVar(&as, "as", "", "requesting principal (required for classifications that need approvals)")
	return c
}

func traceCmd(g *globals) *cobra.Command {
	var model string
	var extra []string
	var threshold float64
	c := &cobra.Command{
		Use:   "trace PATH --model NAME:VERSION [--candidate L]... [--threshold P]",
		Short: "Name the licensee whose fingerprint a copy (safetensors, GGUF, HF directory) carries",
		Args:  exactArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			if model == "" {
				return usagef("trace needs --model NAME:VERSION (the protected model the copy may come from)")
			}
			name, version, err := inventory.ParseRef(model)
			if err != nil {
				return err
			}
			r, err := a.Trace(cmd.Context(), name, version, args[0], extra, threshold)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), r)
			}
			w := cmd.OutOrStdout()
			switch r.Verdict {
			case "licensee":
				fmt.Fprintf(w, "licensee: %s (p ≤ %s over %d candidates, z = %.1f)\n", r.Named[0], pText(r.Scores[0].Log10P), r.Candidates, r.Scores[0].Z)
			case "collusion suspected":
				fmt.Fprintf(w, "collusion suspected: %s\n", strings.Join(r.Named, ", "))
			default:
				fmt.Fprintf(w, "no licensee's mark found (%d candidates)\n", r.Candidates)
			}
			fmt.Fprintf(w, "file sha256 %s; %d tensors, %d marked weights compared; log entry %d\n", r.SHA256, r.Tensors, r.Elements, r.LogIndex)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LICENSEE\tZ\tP")
			for i, s := range r.Scores {
				if i == 5 {
					break
				}
				fmt.Fprintf(tw, "%s\t%.2f\t%s\n", s.Licensee, s.Z, pText(s.Log10P))
			}
			return tw.Flush()
		}),
	}
	c.Flags().StringVar(&model, "model", "", "protected model NAME:VERSION")
	c.Flags().StringSliceVar(&extra, "candidate", nil, "also test this licensee (besides those of recorded exports)")
	c.Flags().Float64Var(&threshold, "threshold", 1e-6, "corrected p-value at or under which a licensee is named")
	return c
}

// pText prints a p-value given as its log10, without underflowing to 0.
func pText(log10p float64) string {
	if log10p > -300 {
		return fmt.Sprintf("%.3g", math.Pow(10, log10p))
	}
	return fmt.Sprintf("1e%.0f", math.Floor(log10p))
}
