package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/engineauth"
	"github.com/strongroom/strongroom/internal/launcher"
	"github.com/strongroom/strongroom/internal/refmodel"
	"github.com/strongroom/strongroom/internal/watermark"
)

func refmodelCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "refmodel", Short: "The reference runtime"}
	var dir, name, listen, wmScheme string
	var fixed int
	serve := &cobra.Command{
		Use:   "serve (--model-dir DIR | --fixed BYTES) --listen ADDR",
		Short: "Serve a plain model directory (or fixed answers, for load tests) OpenAI-compatibly",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The engine holds plaintext weights (and the watermark secret) in memory: no
			// core dumps, no ptrace attach by other processes of the same user. (The
			// launcher's own hardening does not survive exec, so an engine must do this.)
			if err := launcher.Harden(); err != nil {
				return err
			}
			srv := &refmodel.Server{Name: name}
			switch {
			case fixed > 0:
				srv.Fixed = strings.Repeat("x", fixed)
			case dir != "" && isLlama(dir):
				lm, err := refmodel.LoadLlamaLM(dir)
				if err != nil {
					return err
				}
				srv.LM = lm
			case dir != "":
				f, err := os.Open(filepath.Join(dir, "model.safetensors"))
				if err != nil {
					return err
				}
				st, err := f.Stat()
				if err != nil {
					f.Close()
					return err
				}
				m, err := refmodel.LoadModel(f, st.Size())
				f.Close()
				if err != nil {
					return err
				}
				srv.Model = m
			default:
				return usagef("give --model-dir or --fixed")
			}
			// The engine's secret: only the gateway holding it may use the engine or name a
			// tenant to watermark for (package engineauth).
			if k := os.Getenv(engineauth.KeyEnv); k != "" {
				key, err := hex.DecodeString(k)
				os.Unsetenv(engineauth.KeyEnv)
				if err != nil || len(key) < 16 {
					return usagef("$%s must be a hex secret of 16+ bytes", engineauth.KeyEnv)
				}
				srv.APIKey = []byte(k) // the bearer token is the hex string, as the gateway sends it
				clear(key)
			}
			if wmScheme != "" {
				if srv.APIKey == nil {
					return usagef("--watermark needs the engine secret in $%s: without it any caller could name the tenant", engineauth.KeyEnv)
				}
				wm, err := watermarkFromEnv(wmScheme)
				if err != nil {
					return err
				}
				srv.Watermark = wm
			}
			return serveUntilDone(cmd.Context(), listen, srv, g.logger(cmd.ErrOrStderr()), func(addr net.Addr) {
				fmt.Fprintf(cmd.OutOrStdout(), "refmodel %s on http://%s/v1\n", name, addr)
			})
		},
	}
	f := serve.Flags()
	f.StringVar(&dir, "model-dir", "", "model directory (config.json, model.safetensors)")
	f.IntVar(&fixed, "fixed", 0, "answer every request with this many bytes (load tests)")
	f.StringVar(&name, "name", "demo", "model name to serve")
	f.StringVar(&listen, "listen", "127.0.0.1:8090", "address")
	f.StringVar(&wmScheme, "watermark", "", "watermark outputs per tenant (greenlist or synthid) with the secret in $STRONGROOM_WATERMARK_SECRET (hex)")
	c.AddCommand(serve)
	return c
}

// isLlama says whether a model directory's config.json names the Llama family.
func isLlama(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return false
	}
	var c struct {
		ModelType string `json:"model_type"`
	}
	return json.Unmarshal(b, &c) == nil && (c.ModelType == "llama" || c.ModelType == "mistral")
}

// watermarkFromEnv builds the per-tenant watermark hook from the hex secret the launcher
// passes in $STRONGROOM_WATERMARK_SECRET (removed from this process's environment).
func watermarkFromEnv(scheme string) (func(string) func([]int, []float64), error) {
	secret, err := hex.DecodeString(os.Getenv("STRONGROOM_WATERMARK_SECRET"))
	os.Unsetenv("STRONGROOM_WATERMARK_SECRET")
	if err != nil || len(secret) < 32 {
		return nil, usagef("--watermark needs a hex secret of 32+ bytes in $STRONGROOM_WATERMARK_SECRET")
	}
	switch scheme {
	case "greenlist":
		return func(tenant string) func([]int, []float64) {
			k, err := watermark.DeriveKey(secret, tenant, watermark.DefaultParams())
			if err != nil {
				return nil
			}
			return func(ctx []int, lp []float64) { k.Bias(ctx[len(ctx)-1], lp) }
		}, nil
	case "synthid":
		return func(tenant string) func([]int, []float64) {
			k, err := watermark.DeriveTournament(secret, tenant)
			if err != nil {
				return nil
			}
			return k.Apply
		}, nil
	}
	return nil, usagef("--watermark %q: want greenlist or synthid", scheme)
}
