package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/gateway"
)

// routeCmd edits gateway.routes in the config file: where each model is served. What may
// be done with a model is its record (`model set`), never the route. Gateways read routes
// when they start.
func routeCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "route", Short: "Say where models are served: gateway routes in the config (read at start)"}
	var upstreams []string
	var keyEnv string
	set := &cobra.Command{
		Use:   "set MODEL --upstream URL [--upstream URL]... [--upstream-key-env VAR]",
		Short: `Route MODEL ("NAME" follows its newest enabled version, "NAME:VERSION" pins one) to engines`,
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(upstreams) == 0 {
				return usagef("at least one --upstream URL (ending in /v1) is required")
			}
			for i, u := range upstreams {
				// The URL is not repeated: it may hold a password (refused: an upstream key).
				if err := gateway.CheckUpstream(u); err != nil {
					return usagef("--upstream %d: %v (want an http:// or https:// URL ending in /v1)", i+1, err)
				}
			}
			r := config.Route{Model: args[0], Upstreams: upstreams}
			if keyEnv != "" {
				// The engine's bearer comes from the environment, never the command line.
				if r.UpstreamKey = os.Getenv(keyEnv); r.UpstreamKey == "" {
					return usagef("--upstream-key-env %s: the variable is empty", keyEnv)
				}
			}
			return g.editRoutes(func(rs []config.Route) []config.Route {
				i := slices.IndexFunc(rs, func(x config.Route) bool { return x.Model == r.Model })
				if i < 0 {
					return append(rs, r)
				}
				r.Limits = rs[i].Limits
				rs[i] = r
				return rs
			}, cmd, fmt.Sprintf("route %s -> %s (restart serve to apply)\n", r.Model, strings.Join(upstreams, ", ")))
		},
	}
	set.Flags().StringArrayVar(&upstreams, "upstream", nil, "engine base URL ending in /v1 (repeat for more; tried in order)")
	set.Flags().StringVar(&keyEnv, "upstream-key-env", "", "environment variable holding the engines' bearer key ($STRONGROOM_ENGINE_KEY for refmodel)")
	rm := &cobra.Command{
		Use: "rm MODEL", Short: "Remove MODEL's route", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			found := false
			err := g.editRoutes(func(rs []config.Route) []config.Route {
				return slices.DeleteFunc(rs, func(x config.Route) bool {
					found = found || x.Model == args[0]
					return x.Model == args[0]
				})
			}, cmd, "route "+args[0]+" removed (restart serve to apply)\n")
			if err == nil && !found {
				return fmt.Errorf("route %s: not found", args[0])
			}
			return err
		},
	}
	ls := &cobra.Command{
		Use: "ls", Short: "List routes", Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := config.ReadRaw(g.configPath())
			if err != nil {
				return err
			}
			type view struct {
				Model     string   `json:"model"`
				Upstreams []string `json:"upstreams"`
				KeySet    bool     `json:"upstream_key_set"`
			}
			var vs []view
			for _, r := range c.Gateway.Routes {
				vs = append(vs, view{r.Model, r.Upstreams, r.UpstreamKey != ""})
			}
			return printList(g, cmd.OutOrStdout(), vs, "MODEL\tUPSTREAMS\tKEY", func(v view) string {
				return v.Model + "\t" + strings.Join(v.Upstreams, ",") + "\t" + map[bool]string{true: "set", false: "-"}[v.KeySet]
			})
		},
	}
	c.AddCommand(set, rm, ls)
	return c
}

func (g *globals) configPath() string {
	if g.config != "" {
		return g.config
	}
	return filepath.Join(g.dataDir(), config.FileName)
}

// editRoutes rewrites the config file's routes with edit (atomically) and prints done.
func (g *globals) editRoutes(edit func([]config.Route) []config.Route, cmd *cobra.Command, done string) error {
	path := g.configPath()
	c, err := config.ReadRaw(path)
	if err != nil {
		return err
	}
	c.Gateway.Routes = edit(c.Gateway.Routes)
	if err := config.Write(path, c); err != nil {
		return err
	}
	fmt.Fprint(cmd.OutOrStdout(), done)
	return nil
}
