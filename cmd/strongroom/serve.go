package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/detect"
	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/netguard"
	"github.com/strongroom/strongroom/internal/witness"
	f_note "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

func cosignatureVKey(vkey string) (string, error) { return f_note.VKeyToCosignatureV1(vkey) }

// adminMux is the control-plane listener: the log, read-only, health, metrics, watermark
// detection and the console (/console/).
func adminMux(ctx context.Context, a *app.App) (*http.ServeMux, func(), error) {
	con, err := a.Console(ctx)
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/console/", con.Handler())
	mux.Handle("/{$}", http.RedirectHandler("/console/", http.StatusSeeOther))
	mux.Handle("/log/", http.StripPrefix("/log", a.AuditLog.Handler()))
	mux.Handle("/metrics", promhttp.HandlerFor(a.Metrics, promhttp.HandlerOpts{}))
	mux.Handle("/v1/watermark/detect", a.WatermarkHandler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := a.AuditLog.Healthy(); err != nil {
			http.Error(w, "audit log cannot record: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if err := a.StoreHealthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
		// Records are durable; their proof to outsiders waits (a witness policy unmet, a
		// signer that cannot publish): said, not refused.
		if err := a.AuditLog.CheckpointStalled(); err != nil {
			fmt.Fprintln(w, "warning: "+err.Error())
		}
		if err := a.AuditLog.WitnessPoliciesDiffer(); err != nil {
			fmt.Fprintln(w, "warning: "+err.Error())
		}
	})
	return mux, con.Shutdown, nil
}

// listener is one address to serve, with a hook once it is bound.
type listener struct {
	addr  string
	h     http.Handler
	ready func(net.Addr)
	tls   *tls.Config // nil: plain HTTP
	// onShutdown, if set, runs when shutdown starts: long-lived streams end then.
	onShutdown func()
	h1         bool // served by internal/h1 rather than net/http's server
}

// server is what serveAll needs of net/http's server and of h1's.
type server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
	Close() error
	RegisterOnShutdown(func())
}

// serveAll binds every listener, calls allReady, and serves until ctx ends. Every
// listener goes through guard (connection caps and timeouts); nil: a guard with defaults.
func serveAll(ctx context.Context, log *slog.Logger, guard *netguard.Guard, ls []listener, allReady func()) error {
	if guard == nil {
		var err error
		if guard, err = netguard.New(netguard.Limits{}, log, nil); err != nil {
			return err
		}
	}
	var srvs []server
	var lns []net.Listener
	errc := make(chan error, len(ls))
	for _, l := range ls {
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			for _, bound := range lns {
				bound.Close() // not served yet: closing the server would not close it
			}
			return err
		}
		l.ready(ln.Addr())
		ln = guard.Listener(ln)
		if l.tls != nil {
			tc := l.tls
			if l.h1 {
				// h1 speaks HTTP/1.1 only: ALPN must not offer h2 (net/http's server adds it
				// to a config it is given).
				tc = tc.Clone()
				tc.NextProtos = []string{"http/1.1"}
			}
			ln = tls.NewListener(ln, tc)
		}
		var srv server = guard.Server(l.h, l.tls)
		if l.h1 {
			srv = guard.H1Server(l.h, log)
		}
		if l.onShutdown != nil {
			srv.RegisterOnShutdown(l.onShutdown)
		}
		srvs = append(srvs, srv)
		lns = append(lns, ln)
	}
	// Everything is bound; what readiness promises (dev.env written, addresses printed) is
	// done before the first request is answered — a /healthz 200 implies it.
	allReady()
	for i, srv := range srvs {
		go func() { errc <- srv.Serve(lns[i]) }()
	}
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		log.Info("shutting down")
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, s := range srvs {
		e := s.Shutdown(sctx)
		if errors.Is(e, context.DeadlineExceeded) {
			// Requests still running after the grace (a long generation, a stream): cut them.
			log.Info("closing connections still busy after the shutdown grace", "addr", lns[i].Addr().String())
			e = s.Close()
		}
		if e != nil && !errors.Is(e, http.ErrServerClosed) {
			err = errors.Join(err, e)
		}
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// servedByH1 reports whether the gateway's listener is served by internal/h1
// (config gateway.http_server).
func servedByH1(a *app.App) bool { return a.Config.Gateway.HTTPServer != "net/http" }

// serveUntilDone serves one handler.
func serveUntilDone(ctx context.Context, addr string, h http.Handler, log *slog.Logger, ready func(net.Addr)) error {
	return serveAll(ctx, log, nil, []listener{{addr: addr, h: h, ready: ready}}, func() {})
}

func serveCmd(g *globals) *cobra.Command {
	var listen, adminListen, custodyListen, recordTrace string
	var recordPrompts bool
	c := &cobra.Command{
		Use:   "serve",
		Short: "Serve the gateway (/v1/), the control plane (the log at /log/, /healthz, /metrics) and the custody API",
		Args:  exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			if listen == "" {
				listen = a.Config.Gateway.Listen
			}
			if adminListen == "" {
				adminListen = a.Config.AdminListen
			}
			var o app.GatewayOptions
			if recordTrace != "" {
				f, err := os.OpenFile(recordTrace, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
				if err != nil {
					return err
				}
				redact := a.Redactor.Digest // prompts as keyed digests unless the operator opts in
				if recordPrompts {
					redact = nil
				}
				tw := detect.NewTraceWriter(f, redact)
				defer func() {
					if err := tw.Close(); err != nil {
						a.Log.Error("trace", "err", err)
					}
					f.Close()
					if n := tw.Dropped(); n > 0 {
						fmt.Fprintf(cmd.ErrOrStderr(), "strongroom: warning: %d requests not recorded in %s (writer fell behind)\n", n, recordTrace)
					}
				}()
				o.Trace = tw
			}
			gw, err := a.OpenGateway(cmd.Context(), o)
			if err != nil {
				return err
			}
			tc, err := a.GatewayTLS()
			if err != nil {
				return err
			}
			scheme := "http"
			if tc != nil {
				scheme = "https"
			}
			w := cmd.OutOrStdout()
			cl, err := custodyListener(cmd.Context(), a, custodyListen, w)
			if err != nil {
				return err
			}
			guard, err := a.NetGuard()
			if err != nil {
				return err
			}
			admin, stopAdmin, err := adminMux(cmd.Context(), a)
			if err != nil {
				return err
			}
			return serveAll(cmd.Context(), a.Log, guard, []listener{
				{addr: listen, h: gw, tls: tc, h1: servedByH1(a), ready: func(addr net.Addr) { fmt.Fprintf(w, "STRONGROOM_URL=%s://%s/v1\n", scheme, addr) }},
				{addr: adminListen, h: admin, onShutdown: stopAdmin, ready: func(addr net.Addr) { fmt.Fprintf(w, "STRONGROOM_ADMIN_URL=http://%s\n", addr) }},
				cl,
			}, func() {})
		}),
	}
	c.Flags().StringVar(&listen, "listen", "", "gateway address (default from config: 127.0.0.1:8080)")
	c.Flags().StringVar(&adminListen, "admin-listen", "", "control-plane address (default from config: 127.0.0.1:8081)")
	c.Flags().StringVar(&custodyListen, "custody-listen", "", "custody API address, TLS (default from config: 127.0.0.1:8443)")
	c.Flags().StringVar(&recordTrace, "record-trace", "", "append every gateway request to this trace file (JSONL, for detect replay)")
	c.Flags().BoolVar(&recordPrompts, "record-prompts", false, "record prompts in the clear in the trace (default: keyed HMAC digests)")
	return c
}

// custodyListener starts the custody service (and its revocation poller) and returns its
// TLS listener.
func custodyListener(ctx context.Context, a *app.App, addr string, w io.Writer) (listener, error) {
	if addr == "" {
		addr = a.Config.Custody.Listen
	}
	svc, err := a.Custody(ctx)
	if err != nil {
		return listener{}, err
	}
	tc, err := a.CustodyTLS(addr)
	if err != nil {
		return listener{}, err
	}
	go svc.Run(ctx)
	return listener{addr: addr, h: svc.Handler(), tls: tc, onShutdown: svc.Shutdown,
		ready: func(addr net.Addr) { fmt.Fprintf(w, "STRONGROOM_CUSTODY_URL=https://%s\n", addr) }}, nil
}

func witnessServeCmd(g *globals) *cobra.Command {
	var keyPath, listen, stateDir string
	var logKeys, logKeyFiles []string
	c := &cobra.Command{
		Use:   "serve --key FILE --log-key VKEY [--log-key VKEY]... --state DIR",
		Short: "Serve POST /add-checkpoint for the given logs",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := fsutil.ReadPrivate(keyPath)
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
