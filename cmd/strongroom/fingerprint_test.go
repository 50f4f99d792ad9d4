package main

import (
	"math/rand/v2"
	"os"
	"strconv"
	"strings"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/strongroom/strongroom/internal/fingerprint"
)

func init() { scriptCmds["leak"] = leakCmd }

// leakCmd makes what a leaker would from a model: leak SRC DST STEP... with steps
// noise=REL (Gaussian, REL × each matrix's RMS) and at most one final gguf=q8_0|q4_0|q4_k
// (else DST is BF16 safetensors).
func leakCmd(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 {
		ts.Fatalf("usage: leak SRC DST [noise=REL] [gguf=TYPE]")
	}
	m, err := fingerprint.Load(ts.MkAbs(args[0]))
	ts.Check(err)
	rng := rand.New(rand.NewPCG(1, 2))
	gguf := fingerprint.GGMLType(0)
	isGGUF := false
	for _, step := range args[2:] {
		k, v, _ := strings.Cut(step, "=")
		switch k {
		case "noise":
			rel, err := strconv.ParseFloat(v, 64)
			ts.Check(err)
			for i := range m.Tensors {
				t := &m.Tensors[i]
				if !fingerprint.Marked(t) {
					continue
				}
				s := rel * fingerprint.RMS(t.Data)
				for j := range t.Data {
					t.Data[j] += float32(rng.NormFloat64() * s)
				}
			}
		case "gguf":
			isGGUF = true
			gguf = map[string]fingerprint.GGMLType{"q8_0": fingerprint.TypeQ8_0, "q4_0": fingerprint.TypeQ4_0, "q4_k": fingerprint.TypeQ4_K}[v]
		default:
			ts.Fatalf("leak: unknown step %q", step)
		}
	}
	f, err := os.Create(ts.MkAbs(args[1]))
	ts.Check(err)
	if isGGUF {
		ts.Check(fingerprint.WriteModelGGUF(f, m, gguf))
	} else {
		ts.Check(fingerprint.WriteSafetensors(f, m.Tensors, "BF16", nil))
	}
	ts.Check(f.Close())
}
