package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/fingerprint"
	"github.com/strongroom/strongroom/internal/inventory"
)

// ScanOptions tunes a scan.
type ScanOptions struct {
	Models    []string // NAME:VERSION to look for; default every enabled version
	Null      int      // Gaussian surrogates per protected model for the null (default 10)
	MinZ      float64  // z at or over which a model is called derived (default 10)
	Threshold float64  // trace: corrected p-value to name a licensee (default 1e-6)
	// Progress is called after each model found (nil: silent).
	Progress func(ScanProgress)
}

// ScanProgress is how far a scan is.
type ScanProgress struct {
	Models  int
	Bytes   int64
	Elapsed time.Duration
	Path    string
}

// ScanFinding is what the scanner says about one model found.
type ScanFinding struct {
	Path    string  `json:"path"`
	Format  string  `json:"format,omitempty"`
	Bytes   int64   `json:"bytes"`
	SHA256  string  `json:"sha256,omitempty"` // of the file or directory manifest (derived models only)
	Error   string  `json:"error,omitempty"`
	Derived bool    `json:"derived"`
	Model   string  `json:"model,omitempty"` // best-matching protected NAME:VERSION
	Score   float64 `json:"score"`
	Z       float64 `json:"z"`
	// InvZ is the second signal's z (unit-invariant products, fingerprint/invariant.go).
	InvZ     float64                  `json:"invariant_z"`
	NullMean float64                  `json:"null_mean"`
	NullSD   float64                  `json:"null_sd"`
	NullK    int                      `json:"null_models"`
	Sim      *fingerprint.Similarity  `json:"similarity,omitempty"`
	Trace    *fingerprint.TraceResult `json:"trace,omitempty"`
	LogIndex uint64                   `json:"log_index,omitempty"` // the scan.finding entry
}

type protected struct {
	name, version string
	m             *fingerprint.Model
	null          fingerprint.NullStats
}

// Scan walks paths for models (safetensors, GGUF, Hugging Face directories) and says of
// each whether it derives from a protected model of the inventory, read through the seal
// into memory. A derived model is traced (the version's recorded licensees) and recorded
// as scan.finding, so that its evidence can carry a log entry; a file that cannot be read
// is a finding with its one-line error, and the scan goes on.
func (a *App) Scan(ctx context.Context, paths []string, o ScanOptions) ([]ScanFinding, error) {
	if o.Null <= 1 {
		o.Null = 10
	}
	if o.MinZ == 0 {
		o.MinZ = 10
	}
	refs := o.Models
	if len(refs) == 0 {
		vs, err := a.Inventory.List(ctx, "")
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			if v.DisabledAt.IsZero() {
				refs = append(refs, v.Model+":"+v.Version)
			}
		}
	}
	var prot []protected
	for _, ref := range refs {
		name, version, err := inventory.ParseRef(ref)
		if err != nil {
			return nil, err
		}
		m, err := a.ProtectedModel(ctx, name, version)
		if err != nil {
			if len(o.Models) == 0 && errors.Is(err, errNoWeights) {
				continue // nothing the scanner can compare
			}
			return nil, err
		}
		p := protected{name: name, version: version, m: m}
		p.null = fingerprint.Null(m, o.Null)
		prot = append(prot, p)
	}
	if len(prot) == 0 {
		return nil, fmt.Errorf("%w: no protected model with safetensors weights to look for", inventory.ErrBadInput)
	}
	start := time.Now()
	var out []ScanFinding
	var total int64
	var ferr error
	fingerprint.Find(paths, func(path string, err error) {
		if ferr != nil || ctx.Err() != nil {
			return
		}
		f := ScanFinding{Path: path}
		defer func() {
			out = append(out, f)
			if o.Progress != nil {
				o.Progress(ScanProgress{Models: len(out), Bytes: total, Elapsed: time.Since(start), Path: path})
			}
		}()
		if err != nil {
			f.Error = oneLine(err)
			return
		}
		f.Bytes = pathBytes(path)
		total += f.Bytes
		m, err := fingerprint.Load(path)
		if err != nil {
			f.Error = oneLine(err)
			return
		}
		f.Format = m.Format
		// every protected version the model derives from is traced (versions can share
		// weights); the one whose licensee's mark is found is reported, else the likeliest
		type cand struct {
			p   *protected
			sim fingerprint.Similarity
			z   float64
			tr  *fingerprint.TraceResult
		}
		var cs []cand
		for i := range prot {
			p := &prot[i]
			if !fingerprint.Comparable(p.m, m) {
				continue
			}
			sim := fingerprint.Compare(p.m, m)
			cs = append(cs, cand{p: p, sim: sim, z: (sim.Score - p.null.Mean) / max(p.null.SD, 1e-9)})
		}
		if len(cs) == 0 {
			return
		}
		slices.SortStableFunc(cs, func(x, y cand) int { return cmp.Compare(y.z, x.z) })
		best := cs[0]
		if best.z >= o.MinZ {
			if f.SHA256, err = fingerprint.Digest(path); err != nil {
				f.Error = oneLine(err)
				return
			}
			bestP := 1.0
			for i := range cs {
				c := &cs[i]
				if c.z < o.MinZ {
					break
				}
				mk, cands, err := a.traceCandidates(ctx, c.p.name, c.p.version, nil)
				if err != nil {
					ferr = err
					return
				}
				c.tr = fingerprint.Trace(c.p.m, m, mk, cands, o.Threshold)
				if i == 0 || (len(c.tr.Named) > 0 && c.tr.Scores[0].Log10P < bestP) {
					best = *c
					if len(c.tr.Named) > 0 {
						bestP = c.tr.Scores[0].Log10P
					}
				}
			}
		}
		f.Model, f.Score, f.Z, f.NullMean, f.NullSD, f.NullK = best.p.name+":"+best.p.version, best.sim.Score, best.z, best.p.null.Mean, best.p.null.SD, o.Null
		f.InvZ = (best.sim.Invariant - best.p.null.InvMean) / max(best.p.null.InvSD, 1e-9)
		if f.Z < o.MinZ {
			return
		}
		f.Derived, f.Sim, f.Trace = true, &best.sim, best.tr
		chosen := best.p
		fields := map[string]string{"path": path, "sha256": f.SHA256, "score": strconv.FormatFloat(f.Score, 'f', 4, 64),
			"z": strconv.FormatFloat(f.Z, 'f', 1, 64), "invariant_z": strconv.FormatFloat(f.InvZ, 'f', 1, 64), "verdict": f.Trace.Verdict, "named": strings.Join(f.Trace.Named, ","),
			"tool": "strongroom scan", "method": "fingerprint/v1"}
		f.LogIndex, err = a.record(ctx, audit.Event{Kind: audit.KindScanFinding,
			Subject: map[string]string{"model": chosen.name, "version": chosen.version}, Decision: audit.Allow, Fields: fields})
		if err != nil {
			ferr = fmt.Errorf("scan.finding refused: %w", err)
		}
	})
	if ferr != nil {
		return out, ferr
	}
	derived := 0
	for _, f := range out {
		if f.Derived {
			derived++
		}
	}
	if err := a.Audit(ctx, audit.Event{Kind: audit.KindScanRun, Decision: audit.Allow, Fields: map[string]string{"models_found": strconv.Itoa(len(out)),
		"derived": strconv.Itoa(derived), "protected": strconv.Itoa(len(prot)), "bytes": strconv.FormatInt(total, 10)}}); err != nil {
		return out, err
	}
	return out, ctx.Err()
}

// traceCandidates is a version's model key and its licensees (recorded exports and extra).
func (a *App) traceCandidates(ctx context.Context, name, version string, extra []string) (fingerprint.Key, []fingerprint.Candidate, error) {
	ref := name + ":" + version
	exps, err := a.Store.ListExports(ctx, name, version)
	if err != nil {
		return fingerprint.Key{}, nil, err
	}
	names := slices.Clone(extra)
	for _, e := range exps {
		names = append(names, e.Licensee)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	mk, secret, err := a.fingerprintModelKey(ref)
	if err != nil {
		return mk, nil, err
	}
	defer clear(secret)
	var cands []fingerprint.Candidate
	for _, n := range names {
		if err := checkLicensee(n); err != nil {
			return mk, nil, err
		}
		k, err := fingerprint.LicenseeKey(secret, ref, n)
		if err != nil {
			return mk, nil, err
		}
		cands = append(cands, fingerprint.Candidate{Licensee: n, Key: k})
	}
	return mk, cands, nil
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// pathBytes is a file's size, or the total of a directory's regular files.
func pathBytes(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if !fi.IsDir() {
		return fi.Size()
	}
	var n int64
	es, _ := os.ReadDir(path)
	for _, e := range es {
		if i, err := e.Info(); err == nil && i.Mode().IsRegular() {
			n += i.Size()
		}
	}
	return n
}
