"""Shared helpers for the reference scripts: GGUF loading (dequantized to float32 with the
`gguf` package) and a plain numpy forward pass written from llama.cpp's graph semantics for
the `llama`, `qwen2`, `qwen3`, `phi3`, `gemma2` and `gemma3` architectures.

This is deliberately simple (whole-sequence, no KV cache) so it can be read and checked by eye.
"""
import json
import math

import numpy as np
import gguf


def load_gguf(path):
    """Return (meta dict, tensors dict name -> float32 numpy array in row-major
    [ne1, ne0] order, i.e. a weight matrix is [out, in] and y = x @ W.T)."""
    r = gguf.GGUFReader(path)
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        try:
            meta[k] = f.contents()
        except Exception:  # pragma: no cover - odd field types are not needed here
            pass
    tensors = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = [int(x) for x in reversed(t.shape)]   # ggml ne is innermost-first
        tensors[t.name] = np.ascontiguousarray(a.reshape(shape), dtype=np.float32)
    return meta, tensors


class Hparams:
    def __init__(self, meta, tensors):
        arch = meta["general.architecture"]
        g = lambda k, d=None: meta.get(f"{arch}.{k}", d)
        self.arch = arch
        self.n_layer = int(g("block_count"))
        self.dim = int(g("embedding_length"))
        self.n_head = int(g("attention.head_count"))
        self.n_kv = int(g("attention.head_count_kv", self.n_head))
        self.head_k = int(g("attention.key_length", self.dim // self.n_head))
        self.head_v = int(g("attention.value_length", self.head_k))
        self.n_rot = int(g("rope.dimension_count", self.head_k))
        self.eps = float(g("attention.layer_norm_rms_epsilon"))
        self.base = float(g("rope.freq_base", 10000.0))
        self.n_ctx_train = int(g("context_length"))
        self.window = int(g("attention.sliding_window", 0))
        self.vocab = tensors["token_embd.weight"].shape[0]
        # llama.cpp: llama uses "normal" rope (adjacent pairs, the converter permuted q/k);
        # the others use NEOX rope (pairs i, i + n_rot/2).
        self.neox = arch != "llama"
        self.gemma = arch in ("gemma2", "gemma3")
        self.swa = [False] * self.n_layer
        self.base_swa = self.base
        self.attn_softcap = 0.0
        self.final_softcap = 0.0
        if arch == "gemma3":
            # llama.cpp hard-codes: pattern of 6 (5 sliding + 1 global), sliding rope base 1e4
            self.swa = [(il % 6) < 5 for il in range(self.n_layer)]
            self.base_swa = 10000.0
        if arch == "gemma2":
            # llama.cpp: even layers slide (window 4096 unless the file says), soft-capping of
            # attention scores (default 50) and final logits (default 30)
            self.window = int(g("attention.sliding_window", 4096))
            self.swa = [il % 2 == 0 for il in range(self.n_layer)]
            self.attn_softcap = float(g("attn_logit_softcapping", 50.0))
            self.final_softcap = float(g("final_logit_softcapping", 30.0))
        if arch == "phi3":
            # tailor's rule (transformers' too; llama.cpp ignores it): a window shorter than the
            # training context (Phi-3-mini-4k: 2047 of 4096) applies to every layer
            if 0 < self.window < self.n_ctx_train:
                self.swa = [True] * self.n_layer
        # gemma 27B models scale queries by 1/sqrt(n_embd/n_head) (llama.cpp: by layer count)
        big_gemma = (arch == "gemma2" and self.n_layer == 46) or (arch == "gemma3" and self.n_layer == 62)
        self.scale = 1.0 / math.sqrt(self.dim // self.n_head if big_gemma else self.head_k)
        # phi3 LongRoPE: per-dimension divisors, long ones when the context exceeds the original
        self.n_ctx_orig = int(g("rope.scaling.original_context_length", self.n_ctx_train))
        self.rope_long = tensors.get("rope_factors_long.weight")
        self.rope_short = tensors.get("rope_factors_short.weight")
        self.rope_mscale = float(g("rope.scaling.attn_factor", 1.0))

    def freq_factors(self, W, n_ctx):
        """The rope divisors a session of n_ctx tokens uses (llama.cpp's choice by context)."""
        if "rope_freqs.weight" in W:
            return W["rope_freqs.weight"]
        if self.rope_long is not None and n_ctx > self.n_ctx_orig:
            return self.rope_long
        return self.rope_short


def rmsnorm(x, w, eps):
    """RMSNorm over the last axis, in the dtype of x."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(ms + eps)) * w


def rope(x, pos, n_rot, base, neox, freq_factors=None, mscale=1.0):
    """Rotate x [T, H, D] in place-free fashion. theta_i = pos * base^(-2i/n_rot) / ff_i;
    cos and sin are multiplied by mscale (LongRoPE's attention factor)."""
    dt = x.dtype
    half = n_rot // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
    if freq_factors is not None:
        inv = inv / freq_factors.astype(np.float64)
    ang = pos[:, None].astype(np.float64) * inv[None, :]          # [T, half]
    cos = (np.cos(ang) * mscale).astype(dt)[:, None, :]
    sin = (np.sin(ang) * mscale).astype(dt)[:, None, :]
    y = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:n_rot]
        y[..., :half] = a * cos - b * sin
        y[..., half:n_rot] = a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        y[..., 0:n_rot:2] = a * cos - b * sin
        y[..., 1:n_rot:2] = a * sin + b * cos
    return y


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi).astype(x.dtype) * (x + 0.044715 * x * x * x)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def softcap(x, cap):
    """cap * tanh(x / cap) (gemma2's soft-capping); cap 0 = none."""
    if not cap:
        return x
    c = np.asarray(cap, dtype=x.dtype)
    return np.tanh(x / c) * c


def attention(q, k, v, scale, window, n_kv, cap=0.0):
    """q [T, H, Dk], k [T, KV, Dk], v [T, KV, Dv]; causal (and sliding window if window>0:
    query p sees key j iff p - window < j <= p, as llama.cpp's standard SWA); scores
    soft-capped when cap > 0."""
    T, H, _ = q.shape
    grp = H // n_kv
    p = np.arange(T)
    mask = p[None, :] > p[:, None]
    if window > 0:
        mask |= (p[:, None] - p[None, :]) >= window
    out = np.empty((T, H, v.shape[2]), dtype=q.dtype)
    for h in range(H):
        kh = k[:, h // grp, :]
        s = softcap((q[:, h, :] @ kh.T) * np.asarray(scale, dtype=q.dtype), cap)
        s = np.where(mask, -np.inf, s)
        s = s - s.max(axis=1, keepdims=True)
        e = np.exp(s)
        a = e / e.sum(axis=1, keepdims=True)
        out[:, h, :] = a @ v[:, h // grp, :]
    return out


def forward(meta, W, ids, positions=None, dtype=np.float32, n_ctx=None):
    """Logits [len(positions), vocab] (all positions if None) for the token id sequence.
    n_ctx: the session's context (it picks phi3's long or short rope factors); default the
    sequence length."""
    hp = Hparams(meta, W)
    c = lambda name: W[name].astype(dtype, copy=False)
    has = lambda name: name in W
    ids = np.asarray(ids)
    T = len(ids)
    pos = np.arange(T)
    x = c("token_embd.weight")[ids].copy()
    if hp.gemma:
        x = x * np.asarray(math.sqrt(hp.dim), dtype=dtype)
    ff = hp.freq_factors(W, n_ctx if n_ctx is not None else T)
    qd, kd = hp.n_head * hp.head_k, hp.n_kv * hp.head_k
    for il in range(hp.n_layer):
        b = f"blk.{il}."
        h = rmsnorm(x, c(b + "attn_norm.weight"), hp.eps)
        if has(b + "attn_qkv.weight"):  # phi3: one matrix, rows q then k then v
            qkv = h @ c(b + "attn_qkv.weight").T
            q, k, v = qkv[:, :qd], qkv[:, qd:qd + kd], qkv[:, qd + kd:]
        else:
            q = h @ c(b + "attn_q.weight").T
            k = h @ c(b + "attn_k.weight").T
            v = h @ c(b + "attn_v.weight").T
        if has(b + "attn_q.bias"):
            q = q + c(b + "attn_q.bias")
            k = k + c(b + "attn_k.bias")
            v = v + c(b + "attn_v.bias")
        q = q.reshape(T, hp.n_head, hp.head_k)
        k = k.reshape(T, hp.n_kv, hp.head_k)
        v = v.reshape(T, hp.n_kv, hp.head_v)
        if has(b + "attn_q_norm.weight"):
            q = rmsnorm(q, c(b + "attn_q_norm.weight"), hp.eps)
            k = rmsnorm(k, c(b + "attn_k_norm.weight"), hp.eps)
        base = hp.base_swa if hp.swa[il] else hp.base
        lff = None if hp.swa[il] and hp.arch == "gemma3" else ff
        q = rope(q, pos, hp.n_rot, base, hp.neox, lff, hp.rope_mscale)
        k = rope(k, pos, hp.n_rot, base, hp.neox, lff, hp.rope_mscale)
        a = attention(q, k, v, hp.scale, hp.window if hp.swa[il] else 0, hp.n_kv, hp.attn_softcap)
        o = a.reshape(T, hp.n_head * hp.head_v) @ c(b + "attn_output.weight").T
        if has(b + "post_attention_norm.weight"):
            o = rmsnorm(o, c(b + "post_attention_norm.weight"), hp.eps)
        x = x + o
        h = rmsnorm(x, c(b + "ffn_norm.weight"), hp.eps)
        if has(b + "ffn_gate.weight"):
            g = h @ c(b + "ffn_gate.weight").T
            u = h @ c(b + "ffn_up.weight").T
        else:  # phi3: ffn_up holds gate then up
            gu = h @ c(b + "ffn_up.weight").T
            g, u = gu[:, :gu.shape[1] // 2], gu[:, gu.shape[1] // 2:]
        act = gelu_tanh(g) if hp.gemma else silu(g)
        f = (act * u) @ c(b + "ffn_down.weight").T
        if has(b + "post_ffw_norm.weight"):
            f = rmsnorm(f, c(b + "post_ffw_norm.weight"), hp.eps)
        x = x + f
    if positions is not None:
        x = x[np.asarray(positions)]
    x = rmsnorm(x, c("output_norm.weight"), hp.eps)
    out = c("output.weight") if has("output.weight") else c("token_embd.weight")
    return softcap(x @ out.T, hp.final_softcap)


def topk(logits_row, k=20):
    idx = np.argsort(-logits_row, kind="stable")[:k]
    return [[int(i), float(logits_row[i])] for i in idx]


def write_fixture(path, obj):
    with open(path, "w") as fp:
        json.dump(obj, fp, separators=(",", ":"))
        fp.write("\n")
