package fingerprint

import (
	"regexp"
	"strings"
)

// Tensor names of the Llama family: Hugging Face (transformers) and GGUF (llama.cpp's
// convert_hf_to_gguf.py, tensor_mapping.py). Layer tensors carry the layer number.
var (
	hfGlobal = map[string]string{
		"model.embed_tokens.weight": "token_embd.weight",
		"model.norm.weight":         "output_norm.weight",
		"lm_head.weight":            "output.weight",
	}
	hfLayer = map[string]string{
		"input_layernorm.weight":          "attn_norm.weight",
		"self_attn.q_proj.weight":         "attn_q.weight",
		"self_attn.k_proj.weight":         "attn_k.weight",
		"self_attn.v_proj.weight":         "attn_v.weight",
		"self_attn.o_proj.weight":         "attn_output.weight",
		"post_attention_layernorm.weight": "ffn_norm.weight",
		"mlp.gate_proj.weight":            "ffn_gate.weight",
		"mlp.up_proj.weight":              "ffn_up.weight",
		"mlp.down_proj.weight":            "ffn_down.weight",
	}
	ggufGlobal, ggufLayer = invert(hfGlobal), invert(hfLayer)
	hfLayerRE             = regexp.MustCompile(`^model\.layers\.(\d{1,4})\.(.+)$`)
	ggufLayerRE           = regexp.MustCompile(`^blk\.(\d{1,4})\.(.+)$`)
)

func invert(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[v] = k
	}
	return out
}

// HFToGGUF maps a Hugging Face Llama tensor name to llama.cpp's; ok false for a name
// outside the family.
func HFToGGUF(name string) (string, bool) {
	if g, ok := hfGlobal[name]; ok {
		return g, true
	}
	if m := hfLayerRE.FindStringSubmatch(name); m != nil {
		if g, ok := hfLayer[m[2]]; ok {
			return "blk." + m[1] + "." + g, true
		}
	}
	return "", false
}

// GGUFToHF maps a llama.cpp tensor name to the Hugging Face one.
func GGUFToHF(name string) (string, bool) {
	if h, ok := ggufGlobal[name]; ok {
		return h, true
	}
	if m := ggufLayerRE.FindStringSubmatch(name); m != nil {
		if h, ok := ggufLayer[m[2]]; ok {
			return "model.layers." + m[1] + "." + h, true
		}
	}
	return "", false
}

// ropePermuted says whether convert_hf_to_gguf.py permutes the rows of this (HF-named)
// tensor for llama.cpp's rotary layout, and with how many heads: q_proj by the attention
// heads, k_proj by the key/value heads.
func ropePermuted(hfName string, heads, kvHeads int) int {
	switch {
	case strings.HasSuffix(hfName, ".self_attn.q_proj.weight"):
		return heads
	case strings.HasSuffix(hfName, ".self_attn.k_proj.weight"):
		return kvHeads
	}
	return 0
}

// PermuteRope reorders the rows of a [rows, cols] matrix from Hugging Face's rotary
// layout (two halves per head) to llama.cpp's (interleaved pairs), or back with inverse.
// SPEC: convert_hf_to_gguf.py LlamaModel.permute.
func PermuteRope(w []float32, rows, cols, heads int, inverse bool) []float32 {
	if heads <= 0 || rows%(2*heads) != 0 {
		return w
	}
	hd := rows / heads
	half := hd / 2
	out := make([]float32, len(w))
	for h := range heads {
		for i := range half {
			for j := range 2 {
				hf, gg := h*hd+j*half+i, h*hd+2*i+j
				if inverse {
					hf, gg = gg, hf
				}
				copy(out[gg*cols:(gg+1)*cols], w[hf*cols:(hf+1)*cols])
			}
		}
	}
	return out
}
