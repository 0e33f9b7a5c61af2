#!/usr/bin/env python3
"""serve-check.py: does a server give a request the same greedy tokens whatever shares its steps?

Sends --requests greedy completions (prompts of random token ids, lengths drawn between
--prompt-min and --prompt-tokens, so prompt pieces of many sizes share steps with decoding;
ignore_eos; logprobs 0) one at a time, then the same requests from --clients concurrent
clients, and compares each request's generated tokens (the logprobs' token strings) and their
log-probabilities. The tokens must be equal, and each log-probability within --tol (a token
whose piece is empty, a control token, is told apart by its log-probability; the same tokens
computed in another order of additions differ by ~1e-3 on the CPU's f32 kernels); the count of
requests equal bit for bit (every log-probability identical) is printed too. Exit status 1 when
a request differs or fails.
Python standard library only.

    python3 scripts/serve-check.py --port 8080 --clients 16 --requests 32 --id-lo 3 --id-hi 256
"""
import argparse
import http.client
import json
import random
import sys
import threading


def complete(host, port, prompt, max_tokens, cache_prompt=True):
    """One greedy completion: (token strings, log-probabilities)."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                       "logprobs": 0, "cache_prompt": cache_prompt})
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
    lp = json.loads(data)["choices"][0]["logprobs"]
    return lp["tokens"], lp["token_logprobs"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--prompt-min", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--id-lo", type=int, default=1000, help="prompt token ids are drawn from [lo, hi)")
    ap.add_argument("--id-hi", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-cache-prompt", action="store_true",
                    help="send cache_prompt false: no prefix reuse between the two passes (on the GPU a reused prefix "
                         "leaves the prompt's last rows to a piece of another size, another GEMM: not bit for bit)")
    ap.add_argument("--tol", type=float, default=1e-2, help="largest log-probability difference allowed")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    prompts = [[rng.randrange(args.id_lo, args.id_hi) for _ in range(rng.randint(args.prompt_min, args.prompt_tokens))]
               for _ in range(args.requests)]
    alone = [complete(args.host, args.port, p, args.max_tokens, not args.no_cache_prompt) for p in prompts]

    together = [None] * len(prompts)
    errors = []
    lock = threading.Lock()
    next_req = [0]

    def client():
        while True:
            with lock:
                k = next_req[0]
                next_req[0] += 1
            if k >= len(prompts):
                return
            try:
                together[k] = complete(args.host, args.port, prompts[k], args.max_tokens, not args.no_cache_prompt)
            except Exception as e:  # noqa: BLE001 (reported below)
                with lock:
                    errors.append(f"request {k}: {e}")

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    bad, exact, worst = 0, 0, 0.0
    for k, (a, b) in enumerate(zip(alone, together)):
        if b is None:
            bad += 1
            continue
        d = max((abs(x - y) for x, y in zip(a[1], b[1]) if x is not None and y is not None), default=0.0)
        worst = max(worst, d)
        if a[0] != b[0] or len(a[1]) != len(b[1]) or d > args.tol:
            bad += 1
            if a[0] != b[0]:
                first = next((i for i, (x, y) in enumerate(zip(a[0], b[0])) if x != y), min(len(a[0]), len(b[0])))
                print(f"request {k} (prompt of {len(prompts[k])} tokens): another token at {first} of {len(a[0])}")
            else:
                print(f"request {k} (prompt of {len(prompts[k])} tokens): the same tokens, a log-probability "
                      f"{d:.3g} apart")
        exact += a == b
    for e in errors:
        print(e)
    n = len(prompts)
    print(f"serve-check: {n} greedy requests of {args.max_tokens} tokens, {args.clients} clients at once against one at "
          f"a time: {n - bad} equal ({exact} bit for bit), {bad} differ or failed; largest log-probability "
          f"difference {worst:.3g}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
