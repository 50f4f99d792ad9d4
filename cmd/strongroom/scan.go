package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/fsutil"
)

// scanMethod describes, in the evidence, how the finding was made.
const scanMethod = "fingerprint/v1: tensors matched by name (Hugging Face and GGUF Llama names; renamed ones by shape and content), hidden units aligned to the protected model (residual stream on the embedding's columns, attention rows and MLP units by |cosine|), score = size-weighted mean cosine over 2-D tensors; z against Gaussian surrogates of the protected model with each tensor's RMS; licensee by the keyed spread-spectrum mark (Hoeffding bound, Bonferroni over the candidates)"

func scanCmd(g *globals) *cobra.Command {
	var o app.ScanOptions
	var evidence string
	var quiet bool
	c := &cobra.Command{
		Use:   "scan PATH... [--model NAME:VERSION]... [--evidence DIR] [--min-z Z]",
		Short: "Find models derived from protected ones in files and directories (safetensors, GGUF, HF dirs); write takedown evidence",
		Args:  cobra.MinimumNArgs(1),
		RunE: g.withApp(func(cmd *cobra.Command, a *app.App, args []string) error {
			errw := cmd.ErrOrStderr()
			last := time.Now()
			o.Progress = func(p app.ScanProgress) {
				if quiet || time.Since(last) < 2*time.Second {
					return
				}
				last = time.Now()
				fmt.Fprintf(errw, "scan: %d models, %.0f MB, %.0f MB/s, at %s\n", p.Models, float64(p.Bytes)/1e6, float64(p.Bytes)/1e6/p.Elapsed.Seconds(), p.Path)
			}
			start := time.Now()
			fs, err := a.Scan(cmd.Context(), args, o)
			elapsed := time.Since(start)
			if err != nil {
				return err
			}
			var ev []map[string]any
			if evidence != "" {
				if err := os.MkdirAll(evidence, 0o700); err != nil {
					return err
				}
				for _, f := range fs {
					if !f.Derived || f.Error != "" {
						continue
					}
					e, err := writeEvidence(cmd.Context(), g, evidence, f)
					if err != nil {
						return err
					}
					ev = append(ev, e)
				}
			}
			if g.json {
				return g.printJSON(cmd.OutOrStdout(), map[string]any{"findings": fs, "evidence": ev, "seconds": elapsed.Seconds()})
			}
			w := cmd.OutOrStdout()
			var bytes int64
			for _, f := range fs {
				bytes += f.Bytes
				switch {
				case f.Error != "":
					fmt.Fprintf(errw, "scan: %s\n", f.Error)
				case f.Derived:
					who := "no licensee's mark found"
					if f.Trace != nil && len(f.Trace.Named) == 1 {
						who = "licensee " + f.Trace.Named[0]
					} else if f.Trace != nil && len(f.Trace.Named) > 1 {
						who = "collusion suspected: " + strings.Join(f.Trace.Named, ", ")
					}
					fmt.Fprintf(w, "%s: DERIVED from %s (score %.4f, z %.0f, %d tensors matched; %s; log entry %d)\n", f.Path, f.Model, f.Score, f.Z, f.Sim.Matched, who, f.LogIndex)
				case f.Model != "":
					fmt.Fprintf(w, "%s: not derived (closest %s: score %.4f, z %.1f)\n", f.Path, f.Model, f.Score, f.Z)
				default:
					fmt.Fprintf(w, "%s: not derived (no tensor shaped like a protected model's)\n", f.Path)
				}
			}
			fmt.Fprintf(w, "scanned %d models, %.1f MB in %.1f s (%.0f MB/s)\n", len(fs), float64(bytes)/1e6, elapsed.Seconds(), float64(bytes)/1e6/elapsed.Seconds())
			return nil
		}),
	}
	c.Flags().StringSliceVar(&o.Models, "model", nil, "protected NAME:VERSION to look for (default: every enabled version)")
	c.Flags().StringVar(&evidence, "evidence", "", "write takedown evidence (JSON and Markdown) for each derived model here")
	c.Flags().Float64Var(&o.MinZ, "min-z", 10, "z over the unrelated-model null at or above which a model is derived")
	c.Flags().IntVar(&o.Null, "null", 10, "Gaussian surrogate models per protected model for the null")
	c.Flags().BoolVar(&quiet, "quiet", false, "no progress lines")
	return c
}

// writeEvidence writes EVIDENCE/<name>-<sha8>.json and .md for a derived model, with the
// scan.finding log entry and its inclusion proof in a signed checkpoint.
func writeEvidence(ctx context.Context, g *globals, dir string, f app.ScanFinding) (map[string]any, error) {
	proof, err := waitProof(ctx, g, f.LogIndex)
	if err != nil {
		return nil, fmt.Errorf("evidence for %s: %w", f.Path, err)
	}
	ver := version
	if bi, ok := debug.ReadBuildInfo(); ok && ver == "" {
		ver = bi.Main.Version
	}
	e := map[string]any{
		"v": 1, "made": time.Now().UTC().Format(time.RFC3339), "tool": "strongroom scan", "tool_version": ver, "method": scanMethod,
		"file":      map[string]any{"path": f.Path, "sha256": f.SHA256, "bytes": f.Bytes, "format": f.Format},
		"protected": f.Model, "score": f.Score, "z": f.Z, "invariant_score": f.Sim.Invariant, "invariant_z": f.InvZ,
		"null":    map[string]any{"mean": f.NullMean, "sd": f.NullSD, "models": f.NullK},
		"tensors": f.Sim.Tensors, "alignment": f.Sim.Align, "tensors_renamed": f.Sim.Renamed,
		"trace": f.Trace, "log_entry": proof,
	}
	base := filepath.Join(dir, fmt.Sprintf("%s-%s", strings.TrimSuffix(filepath.Base(f.Path), filepath.Ext(f.Path)), f.SHA256[:12]))
	b, _ := json.MarshalIndent(e, "", "  ")
	if err := fsutil.WriteFileAtomic(base+".json", append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	var md strings.Builder
	fmt.Fprintf(&md, "# Takedown evidence: %s\n\n", filepath.Base(f.Path))
	fmt.Fprintf(&md, "- File: `%s` (%s, %d bytes), SHA-256 `%s`\n", f.Path, f.Format, f.Bytes, f.SHA256)
	fmt.Fprintf(&md, "- Derived from protected model **%s**: likeness %.4f, %.0f standard deviations above unrelated models (null %.4f ± %.4f over %d)\n", f.Model, f.Score, f.Z, f.NullMean, f.NullSD, f.NullK)
	fmt.Fprintf(&md, "- Second signal, unit-invariant products of weight matrices (needs no unit matching): %.4f, %.0f standard deviations above unrelated models\n", f.Sim.Invariant, f.InvZ)
	if f.Trace != nil {
		switch len(f.Trace.Named) {
		case 0:
			fmt.Fprintf(&md, "- Licensee: no licensee's mark found among %d candidates\n", f.Trace.Candidates)
		case 1:
			fmt.Fprintf(&md, "- Licensee: **%s** (z %.1f, p ≤ %s, Bonferroni over %d candidates)\n", f.Trace.Named[0], f.Trace.Scores[0].Z, pText(f.Trace.Scores[0].Log10P), f.Trace.Candidates)
		default:
			fmt.Fprintf(&md, "- Licensee: collusion suspected: %s\n", strings.Join(f.Trace.Named, ", "))
		}
	}
	fmt.Fprintf(&md, "- Made %s by strongroom %s; method: %s\n", e["made"], ver, scanMethod)
	fmt.Fprintf(&md, "- Transparency log: entry %d (scan.finding), included in the signed checkpoint of size %d (proof in the JSON file; check with `strongroom audit verify` and `strongroom audit proof --index %d`)\n\n", f.LogIndex, proof.TreeSize, f.LogIndex)
	fmt.Fprintf(&md, "| tensor | cosine |\n|---|---|\n")
	for _, t := range f.Sim.Tensors {
		fmt.Fprintf(&md, "| `%s` | %.4f |\n", t.Name, t.Cosine)
	}
	if err := fsutil.WriteFileAtomic(base+".md", []byte(md.String()), 0o644); err != nil {
		return nil, err
	}
	return map[string]any{"path": f.Path, "json": base + ".json", "markdown": base + ".md", "log_index": f.LogIndex}, nil
}

// waitProof proves a just-recorded entry in the log's signed checkpoint, waiting (up to
// 30 s) for a checkpoint that covers it.
func waitProof(ctx context.Context, g *globals, index uint64) (audit.ProvenEntry, error) {
	var src logSource
	deadline := time.Now().Add(30 * time.Second)
	for {
		f, o, size, root, err := src.checkpointWith(ctx, g)
		if err != nil {
			return audit.ProvenEntry{}, err
		}
		if index < size {
			return audit.Prove(ctx, f, o, size, root, index)
		}
		if time.Now().After(deadline) {
			return audit.ProvenEntry{}, fmt.Errorf("log entry %d is not in a signed checkpoint after 30 s (size %d)", index, size)
		}
		select {
		case <-ctx.Done():
			return audit.ProvenEntry{}, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
