package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/store"
)

func principalCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "principal", Short: "Manage the principals (people, services) that hold API keys"}
	var p store.Principal
	var roles, screening string
	add := &cobra.Command{
		Use:   "add ID --tenant T [--roles r1,r2] [--org O] [--country CC] [--screening clear|pending]",
		Short: "Create or update a principal",
		Args:  exactArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			p.ID, p.Screening = args[0], store.Screening(screening)
			if p.Tenant == "" {
				return usagef("--tenant is required")
			}
			if roles != "" {
				p.Roles = strings.Split(roles, ",")
			}
			if err := a.AddPrincipal(cmd.Context(), p); err != nil {
				return err
			}
			saved, err := a.Store.GetPrincipal(cmd.Context(), p.ID)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "principal %s (tenant %s) saved, screening %s\n", saved.ID, saved.Tenant, saved.Screening)
			return nil
		}),
	}
	f := add.Flags()
	f.StringVar(&p.Tenant, "tenant", "", "tenant")
	f.StringVar(&roles, "roles", "", "comma-separated roles, e.g. researcher,licensee")
	f.StringVar(&p.Org, "org", "", "organization")
	f.StringVar(&p.Country, "country", "", "country of registration (ISO 3166-1 alpha-2)")
	f.StringVar(&screening, "screening", string(store.ScreeningClear), "screening status: clear, pending or denied")
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List principals",
		Args:  exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			ps, err := a.Store.ListPrincipals(cmd.Context())
			if err != nil {
				return err
			}
			return printList(g, cmd.OutOrStdout(), ps, "ID\tTENANT\tROLES\tORG\tCOUNTRY\tSCREENING", func(p store.Principal) string {
				return strings.Join([]string{p.ID, p.Tenant, strings.Join(p.Roles, ","), p.Org, p.Country, string(p.Screening)}, "\t")
			})
		}),
	}
	screen := &cobra.Command{
		Use:   "screen",
		Short: "Screen every principal against the denied-party list again (after a list update)",
		Args:  exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			blocked, err := a.Rescreen(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d principal(s) newly blocked pending review: %s\n", len(blocked), strings.Join(blocked, ","))
			return nil
		}),
	}
	c.AddCommand(add, ls, screen, principalTOTPCmd(g))
	return c
}

func keyCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "key", Short: "Manage API keys (shown once, stored as a hash)"}
	var principal, models string
	var expires, overlap time.Duration
	create := &cobra.Command{
		Use:   "create --principal P [--expires 720h] [--models m1,m2]",
		Short: "Issue an API key; the key is printed once",
		Args:  exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			if principal == "" {
				return usagef("--principal is required")
			}
			var ms []string
			if models != "" {
				ms = strings.Split(models, ",")
			}
			tok, rec, err := a.CreateKey(cmd.Context(), principal, expires, ms)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), map[string]any{"key": tok, "id": rec.ID, "principal": principal, "expires": rec.ExpiresAt})
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			fmt.Fprintf(cmd.ErrOrStderr(), "key %s for %s; store it now, it is not shown again\n", rec.ID, principal)
			return nil
		}),
	}
	create.Flags().StringVar(&principal, "principal", "", "principal the key belongs to")
	create.Flags().DurationVar(&expires, "expires", 0, "lifetime (0: no expiry)")
	create.Flags().StringVar(&models, "models", "", "comma-separated models the key may use (default: any the policy allows)")
	rotate := &cobra.Command{
		Use:   "rotate ID [--overlap 24h]",
		Short: "Issue a successor key; the old one keeps working for the overlap",
		Args:  exactArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			id := authn.KeyID(args[0]) // a key given whole: its id, the secret printed nowhere
			tok, rec, err := a.RotateKey(cmd.Context(), id, overlap)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			fmt.Fprintf(cmd.ErrOrStderr(), "key %s replaces %s, which stops working in %s\n", rec.ID, id, overlap)
			return nil
		}),
	}
	rotate.Flags().DurationVar(&overlap, "overlap", 24*time.Hour, "how long the old key keeps working")
	var revokeAll string
	revoke := &cobra.Command{
		Use:   "revoke (ID | --principal P)",
		Short: "Revoke a key now, or every live key of a principal",
		Args: func(cmd *cobra.Command, args []string) error {
			if (len(args) == 1) == (revokeAll != "") || len(args) > 1 {
				return usagef("give one key ID or --principal P")
			}
			return nil
		},
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			var ids []string
			for _, a := range args {
				ids = append(ids, authn.KeyID(a)) // a key given whole (found leaked): its id
			}
			if revokeAll != "" {
				ks, err := a.Store.ListAPIKeys(cmd.Context(), revokeAll)
				if err != nil {
					return err
				}
				ids = nil
				for _, k := range ks {
					if k.RevokedAt.IsZero() && (k.ExpiresAt.IsZero() || time.Now().Before(k.ExpiresAt)) {
						ids = append(ids, k.ID)
					}
				}
				if len(ids) == 0 {
					return fmt.Errorf("principal %s has no live keys", revokeAll)
				}
			}
			for _, id := range ids {
				if err := a.RevokeKey(cmd.Context(), id); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "key %s revoked\n", id)
			}
			return nil
		}),
	}
	revoke.Flags().StringVar(&revokeAll, "principal", "", "revoke every live key of this principal")
	ls := &cobra.Command{
		Use:   "ls [--principal P]",
		Short: "List keys (ids, never secrets)",
		Args:  exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			ks, err := a.Store.ListAPIKeys(cmd.Context(), principal)
			if err != nil {
				return err
			}
			type view struct {
				ID        string    `json:"id"`
				Principal string    `json:"principal"`
				Models    []string  `json:"models"`
				Created   time.Time `json:"created"`
				Expires   time.Time `json:"expires"`
				Revoked   time.Time `json:"revoked"`
			}
			var vs []view
			for _, k := range ks {
				vs = append(vs, view{k.ID, k.Principal, k.Models, k.CreatedAt, k.ExpiresAt, k.RevokedAt})
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), vs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tPRINCIPAL\tMODELS\tEXPIRES\tREVOKED")
			when := func(t time.Time) string {
				if t.IsZero() {
					return "-"
				}
				return t.Format(time.RFC3339)
			}
			for _, v := range vs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.ID, v.Principal, strings.Join(v.Models, ","), when(v.Expires), when(v.Revoked))
			}
			return tw.Flush()
		}),
	}
	ls.Flags().StringVar(&principal, "principal", "", "only this principal's keys")
	c.AddCommand(create, rotate, revoke, ls)
	return c
}

func policyCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "Check and test Cedar policies"}
	check := &cobra.Command{
		Use:   "check [DIR]",
		Short: "Parse and validate the baseline and DIR/*.cedar against the schema",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := policy.Load(policyDir(g, args))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: baseline and %d policy file(s) valid\n", len(s.Files()))
			return nil
		},
	}
	var dir string
	test := &cobra.Command{
		Use:   "test FILE.yaml [--dir DIR]",
		Short: "Run policy test cases (request -> expected decision); exit 1 on any failure",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var dargs []string
			if dir != "" {
				dargs = []string{dir}
			}
			s, err := policy.Load(policyDir(g, dargs))
			if err != nil {
				return err
			}
			res, err := policy.RunFile(s, args[0])
			if err != nil {
				return usageError{err}
			}
			failed := 0
			for _, r := range res {
				mark := "ok  "
				if !r.Passed {
					mark, failed = "FAIL", failed+1
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s: want %s, %s\n", mark, r.Case, r.Want, r.Got.Reason())
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d policy cases failed", failed, len(res))
			}
			return nil
		},
	}
	test.Flags().StringVar(&dir, "dir", "", "policy directory (default: the data directory's)")
	c.AddCommand(check, test)
	return c
}

// policyDir is the explicit directory, else the data directory's, else none.
func policyDir(g *globals, args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	if a, err := app.LoadConfig(g.dataDir(), g.config); err == nil {
		return a.Gateway.PolicyDir
	}
	return ""
}
