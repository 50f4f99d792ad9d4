package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/witness"
	f_note "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

func cosignatureVKey(vkey string) (string, error) { return f_note.VKeyToCosignatureV1(vkey) }

// adminMux is the control-plane listener: the log, read-only, and health.
func adminMux(a *app.App) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/log/", http.StripPrefix("/log", audit.Handler(a.Config.Audit.LogDir)))
	mux.Handle("/metrics", promhttp.HandlerFor(a.Metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := a.AuditLog.Healthy(); err != nil {
			http.Error(w, "audit log cannot record", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// serveUntilDone serves h on addr until ctx ends; ready is called with the bound address.
func serveUntilDone(ctx context.Context, addr string, h http.Handler, log *slog.Logger, ready func(net.Addr)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	ready(ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		log.Info("shutting down")
		if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}

func serveCmd(g *globals) *cobra.Command {
	var listen string
	c := &cobra.Command{
		Use:   "serve",
		Short: "Serve the control plane: the transparency log at /log/ and /healthz",
		Args:  exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			if listen == "" {
				listen = a.Config.AdminListen
			}
			return serveUntilDone(cmd.Context(), listen, adminMux(a), a.Log, func(addr net.Addr) {
				fmt.Fprintf(cmd.OutOrStdout(), "STRONGROOM_ADMIN_URL=http://%s\n", addr)
			})
		}),
	}
	c.Flags().StringVar(&listen, "admin-listen", "", "address (default from config: 127.0.0.1:8081)")
	return c
}

func witnessServeCmd(g *globals) *cobra.Command {
	var keyPath, listen, stateDir string
	var logKeys, logKeyFiles []string
	c := &cobra.Command{
		Use:   "serve --key FILE --log-key VKEY [--log-key VKEY]... --state DIR",
		Short: "Serve POST /add-checkpoint for the given logs",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := fsutil.CheckPrivate(keyPath); err != nil {
				return err
			}
			raw, err := os.ReadFile(keyPath)
			if err != nil {
				return err
			}
			signer, err := f_note.NewSignerForCosignatureV1(strings.TrimSpace(string(raw)))
			clear(raw)
			if err != nil {
				return usagef("witness key: %v", err)
			}
			fromFiles, err := readKeys(logKeyFiles)
			if err != nil {
				return err
			}
			logs := map[string]note.Verifier{}
			if len(logKeys)+len(fromFiles) == 0 {
				return usagef("give at least one --log-key or --log-key-file")
			}
			for _, k := range append(logKeys, fromFiles...) {
				v, err := note.NewVerifier(k)
				if err != nil {
					return usagef("--log-key %q: %v", k, err)
				}
				logs[v.Name()] = v
			}
			log := g.logger(cmd.ErrOrStderr())
			w, err := witness.New(witness.Config{Signer: signer, Logs: logs, StateDir: stateDir, Logger: log})
			if err != nil {
				return usageError{err}
			}
			return serveUntilDone(cmd.Context(), listen, w, log, func(addr net.Addr) {
				fmt.Fprintf(cmd.OutOrStdout(), "witness %s listening on http://%s for %d log(s)\n", signer.Name(), addr, len(logs))
			})
		},
	}
	f := c.Flags()
	f.StringVar(&keyPath, "key", "", "witness private key file (from witness init)")
	f.StringArrayVar(&logKeys, "log-key", nil, "verifier key of a log to witness (repeatable)")
	f.StringArrayVar(&logKeyFiles, "log-key-file", nil, "file holding the verifier key of a log to witness (repeatable)")
	f.StringVar(&listen, "listen", "127.0.0.1:8090", "address")
	f.StringVar(&stateDir, "state", "witness-state", "directory of the witness's per-log state (must survive restarts)")
	c.MarkFlagRequired("key")
	return c
}
