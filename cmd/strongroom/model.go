package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/inventory"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/refmodel"
	"github.com/strongroom/strongroom/internal/store"
)

func modelCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "model", Short: "Import, list, verify and unseal models"}
	c.AddCommand(modelImportCmd(g), modelLsCmd(g), modelShowCmd(g), modelVerifyCmd(g), modelUnsealCmd(g), modelSynthCmd(g), modelGCCmd(g), modelDisableCmd(g), modelSetCmd(g), modelExportCmd(g), modelRegisterCmd(g))
	return c
}

// versionView is the JSON shape of a version; the signature is shown by size only.
type versionView struct {
	Model          string `json:"model"`
	Version        string `json:"version"`
	Classification string `json:"classification"`
	Owner          string `json:"owner"`
	// The rest of the model record: what the gateway and custody enforce.
	AllowedCountries []string           `json:"allowed_countries,omitempty"`
	DeniedCountries  []string           `json:"denied_countries,omitempty"`
	Watermark        bool               `json:"watermark"`
	Hardening        modelrec.Hardening `json:"hardening"`
	HardeningDefault bool               `json:"hardening_default"`
	Env              string             `json:"env"`
	KeyID            string             `json:"key_id"`
	Created          time.Time          `json:"created"`
	Bytes            int64              `json:"bytes"`
	SignatureBytes   int                `json:"signature_bytes"`
	Disabled         *time.Time         `json:"disabled,omitempty"`
	External         bool               `json:"external,omitempty"` // a record only: weights not held
	Files            []store.File       `json:"files,omitempty"`
	// Deployments are the live leases on the version: where its weights are decrypted now.
	Deployments []deploymentView `json:"deployments,omitempty"`
	// Exports are the licensees' fingerprinted copies (model export).
	Exports []store.Export `json:"exports,omitempty"`
}

type deploymentView struct {
	Lease       string    `json:"lease"`
	Runtime     string    `json:"runtime"`
	Host        string    `json:"host"`
	Region      string    `json:"region"`
	Attestation string    `json:"attestation"`
	Since       time.Time `json:"since"`
	Expires     time.Time `json:"expires"`
}

func view(v store.Version, withFiles bool) versionView {
	out := versionView{Model: v.Model, Version: v.Version, Classification: v.Classification, Owner: v.Owner, Env: v.Env,
		KeyID: v.KeyID, Created: v.CreatedAt, SignatureBytes: len(v.Signature),
		AllowedCountries: v.AllowedCountries, DeniedCountries: v.DeniedCountries, Watermark: v.Watermark, External: v.External,
		Hardening: v.Attrs().EffectiveHardening(), HardeningDefault: v.Hardening == nil}
	for _, f := range v.Files {
		out.Bytes += f.Size
	}
	if withFiles {
		out.Files = v.Files
	}
	if !v.DisabledAt.IsZero() {
		out.Disabled = &v.DisabledAt
	}
	return out
}

func modelImportCmd(g *globals) *cobra.Command {
	var m inventory.Meta
	c := &cobra.Command{
		Use:     "import DIR --name N --version V --classification C",
		Short:   "Seal every file of a model directory and record it in the inventory",
		Args:    exactArgs(1),
		PreRunE: func(*cobra.Command, []string) error { return m.Validate() },
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			v, err := a.Inventory.Import(cmd.Context(), args[0], m)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), view(v, true))
			}
			vv := view(v, false)
			fmt.Fprintf(cmd.OutOrStdout(), "imported %s:%s: %d files, %d bytes sealed, classification %s\n", v.Model, v.Version, len(v.Files), vv.Bytes, v.Classification)
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&m.Name, "name", "", "model name (required)")
	f.StringVar(&m.Version, "version", "", "version (required)")
	f.StringVar(&m.Classification, "classification", "", "classification, e.g. public, restricted, export-controlled:4E091 (required)")
	f.StringVar(&m.Owner, "owner", "", "owning team or person")
	f.StringVar(&m.Env, "env", "", "environment, e.g. prod")
	return c
}

func modelLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ls [NAME]",
		Short: "List model versions",
		Args:  cobra.MaximumNArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			vs, err := a.Inventory.List(cmd.Context(), name)
			if err != nil {
				return err
			}
			return printVersions(g, cmd, vs)
		}),
	}
}

func printVersions(g *globals, cmd *cobra.Command, vs []store.Version) error {
	views := make([]versionView, 0, len(vs))
	for _, v := range vs {
		views = append(views, view(v, false))
	}
	if g.json {
		return g.printJSON(cmd.OutOrStdout(), views)
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODEL\tVERSION\tCLASSIFICATION\tOWNER\tENV\tFILES\tBYTES\tCREATED")
	for i, v := range views {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", v.Model, v.Version, v.Classification, v.Owner, v.Env, len(vs[i].Files), v.Bytes, v.Created.Format(time.RFC3339))
	}
	return tw.Flush()
}

func refCmd(g *globals, use, short string, fn func(cmd *cobra.Command, a *app.App, name, version string) error) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, version, err := inventory.ParseRef(args[0])
			if err != nil {
				return err
			}
			return g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
				return fn(cmd, a, name, version)
			})(cmd, args)
		},
	}
}

func modelShowCmd(g *globals) *cobra.Command {
	return refCmd(g, "show NAME:VERSION", "Show a version and its files", func(cmd *cobra.Command, a *app.App, name, version string) error {
		v, err := a.Inventory.Get(cmd.Context(), name, version)
		if err != nil {
			return err
		}
		vv := view(v, true)
		live, err := a.Store.ListLeases(cmd.Context(), store.LeaseQuery{Model: name, Version: version, LiveAt: time.Now()})
		if err != nil {
			return err
		}
		for _, l := range live {
			rt, _ := a.Store.GetRuntime(cmd.Context(), l.Runtime)
			vv.Deployments = append(vv.Deployments, deploymentView{Lease: l.ID, Runtime: l.Runtime, Host: rt.Host, Region: rt.Region,
				Attestation: l.Attestation, Since: l.GrantedAt, Expires: l.ExpiresAt})
		}
		if vv.Exports, err = a.Store.ListExports(cmd.Context(), name, version); err != nil {
			return err
		}
		if g.json {
			return g.printJSON(cmd.OutOrStdout(), vv)
		}
		w := cmd.OutOrStdout()
		fmt.Fprintf(w, "model:          %s\nversion:        %s\nclassification: %s\nowner:          %s\nenv:            %s\nkey id:         %s\ncreated:        %s\nsignature:      OMS v1.0 bundle, %d bytes\n",
			v.Model, v.Version, v.Classification, v.Owner, v.Env, v.KeyID, v.CreatedAt.Format(time.RFC3339), len(v.Signature))
		if vv.Disabled != nil {
			fmt.Fprintf(w, "disabled:       %s\n", vv.Disabled.Format(time.RFC3339))
		}
		fmt.Fprintf(w, "countries:      %s\ndenied:         %s\nwatermark:      %v\nhardening:      %s\n",
			listOr(v.AllowedCountries, "any"), listOr(v.DeniedCountries, "none"), v.Watermark, hardeningText(vv.Hardening, vv.HardeningDefault))
		fmt.Fprintf(w, "live leases:    %d\n", len(vv.Deployments))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FILE\tBYTES\tSHA256")
		for _, f := range v.Files {
			fmt.Fprintf(tw, "%s\t%d\t%s\n", f.Path, f.Size, f.SHA256)
		}
		if len(vv.Deployments) > 0 {
			fmt.Fprintln(tw, "\nLEASE\tRUNTIME\tHOST\tREGION\tATTESTATION\tSINCE")
			for _, d := range vv.Deployments {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.Lease, d.Runtime, d.Host, d.Region, d.Attestation, d.Since.Format(time.RFC3339))
			}
		}
		if len(vv.Exports) > 0 {
			fmt.Fprintln(tw, "\nEXPORT\tLICENSEE\tBY\tWHEN\tSHA256\tLOG")
			for _, e := range vv.Exports {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", e.ID, e.Licensee, e.By, e.CreatedAt.Format(time.RFC3339), e.SHA256, e.LogIndex)
			}
		}
		return tw.Flush()
	})
}

func modelVerifyCmd(g *globals) *cobra.Command {
	return refCmd(g, "verify NAME:VERSION", "Check the signature, decrypt and hash every file", func(cmd *cobra.Command, a *app.App, name, version string) error {
		v, err := a.Inventory.Verify(cmd.Context(), name, version)
		if err != nil {
			return err
		}
		if g.json {
			return g.printJSON(cmd.OutOrStdout(), map[string]any{"model": name, "version": version, "ok": true, "files": len(v.Files)})
		}
		fmt.Fprintf(cmd.OutOrStdout(), "ok: %s:%s: signature valid, %d files decrypted and match their signed digests\n", name, version, len(v.Files))
		return nil
	})
}

func modelUnsealCmd(g *globals) *cobra.Command {
	var out, as string
	c := refCmd(g, "unseal NAME:VERSION --out DIR [--as PRINCIPAL]", "Write a version's plaintext files and model.sig to DIR", func(cmd *cobra.Command, a *app.App, name, version string) error {
		// The two-person rule covers unsealing to disk too: a classification that needs
		// approvals needs them for the named requester, once per unseal.
		if err := a.RequireUnsealApproval(cmd.Context(), name, version, as); err != nil {
			return err
		}
		v, err := a.Inventory.Unseal(cmd.Context(), name, version, out)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "unsealed %s:%s: %d files and model.sig in %s\n", name, version, len(v.Files), out)
		return nil
	})
	c.PreRunE = requireFlag(&out, "unseal writes plaintext only where asked: --out DIR is required")
	c.Flags().StringVar(&out, "out", "", "output directory (must not exist or be empty)")
	c.Flags().StringVar(&as, "as", "", "requesting principal (required for classifications that need approvals)")
	return c
}

func modelSynthCmd(g *globals) *cobra.Command {
	o := refmodel.DefaultSynth()
	l := refmodel.SmallLlama()
	var minBytes int64
	var arch, out string
	var layers, vocab int
	var seed uint64
	c := &cobra.Command{
		Use:   "synth (DIR | --out DIR) [--arch bigram|llama] [--layers L --dim D --heads H --kv-heads K --vocab V --seed S]",
		Short: "Write a synthetic model directory (config, tokenizer, safetensors) for tests, benchmarks and demos",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				out = args[0]
			}
			if out == "" {
				return usagef("give the output directory (DIR or --out DIR)")
			}
			set := func(name string) bool { return cmd.Flags().Changed(name) }
			if set("min-bytes") && !set("arch") {
				arch = "bigram"
			}
			// --layers, --vocab and --seed apply to whichever architecture is chosen.
			var layersDst, vocabDst *int
			var seedDst *uint64
			switch arch {
			case "bigram":
				layersDst, vocabDst, seedDst = &o.Layers, &o.Vocab, &o.Seed
			case "llama":
				layersDst, vocabDst, seedDst = &l.Layers, &l.Vocab, &l.Seed
			default:
				return usagef("--arch %q: want bigram or llama", arch)
			}
			if set("layers") {
				*layersDst = layers
			}
			if set("vocab") {
				*vocabDst = vocab
			}
			if set("seed") {
				*seedDst = seed
			}
			switch arch {
			case "bigram":
				o.MinBytes = minBytes
				if err := refmodel.Synthesize(out, o); err != nil {
					return err
				}
			case "llama":
				if err := refmodel.SynthesizeLlama(out, l); err != nil {
					return usageError{err}
				}
				cfg := refmodel.LlamaConfig{HiddenSize: l.Dim, IntermediateSize: l.Intermediate, NumLayers: l.Layers, NumHeads: l.Heads,
					NumKVHeads: l.KVHeads, VocabSize: l.Vocab, TieWordEmbeddings: l.Tied}
				fmt.Fprintf(cmd.OutOrStdout(), "llama: %d layers, dim %d, %d heads (%d kv), vocab %d: %.2fM parameters\n",
					l.Layers, l.Dim, l.Heads, l.KVHeads, l.Vocab, float64(cfg.Params())/1e6)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", out)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&out, "out", "", "output directory")
	f.StringVar(&arch, "arch", "llama", "llama (a Llama-family transformer with a BPE tokenizer) or bigram (the byte-level reference model; implied by --min-bytes)")
	f.Int64Var(&minBytes, "min-bytes", 0, "bigram: pad model.safetensors to at least this many bytes")
	f.IntVar(&layers, "layers", 0, "layers (bigram default 2, llama 6)")
	f.IntVar(&o.Hidden, "hidden", o.Hidden, "bigram: hidden size")
	f.IntVar(&vocab, "vocab", 0, "vocabulary size (bigram default 256, llama 8192)")
	f.Uint64Var(&seed, "seed", 1, "random seed")
	f.IntVar(&l.Dim, "dim", l.Dim, "llama: model dimension")
	f.IntVar(&l.Heads, "heads", l.Heads, "llama: attention heads")
	f.IntVar(&l.KVHeads, "kv-heads", l.KVHeads, "llama: key/value heads (grouped-query attention)")
	f.IntVar(&l.Intermediate, "intermediate", l.Intermediate, "llama: MLP width")
	f.StringVar(&l.DType, "dtype", "F32", "llama: weight type F32, BF16 or F16")
	f.BoolVar(&l.Tied, "tied", false, "llama: tie the output head to the embedding")
	return c
}

func modelGCCmd(g *globals) *cobra.Command {
	var grace time.Duration
	c := &cobra.Command{
		Use:   "gc",
		Short: "Remove keys and sealed blobs left by failed or killed imports",
		Args:  exactArgs(0),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, _ []string) error {
			rep, err := a.Inventory.GC(cmd.Context(), grace)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), rep)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d orphan keys and %d blobs\n", rep.Keys, rep.Blobs)
			return nil
		}),
	}
	c.Flags().DurationVar(&grace, "grace", time.Hour, "leave keys younger than this (an import may still be running)")
	return c
}
