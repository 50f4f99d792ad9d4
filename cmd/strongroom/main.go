// Command strongroom keeps model weights sealed and access to them under control.
// Subcommands only: the logic lives in internal/.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/inventory"
)

// version is set with -ldflags "-X main.version=…"; otherwise the module build info.
var version = ""

type globals struct {
	data    string
	config  string
	json    bool
	verbose bool
}

func (g *globals) dataDir() string { return config.DataDir(g.data) }

func (g *globals) logger(w io.Writer) *slog.Logger {
	level := slog.LevelWarn
	if g.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// withApp opens the data directory for a command and closes it after.
func (g *globals) withApp(fn func(cmd *cobra.Command, a *app.App, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		a, err := app.Open(cmd.Context(), g.dataDir(), g.config, g.logger(cmd.ErrOrStderr()))
		if err != nil {
			return err
		}
		defer func() {
			// The operation is done and its events are durable; a late checkpoint (say, a
			// witness quorum not met) is worth a warning, not a failure.
			if err := a.Close(); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "strongroom: warning: %v\n", err)
			}
		}()
		return fn(cmd, a, args)
	}
}

func (g *globals) printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printList prints items as JSON with --json, else as a table: header, then row(item) for
// each (tab-separated columns).
func printList[T any](g *globals, w io.Writer, items []T, header string, row func(T) string) error {
	if g.json {
		return g.printJSON(w, items)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, it := range items {
		fmt.Fprintln(tw, row(it))
	}
	return tw.Flush()
}

// usageError marks errors that are the caller's fault: exit 2.
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// requireFlag is a PreRunE that fails with a usage error, before any data is opened, when
// the flag behind v is empty.
func requireFlag(v *string, msg string) func(*cobra.Command, []string) error {
	return func(*cobra.Command, []string) error {
		if *v == "" {
			return usagef("%s", msg)
		}
		return nil
	}
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "strongroom",
		Short:         "Keep model weights sealed and access to them under control",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.data, "data", "", "data directory (default $STRONGROOM_DATA, else ./strongroom-data)")
	pf.StringVar(&g.config, "config", "", "config file (default DATA/config.json)")
	pf.BoolVar(&g.json, "json", false, "print data as JSON")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log progress to stderr")
	root.AddCommand(initCmd(g), versionCmd(g), devCmd(g), serveCmd(g), modelCmd(g), routeCmd(g), sealCmd(g), unsealCmd(g), kmsCmd(g), auditCmd(g), reportCmd(g), witnessCmd(g), principalCmd(g), keyCmd(g), policyCmd(g), detectCmd(g), refmodelCmd(g), watermarkCmd(g),
		runtimeCmd(g), leaseCmd(g), approvalCmd(g), runCmd(g), incidentCmd(g), sanctionCmd(g), traceCmd(g), scanCmd(g))
	return root
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %d argument(s), got %d (usage: %s)", cmd.CommandPath(), n, len(args), cmd.UseLine())
		}
		return nil
	}
}

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := version
			if bi, ok := debug.ReadBuildInfo(); ok && v == "" {
				v = bi.Main.Version
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), map[string]string{"version": v})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "strongroom %s\n", v)
			return nil
		},
	}
}

// exitCode maps an error to the exit codes of DESIGN.md: 2 bad usage, 1 failure.
func exitCode(err error) int {
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue usageError
	if errors.As(err, &ue) || errors.Is(err, inventory.ErrBadInput) {
		return 2
	}
	return 1
}

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// STRONGROOM_CPUPROFILE=FILE profiles the whole command (for `serve` under a load
	// generator that starts it, as ../shared/bench/peers does); the profile is written at exit.
	if path := os.Getenv("STRONGROOM_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	// STRONGROOM_MEMPROFILE=FILE writes the allocations' profile (go tool pprof
	// -sample_index=alloc_space) at exit, the same way.
	if path := os.Getenv("STRONGROOM_MEMPROFILE"); path != "" {
		defer func() {
			if f, err := os.Create(path); err == nil {
				pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		if err.Error() != "" {
			fmt.Fprintf(stderr, "strongroom: %v\n", err)
		}
		return exitCode(err)
	}
	return 0
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
