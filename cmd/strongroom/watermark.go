package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
)

func watermarkCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "watermark", Short: "Detect keyed output watermarks"}
	var q app.WatermarkQuery
	detectC := &cobra.Command{
		Use:   "detect (--tenant T | --all-tenants) [--model NAME:VER] [--scheme greenlist|synthid] [--window N] [FILE]",
		Short: "Score a text for tenants' watermarks (tokenized as the model does)",
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
			q.Text = string(text)
			rs, err := a.DetectWatermark(cmd.Context(), q)
			if errors.Is(err, app.ErrBadQuery) {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), rs)
			}
			for _, r := range rs {
				verdict := "not watermarked"
				if r.Watermarked {
					verdict = "WATERMARKED"
				}
				where := ""
				if q.Window > 0 {
					where = fmt.Sprintf(", best window at token %d", r.WindowStart)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "tenant %s: %s, %d tokens scored, score %.4f, z=%.2f, p=%.3g%s: %s (at FPR %g)\n",
					r.Tenant, r.Scheme, r.Scored, r.Score, r.Z, r.P, where, verdict, q.FPR)
			}
			return nil
		}),
	}
	f := detectC.Flags()
	f.StringVar(&q.Tenant, "tenant", "", "tenant whose key to test")
	f.BoolVar(&q.AllTenants, "all-tenants", false, "test every tenant (p-values corrected for the number tested)")
	f.StringVar(&q.Model, "model", "", "NAME:VERSION whose tokenizer to use (default: bytes, the reference bigram model)")
	f.StringVar(&q.Scheme, "scheme", "greenlist", "greenlist (Kirchenbauer et al.) or synthid (tournament)")
	f.Float64Var(&q.FPR, "fpr", 1e-3, "false-positive rate for the verdict")
	f.IntVar(&q.Window, "window", 0, "find the most watermarked span of this many tokens")
	c.AddCommand(detectC)
	return c
}
