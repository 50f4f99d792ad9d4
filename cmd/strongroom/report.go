package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/report"
)

func reportCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "report", Short: "Compliance reports computed from the log, and their verification"}
	c.AddCommand(reportComplianceCmd(g), reportVerifyCmd(g))
	return c
}

// parseWhen reads an RFC 3339 time or a date (midnight UTC); "start" and "now" are the
// zero time (report.Compliance reads them as the log's first entry and now).
func parseWhen(flag, s string) (time.Time, error) {
	if (flag == "from" && s == "start") || (flag == "to" && s == "now") {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t, nil
	}
	return time.Time{}, usagef("--%s %q: give an RFC 3339 time (2026-11-01T00:00:00Z) or a date (2026-11-01)", flag, s)
}

// writeOut writes a rendered report to path, or to w when path is "" or "-".
func writeOut(w io.Writer, path string, render func(io.Writer) error) error {
	if path == "" || path == "-" {
		return render(w)
	}
	var b bytes.Buffer
	if err := render(&b); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, b.Bytes(), 0o644)
}

func reportComplianceCmd(g *globals) *cobra.Command {
	var src logSource
	var from, to, format, out string
	c := &cobra.Command{
		Use:   "compliance --from T --to T [--format pdf|html|csv|json] [--out FILE]",
		Short: "Requests, denials, screening, deployments, watermark coverage and policies over [from, to), computed from the log at a signed checkpoint",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, ok := report.Formats[format]; !ok {
				return usagef("--format %q: pdf, html, csv or json", format)
			}
			f, err := parseWhen("from", from)
			if err != nil {
				return err
			}
			t, err := parseWhen("to", to)
			if err != nil {
				return err
			}
			fetch, o, err := src.open(g)
			if err != nil {
				return err
			}
			r, err := report.Compliance(cmd.Context(), report.Source{Fetch: fetch, Opts: o}, report.Period{From: f, To: t}, time.Now(), app.Tool())
			if err != nil {
				return err
			}
			return writeOut(cmd.OutOrStdout(), out, func(w io.Writer) error { return r.Write(w, format) })
		},
	}
	src.flags(c)
	c.Flags().StringVar(&from, "from", "", "start of the period (included): a time, a date, or start (the log's first entry)")
	c.Flags().StringVar(&to, "to", "", "end of the period (excluded): a time, a date, or now")
	c.Flags().StringVar(&format, "format", "json", "pdf, html, csv or json (only json can be verified)")
	c.Flags().StringVar(&out, "out", "", "file to write (default: standard output)")
	c.MarkFlagRequired("from")
	c.MarkFlagRequired("to")
	return c
}

func reportVerifyCmd(g *globals) *cobra.Command {
	var src logSource
	c := &cobra.Command{
		Use:   "verify REPORT.json",
		Short: "Recompute a JSON compliance report from the log at the checkpoint it names, and compare every figure",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return usagef("%v", err)
			}
			r, err := report.ParseCompliance(b)
			if err != nil {
				return usagef("%s: not a JSON compliance report: %v", args[0], err)
			}
			fetch, o, err := src.open(g)
			if err != nil {
				return err
			}
			if err := report.Verify(cmd.Context(), report.Source{Fetch: fetch, Opts: o}, r); err != nil {
				if errors.Is(err, report.ErrMismatch) {
					return fmt.Errorf("report does NOT verify: %w", err)
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "report verified: every figure for %s – %s recomputed from %s at size %d\n",
				r.Period.From.Format(time.RFC3339), r.Period.To.Format(time.RFC3339), r.Log.Origin, r.Log.Size)
			return nil
		},
	}
	src.flags(c)
	return c
}
