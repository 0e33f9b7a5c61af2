"""Write the tiny synthetic GGUF models used by tests (all weights F32, random, fixed seeds).

usage: python scripts/ref/make_synth.py      -> tests/fixtures/synth_*.gguf

Models (sizes kept small so every file stays under 600 KB):
  synth_llama_untied     llama, dim 64, 3 layers, 4 heads / 2 kv heads, head dim 16, ffn 32,
                         untied output.weight, rope base 1e4, vocab 300
  synth_llama_tied       same shapes, no output.weight (output = token_embd)
  synth_llama3_ropescale same shapes (tied) + rope_freqs.weight: llama3-style frequency factors
                         (factor 8, low 1, high 4, original context 16) as llama.cpp applies them:
                         theta_i = pos * base^(-2i/n_rot) / rope_freqs[i]
  synth_qwen2            qwen2 (q/k/v biases, NEOX rope), base 1e6, same shapes, tied
  synth_gemma3           gemma3, dim 32, 6 layers (5 sliding + 1 global), 2 heads / 1 kv head,
                         head dim 32 (key_length = value_length = 32), ffn 64, sliding window 8,
                         rope base 1e6 (1e4 on sliding layers, llama.cpp's fixed rule), tied
  synth_qwen3            qwen3 (per-head q/k RMSNorm, NEOX rope, no biases), dim 64, 3 layers,
                         4 heads / 2 kv heads, head dim 32 (q width 128 != dim), ffn 48,
                         base 1e6, untied
  synth_phi3             phi3 (fused attn_qkv, ffn_up = [gate; up]), dim 64, 3 layers, 2 heads /
                         1 kv head, head dim 32, ffn 48, untied; LongRoPE as the converter writes
                         Phi-3-mini-128k: context_length 128, rope.scaling.original_context_length
                         16, rope.scaling.attn_factor sqrt(1 + ln(128/16) / ln 16), tensors
                         rope_factors_long/short.weight (16 divisors each); sliding_window 262144
                         (>= context: none, as Phi-3-mini-128k)
  synth_gemma2           gemma2, dim 48, 4 layers (even ones slide, window 8), 2 heads / 1 kv head,
                         head dim 32 (q width 64 != dim; queries scaled by 1/sqrt(32)), ffn 64,
                         rope base 1e4, tied; soft-capping of attention scores at 2.0 and final
                         logits at 1.5 (the real 50 / 30 would barely bend this tiny model's
                         values: these caps make tanh's curve matter)
Tokenizer (all models): gpt2 byte-level BPE, pre "gpt-2": ids 0..255 are the single bytes
(id = byte value, spelled with GPT-2's byte-to-unicode map), 256..297 are 42 merges,
298 = "<|bos|>" (BOS, control), 299 = "<|eos|>" (EOS, control). add_bos_token true.
"""
import os

import numpy as np
import gguf

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures")
VOCAB = 300
BOS, EOS = 298, 299

# Merge rules in rank order; each result becomes the next token id from 256 on.
MERGES = [
    ("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġt", "he"), ("e", "r"), ("o", "n"), ("a", "n"),
    ("r", "e"), ("Ġ", "a"), ("Ġ", "s"), ("Ġ", "w"), ("Ġ", "o"), ("e", "n"), ("a", "t"),
    ("o", "r"), ("i", "s"), ("e", "s"), ("i", "t"), ("e", "d"), ("a", "r"), ("a", "l"),
    ("Ġ", "b"), ("Ġ", "c"), ("Ġ", "f"), ("Ġ", "m"), ("Ġ", "p"), ("o", "u"), ("l", "e"),
    ("Ġ", "d"), ("in", "g"), ("Ġ", "h"), ("Ġ", "an"), ("Ġan", "d"), ("Ġ", "i"), ("Ġo", "f"),
    ("Ġt", "o"), ("s", "t"), ("Ġ", "in"), ("Ġ", "l"), ("Ġ", "n"), ("r", "o"), ("Ġ", "g"),
]


def byte_to_unicode():
    """GPT-2's reversible byte -> printable unicode character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tokenizer_tables():
    b2u = byte_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    for a, b in MERGES:
        assert a in tokens and b in tokens, (a, b)
        tokens.append(a + b)
    tokens += ["<|bos|>", "<|eos|>"]
    assert len(tokens) == VOCAB and len(set(tokens)) == VOCAB
    types = [int(gguf.TokenType.NORMAL)] * 298 + [int(gguf.TokenType.CONTROL)] * 2
    merges = [f"{a} {b}" for a, b in MERGES]
    return tokens, types, merges


def llama3_freq_factors(n_rot, base, factor=8.0, low=1.0, high=4.0, orig_ctx=16):
    """Meta's llama3 rope scaling expressed as llama.cpp's per-dimension divisors."""
    out = []
    for i in range(n_rot // 2):
        freq = base ** (-2.0 * i / n_rot)
        wavelen = 2 * np.pi / freq
        if wavelen < orig_ctx / high:
            out.append(1.0)
        elif wavelen > orig_ctx / low:
            out.append(factor)
        else:
            smooth = (orig_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def longrope_factors(n_rot, rng):
    """Divisors of the shape Phi-3's configs carry: short ones near 1, long ones growing from
    1 to ~factor over the low frequencies."""
    half = n_rot // 2
    short = (1.0 + np.abs(rng.normal(0.0, 0.05, size=half))).astype(np.float32)
    long = (1.0 + np.linspace(0.0, 7.0, half) ** 1.3 * (1.0 + rng.normal(0.0, 0.05, size=half))).astype(np.float32)
    return long, short


def build(name, arch, dim, n_layer, n_head, n_kv, head_dim, n_ff, base, tied, seed,
          qkv_bias=False, gemma=False, window=0, freq_factors=False, qk_norm=False, fused=False,
          longrope=None, softcap=None, ctx=128):
    rng = np.random.default_rng(seed)
    mat = lambda o, i, s=0.08: rng.normal(0.0, s, size=(o, i)).astype(np.float32)
    vec = lambda n, s=0.02: rng.normal(0.0, s, size=(n,)).astype(np.float32)
    # Norm weights near 1 but not equal to 1 so a skipped/misapplied norm shows. (For gemma3
    # the GGUF value is used as-is: llama.cpp's converter already folded in Gemma's "+1".)
    norm = lambda n: (1.0 + rng.normal(0.0, 0.1, size=(n,))).astype(np.float32)

    path = os.path.join(OUT, name + ".gguf")
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name)
    w.add_description("synthetic random-weight test model for tailor (scripts/ref/make_synth.py)")
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(base)
    w.add_layer_norm_rms_eps(1e-6 if gemma else 1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if gemma or head_dim * n_head != dim:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if gemma or window:
        w.add_sliding_window(window)
    if softcap:
        w.add_attn_logit_softcapping(softcap[0])
        w.add_final_logit_softcapping(softcap[1])
    if longrope:
        w.add_rope_scaling_orig_ctx_len(longrope)
        w.add_rope_scaling_attn_factors(float(np.sqrt(1 + np.log(ctx / longrope) / np.log(longrope))))
    w.add_vocab_size(VOCAB)
    tokens, types, merges = tokenizer_tables()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    w.add_tensor("token_embd.weight", mat(VOCAB, dim, 0.1 if not gemma else 0.05))
    if freq_factors:
        w.add_tensor("rope_freqs.weight", llama3_freq_factors(head_dim, base))
    if longrope:
        long, short = longrope_factors(head_dim, rng)
        w.add_tensor("rope_factors_long.weight", long)
        w.add_tensor("rope_factors_short.weight", short)
    for il in range(n_layer):
        b = f"blk.{il}."
        w.add_tensor(b + "attn_norm.weight", norm(dim))
        # larger q/k scale makes attention non-uniform so rope/mask mistakes change logits
        if fused:
            w.add_tensor(b + "attn_qkv.weight", np.concatenate(
                [mat(n_head * head_dim, dim, 0.15), mat(n_kv * head_dim, dim, 0.15), mat(n_kv * head_dim, dim, 0.1)]))
        else:
            w.add_tensor(b + "attn_q.weight", mat(n_head * head_dim, dim, 0.15))
            w.add_tensor(b + "attn_k.weight", mat(n_kv * head_dim, dim, 0.15))
            w.add_tensor(b + "attn_v.weight", mat(n_kv * head_dim, dim, 0.1))
        if qkv_bias:
            w.add_tensor(b + "attn_q.bias", vec(n_head * head_dim, 0.1))
            w.add_tensor(b + "attn_k.bias", vec(n_kv * head_dim, 0.1))
            w.add_tensor(b + "attn_v.bias", vec(n_kv * head_dim, 0.1))
        if qk_norm:
            w.add_tensor(b + "attn_q_norm.weight", norm(head_dim))
            w.add_tensor(b + "attn_k_norm.weight", norm(head_dim))
        w.add_tensor(b + "attn_output.weight", mat(dim, n_head * head_dim, 0.1))
        if gemma:
            w.add_tensor(b + "post_attention_norm.weight", norm(dim))
        w.add_tensor(b + "ffn_norm.weight", norm(dim))
        if fused:
            w.add_tensor(b + "ffn_up.weight", np.concatenate([mat(n_ff, dim, 0.1), mat(n_ff, dim, 0.1)]))
        else:
            w.add_tensor(b + "ffn_gate.weight", mat(n_ff, dim, 0.1))
            w.add_tensor(b + "ffn_up.weight", mat(n_ff, dim, 0.1))
        w.add_tensor(b + "ffn_down.weight", mat(dim, n_ff, 0.1))
        if gemma:
            w.add_tensor(b + "post_ffw_norm.weight", norm(dim))
    w.add_tensor("output_norm.weight", norm(dim))
    if not tied:
        w.add_tensor("output.weight", mat(VOCAB, dim, 0.1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


SPECS = {
    "synth_llama_untied": dict(arch="llama", dim=64, n_layer=3, n_head=4, n_kv=2, head_dim=16,
                               n_ff=32, base=10000.0, tied=False, seed=101),
    "synth_llama_tied": dict(arch="llama", dim=64, n_layer=3, n_head=4, n_kv=2, head_dim=16,
                             n_ff=32, base=10000.0, tied=True, seed=102),
    "synth_llama3_ropescale": dict(arch="llama", dim=64, n_layer=3, n_head=4, n_kv=2, head_dim=16,
                                   n_ff=32, base=10000.0, tied=True, seed=103, freq_factors=True),
    "synth_qwen2": dict(arch="qwen2", dim=64, n_layer=3, n_head=4, n_kv=2, head_dim=16,
                        n_ff=32, base=1000000.0, tied=True, seed=104, qkv_bias=True),
    "synth_gemma3": dict(arch="gemma3", dim=32, n_layer=6, n_head=2, n_kv=1, head_dim=32,
                         n_ff=64, base=1000000.0, tied=True, seed=105, gemma=True, window=8,
                         qk_norm=True),
    "synth_qwen3": dict(arch="qwen3", dim=64, n_layer=3, n_head=4, n_kv=2, head_dim=32,
                        n_ff=48, base=1000000.0, tied=False, seed=110, qk_norm=True),
    "synth_phi3": dict(arch="phi3", dim=64, n_layer=3, n_head=2, n_kv=1, head_dim=32,
                       n_ff=48, base=10000.0, tied=False, seed=107, fused=True, longrope=16,
                       window=262144),
    "synth_gemma2": dict(arch="gemma2", dim=48, n_layer=4, n_head=2, n_kv=1, head_dim=32,
                         n_ff=64, base=10000.0, tied=True, seed=112, gemma=True, window=8,
                         softcap=(2.0, 1.5)),
}

if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for n, s in SPECS.items():
        build(n, **s)
