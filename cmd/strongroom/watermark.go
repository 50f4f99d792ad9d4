package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/refmodel"
	"github.com/strongroom/strongroom/internal/watermark"
)

func watermarkCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "watermark", Short: "Detect keyed output watermarks"}
	var tenant string
	var all bool
	var alpha float64
	var window int
	detectC := &cobra.Command{
		Use:   "detect (--tenant T | --all-tenants) [FILE]",
		Short: "Score a text for a tenant's watermark (reference-runtime tokenization)",
		Args:  cobra.MaximumNArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			var in io.Reader = os.Stdin
			if len(args) == 1 {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			text, err := io.ReadAll(io.LimitReader(in, 16<<20))
			if err != nil {
				return err
			}
			secret, err := a.WatermarkSecret()
			if err != nil {
				return err
			}
			defer clear(secret)
			tenants := []string{tenant}
			if all {
				ps, err := a.Store.ListPrincipals(cmd.Context())
				if err != nil {
					return err
				}
				seen := map[string]bool{}
				tenants = nil
				for _, p := range ps {
					if !seen[p.Tenant] {
						seen[p.Tenant] = true
						tenants = append(tenants, p.Tenant)
					}
				}
			} else if tenant == "" {
				return usagef("give --tenant T or --all-tenants")
			}
			var keys []*watermark.Key
			for _, t := range tenants {
				k, err := watermark.DeriveKey(secret, t, watermark.DefaultParams())
				if err != nil {
					return err
				}
				keys = append(keys, k)
			}
			toks := refmodel.Tokenize(string(text))
			var scores []watermark.Score
			if window > 0 && len(keys) == 1 {
				start, s := keys[0].Window(toks, window)
				fmt.Fprintf(cmd.ErrOrStderr(), "best window starts at token %d\n", start)
				scores = []watermark.Score{s}
			} else {
				scores = watermark.DetectAll(keys, toks)
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), scores)
			}
			for _, s := range scores {
				verdict := "not watermarked"
				if s.Verdict(alpha) {
					verdict = "WATERMARKED"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "tenant %s: %d tokens scored, %d green, z=%.2f, p=%.3g: %s (at FPR %g)\n", s.Tenant, s.Scored, s.Green, s.Z, s.P, verdict, alpha)
			}
			return nil
		}),
	}
	f := detectC.Flags()
	f.StringVar(&tenant, "tenant", "", "tenant whose key to test")
	f.BoolVar(&all, "all-tenants", false, "test every tenant (p-values corrected for the number tested)")
	f.Float64Var(&alpha, "fpr", 1e-3, "false-positive rate for the verdict")
	f.IntVar(&window, "window", 0, "find the most watermarked span of this many tokens")
	c.AddCommand(detectC)
	return c
}
