package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/store"
)

func incidentCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "incident", Short: "Incidents opened by detector alerts, with their evidence in the audit log"}
	var state string
	ls := &cobra.Command{
		Use: "ls [--state open|closed|all]", Short: "List incidents, newest first", Args: exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			if state == "all" {
				state = ""
			}
			is, err := a.Store.ListIncidents(cmd.Context(), state)
			if err != nil {
				return err
			}
			return printList(g, cmd.OutOrStdout(), is, "INCIDENT\tOPENED\tPRINCIPAL\tDETECTOR\tACTION\tSTATE\tEVIDENCE", func(in store.Incident) string {
				return strings.Join([]string{in.ID, in.OpenedAt.Format(time.RFC3339), in.Principal, in.Detector, in.Action, in.State,
					strconv.Itoa(len(in.Evidence)) + " entries"}, "\t")
			})
		}),
	}
	ls.Flags().StringVar(&state, "state", "open", "which incidents")
	show := &cobra.Command{
		Use: "show ID", Short: "Show an incident and the audit-log entries that are its evidence", Args: exactArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			in, err := a.Store.GetIncident(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), in)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "incident:  %s (%s)\nopened:    %s\nprincipal: %s\ndetector:  %s (score %.4f)\naction:    %s\nsummary:   %s\n",
				in.ID, in.State, in.OpenedAt.Format(time.RFC3339), in.Principal, in.Detector, in.Score, in.Action, in.Summary)
			if in.State == "closed" {
				fmt.Fprintf(w, "closed:    %s: %s\n", in.ClosedAt.Format(time.RFC3339), in.Note)
			}
			fmt.Fprintf(w, "evidence:  %d audit-log entries (strongroom audit proof --index N proves each)\n", len(in.Evidence))
			evs, err := a.Store.SearchAudit(cmd.Context(), store.AuditQuery{Indexes: in.Evidence})
			if err != nil {
				return err
			}
			found := map[uint64][]byte{}
			for _, e := range evs {
				found[e.Index] = e.Raw
			}
			for _, idx := range in.Evidence {
				if raw, ok := found[idx]; ok {
					fmt.Fprintf(w, "  %d %s\n", idx, raw)
				} else {
					fmt.Fprintf(w, "  %d (not in the search index yet)\n", idx)
				}
			}
			return nil
		}),
	}
	var note string
	closeC := &cobra.Command{
		Use: "close ID --note TEXT", Short: "Close an incident (recorded)", Args: exactArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			if note == "" {
				return usagef("--note is required: say why it is closed")
			}
			if err := a.CloseIncident(cmd.Context(), args[0], note); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "incident %s closed\n", args[0])
			return nil
		}),
	}
	closeC.Flags().StringVar(&note, "note", "", "why it is closed (recorded)")
	var format, out string
	rep := &cobra.Command{
		Use: "report ID [--format pdf|json] [--out FILE]", Short: "A structured incident report with every cited log entry proven (schema: docs/incident-report.schema.json)", Args: exactArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			if format != "json" && format != "pdf" {
				return usagef("--format %q: pdf or json", format)
			}
			r, err := a.IncidentReportData(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return writeOut(cmd.OutOrStdout(), out, func(w io.Writer) error { return r.Write(w, format) })
		}),
	}
	rep.Flags().StringVar(&format, "format", "json", "pdf or json")
	rep.Flags().StringVar(&out, "out", "", "file to write (default: standard output)")
	c.AddCommand(ls, show, closeC, rep)
	return c
}

func sanctionCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "sanction", Short: "Detector sanctions in force (shared by every gateway through the store)"}
	ls := &cobra.Command{
		Use: "ls", Short: "List sanctions in force", Args: exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			ss, err := a.Store.ListSanctions(cmd.Context(), time.Now())
			if err != nil {
				return err
			}
			return printList(g, cmd.OutOrStdout(), ss, "PRINCIPAL\tACTION\tDETECTOR\tSINCE\tUNTIL", func(s store.Sanction) string {
				return strings.Join([]string{s.Principal, s.Action, s.Detector, s.Since.Format(time.RFC3339), s.Until.Format(time.RFC3339)}, "\t")
			})
		}),
	}
	var reason string
	lift := &cobra.Command{
		Use: "lift PRINCIPAL --reason TEXT", Short: "Lift a principal's sanction (gateways drop it within 2 seconds)", Args: exactArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			if reason == "" {
				return usagef("--reason is required")
			}
			if err := a.LiftSanction(cmd.Context(), args[0], reason); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "sanction on %s lifted\n", args[0])
			return nil
		}),
	}
	lift.Flags().StringVar(&reason, "reason", "", "why (recorded)")
	c.AddCommand(ls, lift)
	return c
}
