"""Reference outputs for the synthetic models written by make_synth.py.

The reference is the numpy forward in common.py (written from llama.cpp's graph semantics),
run in float32; a float64 run and Hugging Face transformers (float32, eager attention) are used
as cross-checks and their agreement is stored in the fixture. transformers loads llama / qwen2
/ gemma3 through its GGUF loader; qwen3, phi3 and gemma2 are built from a Qwen3Config /
Phi3Config / Gemma2Config of the same shapes (the published configs' fields) and given the
GGUF's tensors by name (hf_from_config), and their greedy continuation is compared too.

phi3 gets a second case: 12 ids in a 16-token context (its original context), so the short
rope factors apply; the first case (a 104-token session, 40 ids) uses the long ones. Both
transformers (by sequence length) and llama.cpp / tailor (by context size) pick the same set
for these cases.

usage: python scripts/ref/ref_synth.py    -> tests/fixtures/ref_synth_<name>.json
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from make_synth import SPECS, BOS, OUT  # noqa: E402

N_IDS = 40
POSITIONS = [0, 5, 17, 39]
N_GREEDY = 16


def sequence(seed=7):
    rng = np.random.default_rng(seed)
    return [BOS] + [int(x) for x in rng.integers(0, 298, size=N_IDS - 1)]


def hf_from_config(meta, W):
    """A transformers model built from a config with the GGUF's shapes, weights by name."""
    import torch
    import transformers as tf
    hp = common.Hparams(meta, W)
    arch = hp.arch
    common_kw = dict(vocab_size=hp.vocab, hidden_size=hp.dim, num_hidden_layers=hp.n_layer,
                     num_attention_heads=hp.n_head, num_key_value_heads=hp.n_kv, rms_norm_eps=hp.eps,
                     max_position_embeddings=hp.n_ctx_train, tie_word_embeddings="output.weight" not in W,
                     bos_token_id=BOS, eos_token_id=BOS + 1, pad_token_id=None)
    n_ff = W["blk.0.ffn_down.weight"].shape[1]
    rope = {"rope_type": "default", "rope_theta": hp.base}
    if arch == "qwen3":
        cfg = tf.Qwen3Config(intermediate_size=n_ff, head_dim=hp.head_k, rope_parameters=rope, **common_kw)
        cls = tf.Qwen3ForCausalLM
    elif arch == "phi3":
        if hp.rope_long is not None:
            rope = {"rope_type": "longrope", "rope_theta": hp.base, "long_factor": hp.rope_long.tolist(),
                    "short_factor": hp.rope_short.tolist(), "original_max_position_embeddings": hp.n_ctx_orig}
        cfg = tf.Phi3Config(intermediate_size=n_ff, rope_parameters=rope, original_max_position_embeddings=hp.n_ctx_orig,
                            sliding_window=hp.window or None, **common_kw)
        cls = tf.Phi3ForCausalLM
    elif arch == "gemma2":
        cfg = tf.Gemma2Config(intermediate_size=n_ff, head_dim=hp.head_k, rope_parameters=rope,
                              query_pre_attn_scalar=round(hp.scale ** -2), sliding_window=hp.window,
                              attn_logit_softcapping=hp.attn_softcap, final_logit_softcapping=hp.final_softcap,
                              hidden_activation="gelu_pytorch_tanh", **common_kw)
        cls = tf.Gemma2ForCausalLM
    else:
        raise ValueError(arch)
    # Gemma's RMSNorm multiplies by (1 + w): llama.cpp's converter stored w + 1
    nrm = (lambda a: a - 1.0) if arch == "gemma2" else (lambda a: a)
    sd = {"model.embed_tokens.weight": W["token_embd.weight"], "model.norm.weight": nrm(W["output_norm.weight"])}
    if "output.weight" in W:
        sd["lm_head.weight"] = W["output.weight"]
    for il in range(hp.n_layer):
        b, t = f"blk.{il}.", f"model.layers.{il}."
        sd[t + "input_layernorm.weight"] = nrm(W[b + "attn_norm.weight"])
        sd[t + "self_attn.o_proj.weight"] = W[b + "attn_output.weight"]
        sd[t + "mlp.down_proj.weight"] = W[b + "ffn_down.weight"]
        if arch == "phi3":
            sd[t + "self_attn.qkv_proj.weight"] = W[b + "attn_qkv.weight"]
            sd[t + "mlp.gate_up_proj.weight"] = W[b + "ffn_up.weight"]
        else:
            for hf, gg in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")):
                sd[t + f"self_attn.{hf}.weight"] = W[b + gg + ".weight"]
            sd[t + "mlp.gate_proj.weight"] = W[b + "ffn_gate.weight"]
            sd[t + "mlp.up_proj.weight"] = W[b + "ffn_up.weight"]
        if arch == "qwen3":
            sd[t + "self_attn.q_norm.weight"] = W[b + "attn_q_norm.weight"]
            sd[t + "self_attn.k_norm.weight"] = W[b + "attn_k_norm.weight"]
        if arch == "gemma2":
            sd[t + "post_attention_layernorm.weight"] = nrm(W[b + "post_attention_norm.weight"])
            sd[t + "pre_feedforward_layernorm.weight"] = nrm(W[b + "ffn_norm.weight"])
            sd[t + "post_feedforward_layernorm.weight"] = nrm(W[b + "post_ffw_norm.weight"])
        else:
            sd[t + "post_attention_layernorm.weight"] = W[b + "ffn_norm.weight"]
    cfg._attn_implementation = "eager"
    model = cls(cfg).to(torch.float32)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"state dict: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    return model


def hf_greedy(model, ids, n):
    import torch
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            row = model(torch.tensor([seq]), use_cache=False).logits[0, -1].float().numpy()
            seq.append(int(np.argmax(row)))
    return seq[len(ids):]


def hf_check(name, ids, ref, meta=None, W=None, greedy_cases=()):
    """max |transformers - ref| over all positions (and, for the models built from a config,
    whether transformers' greedy continuation of each (ids, n, want) in greedy_cases equals
    want), or a string saying why not available."""
    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        return f"transformers unavailable ({e})"
    fn = name + ".gguf"
    if meta is not None and meta["general.architecture"] in ("qwen3", "phi3", "gemma2"):
        try:
            model = hf_from_config(meta, W)
            with torch.no_grad():
                out = model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
            same = [hf_greedy(model, g_ids, n) == want for g_ids, n, want in greedy_cases]
            return float(np.max(np.abs(out - ref))), transformers.__version__, same
        except Exception as e:  # report, do not fail: this is only a cross-check
            return f"transformers could not run it: {type(e).__name__}: {str(e)[:300]}"
    try:
        cfg = AutoConfig.from_pretrained(OUT, gguf_file=fn)
        if name == "synth_llama3_ropescale":
            # the GGUF loader ignores rope_freqs.weight: describe the same scaling in the config
            cfg.rope_parameters = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 16}
        if name == "synth_gemma3":
            # the loader leaves Gemma's default query_pre_attn_scalar (256); llama.cpp scales
            # by 1/sqrt(key_length) for all but the 27B model
            cfg.query_pre_attn_scalar = cfg.head_dim
        model = AutoModelForCausalLM.from_pretrained(
            OUT, gguf_file=fn, config=cfg, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
        return float(np.max(np.abs(out - ref))), transformers.__version__
    except Exception as e:  # report, do not fail: this is only a cross-check
        return f"transformers could not run it: {type(e).__name__}: {str(e)[:200]}"


def greedy(meta, W, ids, n, n_ctx=None):
    seq = list(ids)
    margin = float("inf")
    for _ in range(n):
        row = common.forward(meta, W, seq, positions=[len(seq) - 1], n_ctx=n_ctx)[0]
        two = np.sort(row)[-2:]
        margin = min(margin, float(two[1] - two[0]))
        seq.append(int(np.argmax(row)))
    return seq[len(ids):], margin


def make_case(meta, W, ids, positions, greedy_from, n_greedy, n_ctx=None):
    L = common.forward(meta, W, ids, dtype=np.float32, n_ctx=n_ctx)
    g, margin = greedy(meta, W, ids[:greedy_from], n_greedy, n_ctx)
    case = {"ids": ids}
    if n_ctx is not None:
        case["n_ctx"] = n_ctx
    case.update({
        "positions": [{"pos": p, "top": common.topk(L[p], 20)} for p in positions],
        "logits_full": {"pos": len(ids) - 1, "logits": [float(x) for x in L[-1]]},
        "greedy_from": greedy_from,
        "greedy": g,
        "greedy_min_margin": margin,
    })
    return case, L


def main():
    ids = sequence()
    only = sys.argv[1:]
    for name in SPECS:
        if only and name not in only:
            continue
        meta, W = common.load_gguf(os.path.join(OUT, name + ".gguf"))
        case, L32 = make_case(meta, W, ids, POSITIONS, 20, N_GREEDY)
        cases = [case]
        if meta["general.architecture"] == "phi3":  # the short rope factors: a session within the original context
            orig = int(meta["phi3.rope.scaling.original_context_length"])
            short, _ = make_case(meta, W, ids[:12], [0, 5, 11], 8, 8, n_ctx=orig)
            cases.append(short)
        L64 = common.forward(meta, W, ids, dtype=np.float64)
        d64 = float(np.max(np.abs(L32 - L64)))
        hf = hf_check(name, ids, L32, meta, W, [(c["ids"][:c["greedy_from"]], len(c["greedy"]), c["greedy"]) for c in cases])
        spread = float(L32[-1].max() - L32[-1].min())
        margin = min(c["greedy_min_margin"] for c in cases)
        print(f"{name}: max|f32-f64| {d64:.2e}; transformers: {hf}; greedy margin {margin:.4f};"
              f" last-row logit range {spread:.2f}")
        if isinstance(hf, tuple) and len(hf) == 3:
            hf_text = (f"transformers {hf[1]} built from a config of the same shapes (hf_from_config), float32, eager: "
                       f"max abs diff {hf[0]:.2e}; greedy continuation equal: {all(hf[2])}")
        elif isinstance(hf, tuple):
            hf_text = f"transformers {hf[1]} GGUF loader, float32, max abs diff {hf[0]:.2e}"
        else:
            hf_text = hf
        fx = {
            "model_file": name + ".gguf",
            "reference": "own numpy forward (scripts/ref/common.py, llama.cpp semantics), float32",
            "crosscheck": {"float64_max_abs_diff": d64, "transformers": hf_text},
            "cases": cases,
        }
        common.write_fixture(os.path.join(OUT, f"ref_{name}.json"), fx)


if __name__ == "__main__":
    main()
