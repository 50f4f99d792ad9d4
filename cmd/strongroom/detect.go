package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/detect"
)

func detectCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "detect", Short: "Run the extraction and abuse detectors over traces"}
	var trace string
	replay := &cobra.Command{
		Use:   "replay --trace FILE.jsonl [--config FILE]",
		Short: "Run the detectors over a recorded trace; alerts as JSONL (detectors tuned by the config's \"detect\" section)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			dc, err := g.detectConfig()
			if err != nil {
				return err
			}
			e := detect.New(dc)
			enc := json.NewEncoder(cmd.OutOrStdout())
			return readTraceFile(trace, func(i int, r *detect.Request) error {
				for _, a := range e.Observe(i, r) {
					a.Evidence = ""
					if err := enc.Encode(a); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	replay.Flags().StringVar(&trace, "trace", "", "trace file (JSONL, DESIGN.md format)")
	var scenario, out string
	var seed uint64
	var intensity float64
	simulate := &cobra.Command{
		Use:   "simulate --scenario NAME --out FILE.jsonl [--seed S] [--intensity X]",
		Short: "Write a labelled synthetic trace (benign populations and attacks)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			reqs, err := detect.Simulate(scenario, seed, intensity)
			if err != nil {
				return usageError{err}
			}
			f, err := os.Create(out)
			if err != nil {
				return err
			}
			w := bufio.NewWriter(f)
			enc := json.NewEncoder(w)
			for i := range reqs {
				if err := enc.Encode(&reqs[i]); err != nil {
					f.Close()
					return err
				}
			}
			if err := w.Flush(); err != nil {
				f.Close()
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %d requests to %s\n", len(reqs), out)
			return f.Close()
		},
	}
	simulate.Flags().StringVar(&scenario, "scenario", "all", "scenario: "+strings.Join(detect.Scenarios, ", "))
	simulate.Flags().StringVar(&out, "out", "trace.jsonl", "output file")
	simulate.Flags().Uint64Var(&seed, "seed", 1, "random seed")
	simulate.Flags().Float64Var(&intensity, "intensity", 1, "attack intensity (0.2: low and slow)")
	eval := &cobra.Command{
		Use:   "eval --trace FILE.jsonl",
		Short: "Score the detectors against a labelled trace: FPR per principal-day, TPR, queries to detection",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var reqs []detect.Request
			if err := readTraceFile(trace, func(_ int, r *detect.Request) error { reqs = append(reqs, *r); return nil }); err != nil {
				return err
			}
			dc, err := g.detectConfig()
			if err != nil {
				return err
			}
			res := detect.Evaluate(reqs, detect.New(dc))
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprint(cmd.OutOrStdout(), res.Table())
			return nil
		},
	}
	eval.Flags().StringVar(&trace, "trace", "", "labelled trace file")
	calibrate := &cobra.Command{
		Use:   "calibrate --trace BENIGN.jsonl",
		Short: "Nearest-neighbour prompt distances of benign traffic: the probing threshold at the 0.1st percentile",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var reqs []detect.Request
			if err := readTraceFile(trace, func(_ int, r *detect.Request) error { reqs = append(reqs, *r); return nil }); err != nil {
				return err
			}
			c := detect.Calibrate(reqs, 64)
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), c)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d prompts with an earlier prompt of the same principal in the window\nnearest-neighbour SimHash distance: p0.1 %d, p1 %d, p50 %d bits\nsuggested detect.probe_bits: %d\n",
				c.N, c.P001, c.P01, c.P50, c.Suggested)
			return nil
		},
	}
	calibrate.Flags().StringVar(&trace, "trace", "", "trace of benign traffic (labels other than benign are skipped)")
	c.AddCommand(replay, simulate, eval, calibrate, detectModeCmd(g, "promote", "enforce"), detectModeCmd(g, "demote", "shadow"), detectReportCmd(g))
	return c
}

// detectModeCmd moves a detector between shadow mode (alerts recorded, nothing imposed)
// and enforcement.
func detectModeCmd(g *globals, verb, mode string) *cobra.Command {
	short := "Enforce a detector's actions (after reading detect report)"
	if mode == "shadow" {
		short = "Put a detector back in shadow mode: alerts recorded, nothing imposed"
	}
	return &cobra.Command{
		Use:   verb + " DETECTOR|all",
		Short: short,
		Args:  exactArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			if err := a.SetDetectorMode(cmd.Context(), args[0], mode); err != nil {
				return usageError{err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s (running gateways apply it within seconds)\n", args[0], mode)
			return nil
		}),
	}
}

func detectReportCmd(g *globals) *cobra.Command {
	var days int
	c := &cobra.Command{
		Use:   "report [--days N]",
		Short: "Per detector and day: principals alerted over principals active (alerts per principal-day), and the mode in force",
		Args:  exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			if days < 1 || days > 366 {
				return usagef("--days must be 1 to 366")
			}
			rows, err := a.DetectReport(cmd.Context(), days, time.Now())
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), rows)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "DETECTOR\tMODE\tDAY\tALERTED\tACTIVE\tRATE\tSANCTIONED")
			for _, r := range rows {
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%.4f\t%d\n", r.Detector, r.Mode, r.Day, r.Alerted, r.Active, r.Rate, r.Sanctioned)
			}
			return w.Flush()
		}),
	}
	c.Flags().IntVar(&days, "days", 7, "how many UTC days back, today included")
	return c
}

// detectConfig is the "detect" section of --config FILE (or of the data directory's
// config when it exists), else the defaults; replays cluster every 500 requests unless
// the config says otherwise (the gateway clusters on a timer instead).
func (g *globals) detectConfig() (detect.Config, error) {
	var dc detect.Config
	path := g.configPath()
	if _, err := os.Stat(path); err == nil || g.config != "" {
		c, err := config.ReadRaw(path)
		if err != nil {
			return dc, usageError{err}
		}
		if dc, err = detect.ParseConfig(c.Detect); err != nil {
			return dc, usageError{err}
		}
	}
	if dc.ClusterEvery == 0 {
		dc.ClusterEvery = 500
	}
	return dc, nil
}

func readTraceFile(path string, fn func(int, *detect.Request) error) error {
	f, err := os.Open(path)
	if err != nil {
		return usagef("--trace: %v", err)
	}
	defer f.Close()
	return detect.ReadTrace(f, fn)
}
