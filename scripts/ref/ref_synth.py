"""Reference outputs for the synthetic models written by make_synth.py.

The reference is the numpy forward in common.py (written from llama.cpp's graph semantics),
run in float32; a float64 run and, where its GGUF loader handles the model, Hugging Face
transformers (float32) are used as cross-checks and their agreement is stored in the fixture.

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


def hf_check(name, ids, ref):
    """max |transformers - ref| over all positions, or a string saying why not available."""
    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        return f"transformers unavailable ({e})"
    fn = name + ".gguf"
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


def greedy(meta, W, ids, n):
    seq = list(ids)
    margin = float("inf")
    for _ in range(n):
        row = common.forward(meta, W, seq, positions=[len(seq) - 1])[0]
        two = np.sort(row)[-2:]
        margin = min(margin, float(two[1] - two[0]))
        seq.append(int(np.argmax(row)))
    return seq[len(ids):], margin


def main():
    ids = sequence()
    for name in SPECS:
        meta, W = common.load_gguf(os.path.join(OUT, name + ".gguf"))
        L32 = common.forward(meta, W, ids, dtype=np.float32)
        L64 = common.forward(meta, W, ids, dtype=np.float64)
        d64 = float(np.max(np.abs(L32 - L64)))
        hf = hf_check(name, ids, L32)
        g, margin = greedy(meta, W, ids[:20], N_GREEDY)
        spread = float(L32[-1].max() - L32[-1].min())
        print(f"{name}: max|f32-f64| {d64:.2e}; transformers: {hf}; greedy margin {margin:.4f};"
              f" last-row logit range {spread:.2f}")
        fx = {
            "model_file": name + ".gguf",
            "reference": "own numpy forward (scripts/ref/common.py, llama.cpp semantics), float32",
            "crosscheck": {
                "float64_max_abs_diff": d64,
                "transformers": (f"transformers {hf[1]} GGUF loader, float32, max abs diff {hf[0]:.2e}"
                                 if isinstance(hf, tuple) else hf),
            },
            "cases": [{
                "ids": ids,
                "positions": [{"pos": p, "top": common.topk(L32[p], 20)} for p in POSITIONS],
                "logits_full": {"pos": N_IDS - 1, "logits": [float(x) for x in L32[-1]]},
                "greedy_from": 20,
                "greedy": g,
                "greedy_min_margin": margin,
            }],
        }
        common.write_fixture(os.path.join(OUT, f"ref_{name}.json"), fx)


if __name__ == "__main__":
    main()
