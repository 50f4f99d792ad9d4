package fingerprint

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// weightsParsers is test/weights, an npm project with parsers we did not write:
// Hugging Face's @huggingface/gguf and @huggingface/hub (its safetensors header parser).
var weightsParsers, _ = filepath.Abs(filepath.Join("..", "..", "test", "weights"))

// outsideParse runs test/weights/parse.mjs on files: one JSON line per file. It skips when
// node or the packages are missing, unless scripts/test requires every integration
// (STRONGROOM_REQUIRE_INTEGRATION=1, after its `npm ci` there).
func outsideParse(t *testing.T, files ...string) [][]byte {
	t.Helper()
	missing := ""
	node, err := exec.LookPath("node")
	if err != nil {
		missing = "node not found"
	} else if _, err := os.Stat(filepath.Join(weightsParsers, "node_modules", "@huggingface", "gguf", "package.json")); err != nil {
		missing = "the npm packages are not installed in " + weightsParsers + " (npm ci)"
	}
	if missing != "" {
		if os.Getenv("STRONGROOM_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("%s, but STRONGROOM_REQUIRE_INTEGRATION=1: run ./scripts/test", missing)
		}
		t.Skip(missing)
	}
	cmd := exec.Command(node, append([]string{"parse.mjs"}, files...)...)
	cmd.Dir = weightsParsers
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("parse.mjs: %v\n%s", err, stderr.Bytes())
	}
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	if len(lines) != len(files) {
		t.Fatalf("parse.mjs: %d lines for %d files:\n%s", len(lines), len(files), out)
	}
	return lines
}

// outsideGGUF is what @huggingface/gguf reads from a GGUF file.
type outsideGGUF struct {
	Version      uint32              `json:"version"`
	TensorCount  int64               `json:"tensor_count"`
	KVCount      int64               `json:"kv_count"`
	Architecture string              `json:"architecture"`
	Alignment    int64               `json:"alignment"`
	DataOffset   int64               `json:"data_offset"`
	Tensors      []outsideGGUFTensor `json:"tensors"`
}

type outsideGGUFTensor struct {
	Name   string  `json:"name"`
	Dims   []int64 `json:"dims"` // fastest first, as in the file
	Type   int     `json:"type"`
	Offset int64   `json:"offset"` // from the data section
}

// outsideSafetensors is what @huggingface/hub reads from a safetensors header.
type outsideSafetensors struct {
	Metadata map[string]string `json:"metadata"`
	Tensors  []struct {
		Name        string   `json:"name"`
		DType       string   `json:"dtype"`
		Shape       []int64  `json:"shape"`
		DataOffsets [2]int64 `json:"data_offsets"`
	} `json:"tensors"`
}

// TestOutsideParsers: Hugging Face's GGUF parser reads every GGUF our writer makes (each
// tensor type we write) with the tensor names, dimensions, types and offsets our reader
// sees, and its safetensors parser reads our safetensors files (each dtype we write) with
// the same names, dtypes, shapes and data offsets.
func TestOutsideParsers(t *testing.T) {
	dir := t.TempDir()
	m := synthModel(3, 2, 256, 512, 300, 4, 2) // rows of 256 and 512: every type's block fits
	m.Tensors = append(m.Tensors, Tensor{Name: "odd.weight", Shape: []int64{3, 100}, Data: make([]float32, 300)})
	var files []string
	types := []GGMLType{TypeF32, TypeF16, TypeBF16, TypeQ8_0, TypeQ4_0, TypeQ4_K, TypeQ6_K}
	for _, typ := range types {
		p := filepath.Join(dir, fmt.Sprintf("t%d.gguf", typ))
		if err := os.WriteFile(p, toGGUF(t, m, typ), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
	}
	dtypes := []string{"F32", "F16", "BF16"}
	for _, dt := range dtypes {
		var buf bytes.Buffer
		if err := WriteSafetensors(&buf, m.Tensors, dt, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, dt+".safetensors")
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
	}
	lines := outsideParse(t, files...)
	for i, typ := range types {
		b, _ := os.ReadFile(files[i])
		g, err := OpenGGUF(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		var got outsideGGUF
		if err := json.Unmarshal(lines[i], &got); err != nil {
			t.Fatalf("%s: %v", lines[i], err)
		}
		want := outsideGGUF{Version: g.Version, TensorCount: int64(len(g.Tensors)), KVCount: int64(len(g.Meta)),
			Architecture: "llama", Alignment: 32, DataOffset: g.data}
		quantized := 0
		for _, tt := range g.Tensors {
			want.Tensors = append(want.Tensors, outsideGGUFTensor{tt.Name, tt.Dims, int(tt.Type), tt.Offset})
			if tt.Type == typ {
				quantized++
			}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("gguf type %d: @huggingface/gguf reads (-ours +theirs):\n%s", typ, diff)
		}
		if quantized < 2*2+3 { // the layers' matrices at least
			t.Errorf("gguf type %d: only %d tensors stored in it", typ, quantized)
		}
	}
	for i, dt := range dtypes {
		b, _ := os.ReadFile(files[len(types)+i])
		st, err := OpenSafetensors(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		var got outsideSafetensors
		if err := json.Unmarshal(lines[len(types)+i], &got); err != nil {
			t.Fatal(err)
		}
		theirs := map[string]TensorInfo{}
		stored := 0
		for _, tt := range got.Tensors {
			theirs[tt.Name] = TensorInfo{tt.DType, tt.Shape, tt.DataOffsets}
			if tt.DType == dt {
				stored++
			}
		}
		if diff := cmp.Diff(st.Tensors, theirs); diff != "" {
			t.Errorf("safetensors %s: @huggingface/hub reads (-ours +theirs):\n%s", dt, diff)
		}
		if got.Metadata["format"] != "pt" || stored != len(m.Tensors) {
			t.Errorf("safetensors %s: metadata %v, %d of %d tensors stored as %s", dt, got.Metadata, stored, len(m.Tensors), dt)
		}
	}
}
