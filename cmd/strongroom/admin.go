package main

import (
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/gateway"
	"github.com/strongroom/strongroom/internal/store"
)

func initCmd(g *globals) *cobra.Command {
	var o app.InitOptions
	c := &cobra.Command{
		Use:   "init",
		Short: "Create the data directory: config, key-encryption key, signing key",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := app.Init(cmd.Context(), g.dataDir(), o)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), map[string]string{"data": g.dataDir(), "kek": c.KMS.Current})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "initialized %s (KEK %s)\n", g.dataDir(), c.KMS.Current)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&o.KMS, "kms", "local", "key-encryption key provider: local or pkcs11")
	f.StringVar(&o.Store, "store", "", "store: SQLite path or postgres:// URL, written to the config (default: SQLite in the data directory); a URL with a password shows in ps and the config file: set STRONGROOM_STORE on every command instead")
	f.StringVar(&o.InternalCountry, "internal-country", "", "ISO country of the deployment's own networks: loopback and private-address clients are there (default: unknown, so only public models are served to them)")
	f.StringVar(&o.PKCS11.Module, "pkcs11-module", "", "PKCS#11 module path")
	f.StringVar(&o.PKCS11.TokenLabel, "pkcs11-token", "", "PKCS#11 token label")
	f.StringVar(&o.PKCS11.PINEnv, "pkcs11-pin-env", "STRONGROOM_PKCS11_PIN", "environment variable holding the user PIN")
	f.StringVar(&o.PKCS11KeyLbl, "pkcs11-key-label", "strongroom-kek", "label of the AES key on the token (created if missing)")
	return c
}

func devCmd(g *globals) *cobra.Command {
	var listen, adminListen string
	c := &cobra.Command{
		Use:   "dev",
		Short: "Run everything in one process with embedded defaults (until interrupted)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log := g.logger(cmd.ErrOrStderr())
			a, vs, err := app.Dev(ctx, g.dataDir(), log)
			if err != nil {
				return err
			}
			defer a.Close()
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "data directory %s: demo model sealed and verified\n\n", g.dataDir())
			if err := printVersions(g, cmd, vs); err != nil {
				return err
			}
			fmt.Fprintln(w)
			route, stop, err := a.StartDevRuntime(ctx)
			if err != nil {
				return err
			}
			defer stop()
			if err := a.AddPrincipal(ctx, store.Principal{ID: "dev", Tenant: "dev", Roles: []string{"researcher"}, Country: "US"}); err != nil {
				return err
			}
			tok, err := a.DevKey(ctx)
			if err != nil {
				return err
			}
			if a.Config.Gateway.UpstreamTimeout == "" {
				// The reference runtime generates on the CPU: a long answer (or a race-enabled
				// test build) takes minutes, not the 60 s production default.
				a.Config.Gateway.UpstreamTimeout = "5m"
			}
			gw, err := a.OpenGateway(ctx, app.GatewayOptions{Routes: []gateway.Route{route}})
			if err != nil {
				return err
			}
			_, vkey, err := a.LogVerifier()
			if err != nil {
				return err
			}
			if listen == "" {
				listen = a.Config.Gateway.Listen
			}
			if adminListen == "" {
				adminListen = a.Config.AdminListen
			}
			ckey, ctotp, err := a.DevConsoleLogin(ctx)
			if err != nil {
				return err
			}
			env := app.DevEnv{DataDir: g.dataDir(), APIKey: tok, LogVKey: vkey, ConsoleKey: ckey, ConsoleTOTP: ctotp}
			guard, err := a.NetGuard()
			if err != nil {
				return err
			}
			admin, stopAdmin, err := adminMux(ctx, a)
			if err != nil {
				return err
			}
			return serveAll(ctx, log, guard, []listener{
				{addr: listen, h: gw, h1: servedByH1(a), ready: func(addr net.Addr) { env.URL = "http://" + addr.String() + "/v1" }},
				{addr: adminListen, h: admin, onShutdown: stopAdmin, ready: func(addr net.Addr) { env.AdminURL = "http://" + addr.String() }},
			}, func() { env.Print(w) })
		},
	}
	c.Flags().StringVar(&listen, "listen", "", "gateway address (default 127.0.0.1:8080)")
	c.Flags().StringVar(&adminListen, "admin-listen", "", "control-plane address (default 127.0.0.1:8081)")
	c.AddCommand(&cobra.Command{
		Use:   "code",
		Short: "Print the dev console administrator's current TOTP code (from DATA/dev.env)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			code, err := app.DevCode(g.dataDir(), time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), code)
			return nil
		},
	})
	return c
}

func kmsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "kms", Short: "Manage key-encryption keys"}
	var o app.RotateOptions
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Make a new KEK and re-wrap every data key under it (weights are not re-encrypted)",
		Args:  exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			o.ConfigPath = g.config
			oldID, newID, n, err := a.Rotate(cmd.Context(), o)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), map[string]any{"old": oldID, "new": newID, "rewrapped": n})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rotated %s -> %s: %d data keys re-wrapped\n", oldID, newID, n)
			if !o.DestroyOld {
				fmt.Fprintf(cmd.OutOrStdout(), "the old KEK is no longer used; destroy it (--destroy-old for a local key file)\n")
			}
			return nil
		}),
	}
	f := rotate.Flags()
	f.StringVar(&o.To, "to", "", "provider of the new KEK: local or pkcs11 (default: the current one)")
	f.StringVar(&o.PKCS11Label, "pkcs11-key-label", "", "label for the new key on the token")
	f.BoolVar(&o.DestroyOld, "destroy-old", false, "delete the old local key file once the rotation is recorded")
	c.AddCommand(rotate)
	return c
}

func sealCmd(g *globals) *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "seal FILE -o OUT.srs",
		Short: "Seal one file under a new data key kept in the keyring",
		Args:  exactArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			id, err := a.SealFile(cmd.Context(), args[0], out)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), map[string]string{"out": out, "key_id": id})
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "sealed %s -> %s (key %s)\n", args[0], out, id)
			return nil
		}),
	}
	c.PreRunE = requireFlag(&out, "seal: -o OUT.srs is required")
	c.Flags().StringVarP(&out, "out", "o", "", "output file")
	return c
}

func unsealCmd(g *globals) *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "unseal IN.srs -o OUT|-",
		Short: "Decrypt one sealed file (- for stdout)",
		Args:  exactArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			return a.UnsealFile(cmd.Context(), args[0], out)
		}),
	}
	c.PreRunE = requireFlag(&out, "unseal: -o OUT (or - for stdout) is required")
	c.Flags().StringVarP(&out, "out", "o", "", "output file, or - for stdout")
	return c
}
