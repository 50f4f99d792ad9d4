package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/refmodel"
)

func refmodelCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "refmodel", Short: "The reference runtime"}
	var dir, name, listen string
	var fixed int
	serve := &cobra.Command{
		Use:   "serve (--model-dir DIR | --fixed BYTES) --listen ADDR",
		Short: "Serve a plain model directory (or fixed answers, for load tests) OpenAI-compatibly",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
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
