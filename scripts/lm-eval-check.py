#!/usr/bin/env python3
"""lm-evaluation-harness against `tailor serve`: log-likelihoods of a small local task.

usage: python scripts/lm-eval-check.py [-m MODEL.gguf] [--tailor BIN] [--docs N] [-o OUTDIR]

Needs a Python with lm_eval (PyPI `lm-eval`), transformers, torch and gguf (scripts/ref/
requirements.txt plus lm-eval); exits 77 (skipped) without them. Offline throughout:

1. an HF tokenizer is built from the GGUF (transformers' GGUF loader) and saved to OUTDIR/tok,
   so lm-eval's local-completions model tokenizes exactly as the GGUF says;
2. a local JSONL task: N documents from the essays, each a context of ~48 tokens and a
   continuation of ~12 (task YAML with output_type loglikelihood, no dataset download);
3. `tailor serve` on a free loopback port (f16 KV), lm_eval --model local-completions (token-id
   prompts, echo, logprobs 1, max_tokens 1: lm-eval's log-likelihood protocol), samples logged;
4. the reference: the same context and continuation token ids through transformers in float32
   over the dequantized GGUF (eager attention), summed log-probabilities of the continuation.

Prints each document's lm-eval and reference log-likelihood and is_greedy, and fails (exit 1)
when a log-likelihood differs from the reference by more than 1e-3 per continuation token
(tailor's prefill logits agree with transformers' to ~2e-4: tests/model/test_model_ref.c).
"""
import argparse
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


try:
    import numpy as np
    import torch
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import lm_eval  # noqa: F401
except ImportError as e:
    skip(f"needs lm-eval, transformers and torch ({e})")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", default=os.path.expanduser("~/.cache/tailor/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--tailor", default=os.path.join(ROOT, "build", "tailor"))
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--essays", default=os.path.join(ROOT, "..", "shared", "data", "pg_essays"))
    ap.add_argument("-o", default=None)
    a = ap.parse_args()
    if not os.path.exists(a.m):
        skip(f"{a.m} not found (scripts/setup-models.sh)")
    if not os.access(a.tailor, os.X_OK):
        sys.exit(f"{a.tailor}: not an executable (build first)")
    out = a.o or tempfile.mkdtemp(prefix="tl_lmeval_")
    os.makedirs(out, exist_ok=True)
    mdir, mfile = os.path.dirname(os.path.abspath(a.m)), os.path.basename(a.m)

    tok = AutoTokenizer.from_pretrained(mdir, gguf_file=mfile)
    tokdir = os.path.join(out, "tok")
    tok.save_pretrained(tokdir)

    # the task: contexts and continuations cut on token boundaries from the essays
    text = "".join(open(f, encoding="utf-8").read() for f in sorted(glob.glob(os.path.join(a.essays, "*.txt"))))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    docs, pos = [], 0
    while len(docs) < a.docs and pos + 60 < len(ids):
        ctx = tok.decode(ids[pos:pos + 48])
        cont = tok.decode(ids[pos + 48:pos + 60])
        docs.append({"context": ctx, "continuation": cont})
        pos += 997
    taskdir = os.path.join(out, "task")
    os.makedirs(taskdir, exist_ok=True)
    with open(os.path.join(taskdir, "docs.jsonl"), "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    with open(os.path.join(taskdir, "tailor_ll.yaml"), "w", encoding="utf-8") as f:
        f.write("task: tailor_local_ll\n"
                "dataset_path: json\n"
                f"dataset_kwargs:\n  data_files:\n    test: {os.path.join(taskdir, 'docs.jsonl')}\n"
                "test_split: test\n"
                "output_type: loglikelihood\n"
                "doc_to_text: \"{{context}}\"\n"
                "doc_to_target: \"{{continuation}}\"\n"
                "target_delimiter: \"\"\n"
                "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
                "  - metric: acc\n")

    port = free_port()
    log = open(os.path.join(out, "serve.log"), "w")
    srv = subprocess.Popen([a.tailor, "serve", "-m", a.m, "--port", str(port), "-c", "1024", "--kv", "f16",
                            "--parallel", "1", "-t", "2"], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            time.sleep(0.1)
            if "listening on" in open(os.path.join(out, "serve.log")).read():
                break
            if srv.poll() is not None:
                sys.exit("tailor serve exited: see " + os.path.join(out, "serve.log"))
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        margs = (f"model=tailor,base_url=http://127.0.0.1:{port}/v1/completions,tokenizer_backend=huggingface,"
                 f"tokenizer={tokdir},num_concurrent=1,max_retries=1,tokenized_requests=True")
        cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", margs,
               "--tasks", "tailor_local_ll", "--include_path", taskdir, "--batch_size", "1",
               "--log_samples", "--output_path", os.path.join(out, "results")]
        t0 = time.time()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        open(os.path.join(out, "lm_eval.log"), "w").write(r.stdout + r.stderr)
        if r.returncode:
            sys.exit(f"lm_eval failed ({r.returncode}): see {out}/lm_eval.log\n{r.stderr[-2000:]}")
        print(f"lm_eval: {len(docs)} documents in {time.time() - t0:.1f} s")
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait(timeout=30)

    samples = glob.glob(os.path.join(out, "results", "**", "samples_tailor_local_ll_*.jsonl"), recursive=True)
    if not samples:
        sys.exit("no samples file from lm_eval")
    got = [json.loads(line) for line in open(samples[0], encoding="utf-8")]

    model = AutoModelForCausalLM.from_pretrained(mdir, gguf_file=mfile, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    worst, bad = 0.0, 0
    print("doc  n_cont  lm-eval ll  reference ll   |diff|  greedy(lm-eval/ref)")
    for s in sorted(got, key=lambda x: x["doc_id"]):
        ctx, cont = s["arguments"]["gen_args_0"]["arg_0"], s["arguments"]["gen_args_0"]["arg_1"]
        ll, greedy = s["resps"][0][0]
        ll = float(ll)
        # lm-eval's own split (TemplateLM._encode_pair): trailing spaces of the context move to the
        # continuation, the pair is tokenized whole and the continuation is what follows the
        # context's tokens
        n_sp = len(ctx) - len(ctx.rstrip())
        if n_sp:
            ctx, cont = ctx[:-n_sp], ctx[-n_sp:] + cont
        whole = tok(ctx + cont, add_special_tokens=False)["input_ids"]
        c_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        t_ids = whole[len(c_ids):]
        seq = c_ids + t_ids
        with torch.no_grad():
            lg = model(torch.tensor([seq])).logits[0].double()
        lp = torch.log_softmax(lg, dim=-1)
        ref = sum(float(lp[len(c_ids) - 1 + i, t]) for i, t in enumerate(t_ids))
        ref_greedy = all(int(lg[len(c_ids) - 1 + i].argmax()) == t for i, t in enumerate(t_ids))
        d = abs(ll - ref)
        worst = max(worst, d / len(t_ids))
        bad += d > 1e-3 * len(t_ids)
        print(f"{s['doc_id']:3d}  {len(t_ids):6d}  {ll:10.4f}  {ref:12.4f}  {d:7.1e}  {greedy}/{ref_greedy}")
    print(f"largest |lm-eval - reference| per continuation token: {worst:.2e} (bound 1e-3); {bad} over")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
