#!/usr/bin/env python3
"""Golden logits for the reference runtime, computed independently with NumPy (float64).

Usage: /usr/bin/python3 golden.py MODEL_DIR TOKENS... > golden.json

Reads config.json and model.safetensors (F32, BF16 or F16) of a Llama-family model and
prints, as JSON, the next-token logits after each prefix of TOKENS: a straightforward
whole-sequence forward pass with a causal mask (no KV cache), HF Llama conventions:
RMSNorm (x * rsqrt(mean(x^2) + eps) * w), rotary embeddings with rotate_half over the
two halves of each head, grouped-query attention (kv head = head // (heads / kv_heads)),
SwiGLU MLP (down(silu(gate x) * up x)), final norm, lm_head (or the tied embedding).
"""
import json, struct, sys
import numpy as np


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        raw = data[b:e]
        if t["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif t["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        elif t["dtype"] == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        else:
            raise SystemExit("dtype " + t["dtype"])
        out[name] = a.reshape(t["shape"])
    return out


def main():
    d = sys.argv[1]
    toks = [int(x) for x in sys.argv[2:]]
    cfg = json.load(open(d + "/config.json"))
    W = load(d + "/model.safetensors")
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads", H)
    hd = D // H
    eps = cfg.get("rms_norm_eps", 1e-5)
    theta = cfg.get("rope_theta", 10000.0)
    T = len(toks)

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.outer(np.arange(T), inv)               # T x hd/2
    cos = np.concatenate([np.cos(ang)] * 2, axis=1)  # T x hd
    sin = np.concatenate([np.sin(ang)] * 2, axis=1)

    def rope(x):  # T x heads x hd
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        rot = np.concatenate([-x2, x1], axis=-1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    x = W["model.embed_tokens.weight"][toks]  # T x D
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = rms(x, W[p + "input_layernorm.weight"])
        q = rope((h @ W[p + "self_attn.q_proj.weight"].T).reshape(T, H, hd))
        k = rope((h @ W[p + "self_attn.k_proj.weight"].T).reshape(T, KV, hd))
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(T, KV, hd)
        k = np.repeat(k, H // KV, axis=1)
        v = np.repeat(v, H // KV, axis=1)
        s = np.einsum("thd,uhd->htu", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        o = np.einsum("htu,uhd->thd", s, v).reshape(T, D)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g = h @ W[p + "mlp.gate_proj.weight"].T
        u = h @ W[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "mlp.down_proj.weight"].T
    x = rms(x, W["model.norm.weight"])
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    logits = x @ head.T
    json.dump({"tokens": toks, "logits": [[round(float(v), 6) for v in row] for row in logits]}, sys.stdout)


main()
