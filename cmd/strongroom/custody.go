package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/attest"
	"github.com/strongroom/strongroom/internal/custody"
	"github.com/strongroom/strongroom/internal/inventory"
	"github.com/strongroom/strongroom/internal/launcher"
	"github.com/strongroom/strongroom/internal/store"
)

// withCustody opens the data directory and the custody service for a command.
func (g *globals) withCustody(fn func(cmd *cobra.Command, a *app.App, s *custody.Service, args []string) error) func(*cobra.Command, []string) error {
	return g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
		s, err := a.Custody(cmd.Context())
		if err != nil {
			return err
		}
		return fn(cmd, a, s, args)
	})
}

func runtimeCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "runtime", Short: "Join inference runtimes and manage their identities"}
	var attrs custody.Attributes
	var ttl time.Duration
	token := &cobra.Command{
		Use:   "token --owner PRINCIPAL --env prod|staging|dev [--region R] [--jurisdiction CC] [--host H] [--ttl 1h]",
		Short: "Create a one-time join token (shown once)",
		Args:  exactArgs(0),
		RunE: g.withCustody(func(cmd *cobra.Command, _ *app.App, s *custody.Service, _ []string) error {
			t, err := s.CreateJoinToken(cmd.Context(), attrs, ttl)
			if errors.Is(err, custody.ErrBadRequest) {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.String())
			return nil
		}),
	}
	f := token.Flags()
	f.StringVar(&attrs.Owner, "owner", "", "principal responsible for the runtime (may not approve its releases)")
	f.StringVar(&attrs.Env, "env", "", "prod, staging or dev")
	f.StringVar(&attrs.Region, "region", "", "region, e.g. eu-west")
	f.StringVar(&attrs.Jurisdiction, "jurisdiction", "", "ISO country code of the host")
	f.StringVar(&attrs.Host, "host", "", "host name")
	f.DurationVar(&ttl, "ttl", time.Hour, "token lifetime")

	var server, tok, dir string
	join := &cobra.Command{
		Use:   "join --token T --server URL --dir DIR",
		Short: "Exchange a join token for a runtime certificate, saved in DIR",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tok == "" || server == "" || dir == "" {
				return usagef("--token, --server and --dir are required")
			}
			id, err := custody.Join(cmd.Context(), server, tok, dir)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "joined as %s; certificate valid until %s; identity in %s\n", id.RuntimeID(), id.Cert.NotAfter.UTC().Format(time.RFC3339), dir)
			return nil
		},
	}
	join.Flags().StringVar(&tok, "token", "", "join token from `strongroom runtime token`")
	join.Flags().StringVar(&server, "server", "", "custody API, e.g. https://127.0.0.1:8443")
	join.Flags().StringVar(&dir, "dir", "", "directory for the runtime's key and certificate")

	ls := &cobra.Command{
		Use: "ls", Short: "List runtimes", Args: exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			rs, err := a.Store.ListRuntimes(cmd.Context())
			if err != nil {
				return err
			}
			return printList(g, cmd.OutOrStdout(), rs, "RUNTIME\tENV\tREGION\tJURISDICTION\tHOST\tOWNER\tCERT UNTIL\tREVOKED", func(r store.Runtime) string {
				return strings.Join([]string{r.ID, r.Env, r.Region, r.Jurisdiction, r.Host, r.Owner, r.CertExpires.Format(time.RFC3339), when(r.RevokedAt)}, "\t")
			})
		}),
	}
	var reason string
	revoke := &cobra.Command{
		Use: "revoke RUNTIME --reason TEXT", Short: "Revoke a runtime's identity and every lease it holds", Args: exactArgs(1),
		RunE: g.withCustody(func(cmd *cobra.Command, _ *app.App, s *custody.Service, args []string) error {
			ls, err := s.RevokeRuntime(cmd.Context(), args[0], reason)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "runtime %s revoked; %d lease(s) revoked\n", args[0], len(ls))
			return nil
		}),
	}
	revoke.Flags().StringVar(&reason, "reason", "", "why (recorded)")
	revoke.PreRunE = requireFlag(&reason, "--reason is required")
	c.AddCommand(token, join, ls, revoke)
	return c
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

func leaseCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "lease", Short: "List and revoke leases: where model weights are live"}
	var model string
	var all bool
	ls := &cobra.Command{
		Use: "ls [--model NAME[:VERSION]] [--all]", Short: "List live leases (with --all, every lease)", Args: exactArgs(0),
		RunE: g.withCustody(func(cmd *cobra.Command, a *app.App, s *custody.Service, _ []string) error {
			q, err := modelQuery(model)
			if err != nil {
				return err
			}
			var deps []custody.Deployment
			if all {
				ls, err := a.Store.ListLeases(cmd.Context(), q)
				if err != nil {
					return err
				}
				for _, l := range ls {
					rt, _ := a.Store.GetRuntime(cmd.Context(), l.Runtime)
					deps = append(deps, custody.Deployment{Lease: l, Runtime: rt})
				}
			} else if deps, err = s.Live(cmd.Context(), q); err != nil {
				return err
			}
			return printList(g, cmd.OutOrStdout(), deps, "LEASE\tMODEL\tRUNTIME\tHOST\tREGION\tATTESTATION\tSINCE\tEXPIRES\tREVOKED", func(d custody.Deployment) string {
				l := d.Lease
				return strings.Join([]string{l.ID, l.Model + ":" + l.Version, l.Runtime, d.Runtime.Host, d.Runtime.Region,
					l.Attestation, l.GrantedAt.Format(time.RFC3339), l.ExpiresAt.Format(time.RFC3339), when(l.RevokedAt)}, "\t")
			})
		}),
	}
	ls.Flags().StringVar(&model, "model", "", "NAME or NAME:VERSION")
	ls.Flags().BoolVar(&all, "all", false, "include revoked and expired leases")

	var runtime, reason string
	var everything bool
	revoke := &cobra.Command{
		Use:   "revoke [LEASE] [--runtime R] [--model NAME[:VERSION]] [--all] --reason TEXT",
		Short: "Revoke leases; their engines are killed",
		Args:  cobra.MaximumNArgs(1),
		RunE: g.withCustody(func(cmd *cobra.Command, _ *app.App, s *custody.Service, args []string) error {
			q, err := modelQuery(model)
			if err != nil {
				return err
			}
			q.Runtime = runtime
			if len(args) == 1 {
				q.Lease = args[0]
			}
			if q.Empty() && !everything {
				return usagef("name a lease, --runtime, --model, or --all")
			}
			ls, err := s.Revoke(cmd.Context(), q, reason)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d lease(s) revoked\n", len(ls))
			return nil
		}),
	}
	revoke.Flags().StringVar(&runtime, "runtime", "", "every lease of this runtime")
	revoke.Flags().StringVar(&model, "model", "", "every lease of NAME or NAME:VERSION")
	revoke.Flags().BoolVar(&everything, "all", false, "every lease")
	revoke.Flags().StringVar(&reason, "reason", "", "why (recorded, shown to the runtime)")
	revoke.PreRunE = requireFlag(&reason, "--reason is required")
	c.AddCommand(ls, revoke)
	return c
}

func modelQuery(ref string) (store.LeaseQuery, error) {
	if ref == "" {
		return store.LeaseQuery{}, nil
	}
	if strings.Contains(ref, ":") {
		n, v, err := inventory.ParseRef(ref)
		return store.LeaseQuery{Model: n, Version: v}, err
	}
	return store.LeaseQuery{Model: ref}, nil
}

func modelDisableCmd(g *globals) *cobra.Command {
	var reason string
	c := &cobra.Command{
		Use: "disable NAME:VERSION --reason TEXT", Short: "Refuse new leases on a version and revoke the live ones", Args: exactArgs(1),
		RunE: g.withCustody(func(cmd *cobra.Command, _ *app.App, s *custody.Service, args []string) error {
			n, v, err := inventory.ParseRef(args[0])
			if err != nil {
				return err
			}
			ls, err := s.DisableVersion(cmd.Context(), n, v, reason)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s:%s disabled; %d lease(s) revoked\n", n, v, len(ls))
			return nil
		}),
	}
	c.Flags().StringVar(&reason, "reason", "", "why (recorded)")
	c.PreRunE = requireFlag(&reason, "--reason is required")
	return c
}

func approvalCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "approval", Short: "The two-person rule: list, approve and deny pending releases"}
	var state string
	ls := &cobra.Command{
		Use: "ls [--state pending|approved|denied|consumed|all]", Short: "List approval requests", Args: exactArgs(0),
		RunE: g.withCustody(func(cmd *cobra.Command, _ *app.App, s *custody.Service, _ []string) error {
			if state == "all" {
				state = ""
			}
			rs, err := s.Approvals(cmd.Context(), state)
			if err != nil {
				return err
			}
			return printList(g, cmd.OutOrStdout(), rs, "REQUEST\tKIND\tMODEL\tREQUESTER\tFOR\tAPPROVALS\tSTATE\tEXPIRES", func(r store.ApprovalRequest) string {
				var who []string
				for _, a := range r.Approvals {
					who = append(who, a.Approver+":"+a.Decision)
				}
				return strings.Join([]string{r.ID, r.Kind, r.Model + ":" + r.Version, r.Requester, r.Runtime,
					fmt.Sprintf("%d/%d %s", len(r.Approvals), r.Needed, strings.Join(who, ",")), r.State, r.ExpiresAt.Format(time.RFC3339)}, "\t")
			})
		}),
	}
	ls.Flags().StringVar(&state, "state", "pending", "which requests")
	decide := func(approve bool) *cobra.Command {
		var as, code string
		verb := map[bool]string{true: "approve", false: "deny"}[approve]
		d := &cobra.Command{
			Use: verb + " REQUEST --as PRINCIPAL --code TOTP", Short: strings.ToUpper(verb[:1]) + verb[1:] + " a request (fresh TOTP code required)", Args: exactArgs(1),
			RunE: g.withCustody(func(cmd *cobra.Command, _ *app.App, s *custody.Service, args []string) error {
				if as == "" || code == "" {
					return usagef("--as and --code are required")
				}
				r, err := s.Decide(cmd.Context(), args[0], as, code, approve)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "request %s: %s by %s; now %s (%d of %d)\n", r.ID, verb, as, r.State, len(r.Approvals), r.Needed)
				return nil
			}),
		}
		d.Flags().StringVar(&as, "as", "", "approver principal")
		d.Flags().StringVar(&code, "code", "", "the approver's current TOTP code")
		return d
	}
	c.AddCommand(ls, decide(true), decide(false))
	return c
}

func principalTOTPCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "totp PRINCIPAL", Short: "Enroll (or replace) a principal's TOTP secret; prints the otpauth:// URL once", Args: exactArgs(1),
		RunE: g.withCustody(func(cmd *cobra.Command, _ *app.App, s *custody.Service, args []string) error {
			u, err := s.EnrollTOTP(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), u)
			return nil
		}),
	}
}

// exitError ends the process with a given status after printing its message (if any).
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func runCmd(g *globals) *cobra.Command {
	var ref, identity, token, server, blobs, attestType, containment, cgroupParent string
	var verify bool
	var grace time.Duration
	c := &cobra.Command{
		Use:   "run --model NAME:VERSION --identity DIR [--token T --server URL] [--blobs DIR] -- ENGINE [ARGS...]",
		Short: "Lease a model, decrypt it into memory and run an engine on it until the lease ends",
		Long: `Runs ENGINE with the model's files as memfd paths: {weights_dir} is a directory of links to
them, {weights} the main weights file; also $STRONGROOM_WEIGHTS_DIR and $STRONGROOM_WEIGHTS.
The engine's whole process tree is contained (--containment): by a cgroup v2 per run killed
with cgroup.kill where cgroups are writable, else by a reaper process that is the tree's
subreaper; either way every descendant dies with the lease, and with the launcher.
Restricted models are refused to uncontained runs.
Exit status: the engine's own, or 77 lease refused, 78 lease revoked, 79 release denied by
an approver, 75 renewal lost, 130 interrupted.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ref == "" || identity == "" || len(args) == 0 {
				return usagef("--model, --identity and an engine command (after --) are required")
			}
			name, version, err := inventory.ParseRef(ref)
			if err != nil {
				return err
			}
			id, err := custody.LoadIdentity(identity)
			if err != nil && token != "" {
				id, err = custody.Join(cmd.Context(), server, token, identity)
			}
			if err != nil {
				return err
			}
			at, err := attest.NewAttestor(attestType, id.Key)
			if err != nil {
				return err
			}
			out, err := launcher.Run(cmd.Context(), launcher.Config{
				Identity: id, Model: name, Version: version, Command: args, BlobDir: blobs, VerifyDigest: verify, Evidence: at.Evidence,
				KillGrace: grace, Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr(), Log: g.logger(cmd.ErrOrStderr()),
				Containment: containment, CgroupParent: cgroupParent,
			})
			if err != nil {
				return exitError{out.Code, err.Error()}
			}
			if out.Code != 0 {
				return exitError{code: out.Code}
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&ref, "model", "", "NAME:VERSION")
	f.StringVar(&identity, "identity", "", "runtime identity directory (from runtime join)")
	f.StringVar(&token, "token", "", "join token, used when the identity directory is empty")
	f.StringVar(&server, "server", "", "custody API for --token")
	f.StringVar(&blobs, "blobs", "", "read sealed files from this directory (shared blob storage) instead of downloading them")
	f.BoolVar(&verify, "verify-digest", false, "also check every file's SHA-256 against the inventory (sealed chunks are authenticated either way)")
	f.DurationVar(&grace, "kill-grace", 5*time.Second, "time between SIGTERM and SIGKILL")
	f.StringVar(&attestType, "attest", "dev", "attestation: dev (software key), sev-snp or tdx (the guest's attestation device)")
	f.StringVar(&containment, "containment", "", "how the engine's process tree is held: cgroup, subreaper or none (default: the best available)")
	f.StringVar(&cgroupParent, "cgroup-parent", "", "cgroup v2 directory to make run cgroups in (default: the launcher's own cgroup)")
	return c
}
