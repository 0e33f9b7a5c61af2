#!/usr/bin/env python3
"""serve-bench.py: load generator for an OpenAI-compatible completions server (tailor serve,
llama.cpp's llama-server), Python standard library only.

For each client count C (--clients 1,2,4,8), C clients each send --requests streaming
/v1/completions requests one after another: a prompt of --prompt-tokens token ids (distinct per
request, so no server can reuse a cached prefix) and --max-tokens generated tokens (greedy,
ignore_eos). Per round it prints the aggregate output tokens/s (all generated tokens over the
round's wall time), time to first token (p50) and the time per output token: the gaps between
streamed tokens, p50 and p99 over all of them. With --pid (the server's process id) it also
prints the generated tokens per CPU-second the server used in the round: on a machine shared
with other work, wall-clock rates follow the share of the CPUs a process gets (more runnable
threads, a larger share), CPU-seconds do not. --repeat N runs each round N times and prints
each run, then the median and the spread (min-max).

--followup N measures conversations that continue: before each timed round every client sends
its prompt with max_tokens 1 (not timed: a server that reuses prefixes now holds it), and the
timed requests are that prompt plus N new token ids, so they decode at the prompt's depth after
evaluating about N tokens (--requests 1, and no more clients than the server has slots, keeps each
prefix held). The cached prompt tokens the server reports (usage.prompt_tokens_details) are
printed per run.

--servers LABEL:PORT[:PID],... measures several servers (all started beforehand) side by side:
for each client count and repeat it runs every server in turn (A B A B ...), printing the
machine's load average (as uptime shows it) before each run, so that a shared machine's
changing load falls on both alike; the table then has one row per server and client count.

    python3 scripts/serve-bench.py --port 8080 --clients 1,2,4,8 --repeat 3
    python3 scripts/serve-bench.py --servers tailor:8080:PID1,llama-server:8081:PID2 --repeat 2
"""
import argparse
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def one_request(host, port, prompt, max_tokens, out, native=False, cached=None):
    """Stream one completion; append (ttft, [gaps between tokens]) to out, or raise. native: llama.cpp's
    own /completion endpoint (its /v1/completions takes text prompts only, not token ids)."""
    if native:
        path, body = "/completion", {"prompt": prompt, "n_predict": max_tokens}
    else:
        path, body = "/v1/completions", {"prompt": prompt, "max_tokens": max_tokens,
                                         "stream_options": {"include_usage": True}}
    body = json.dumps(dict(body, temperature=0, ignore_eos=True, stream=True))
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    times = []
    for line in resp:
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        ev = json.loads(data)
        if native:
            if ev.get("stop"):
                break
            times.append(time.perf_counter())
            continue
        u = ev.get("usage")
        if u and cached is not None:
            cached.append((u.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
        ch = ev.get("choices") or []
        if ch and (ch[0].get("text") or ch[0].get("finish_reason") is not None):
            # new text (one token or more: bytes of an incomplete UTF-8 character wait for the
            # rest), or the final chunk, whose text may be empty
            times.append(time.perf_counter())
    conn.close()
    if not times:
        raise RuntimeError("no token streamed")
    gaps = [b - a for a, b in zip(times, times[1:])]
    if not native and len(times) < max_tokens and max_tokens > 1:
        # fewer chunks than tokens (held-back bytes, e.g. a byte vocabulary's random output):
        # the time per output token is spread evenly over the request's decode span
        gaps = [(times[-1] - times[0]) / (max_tokens - 1)] * (max_tokens - 1)
    out.append((times[0] - t0, gaps))


def cpu_s(pid):
    """user + system CPU seconds of a process so far (/proc/PID/stat, clock ticks)."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_once(args, n_clients, seed, port=None, pid=None, native=False):
    port = args.port if port is None else port
    pid = args.pid if pid is None else pid
    rng = random.Random(seed)
    prompts = [[rng.randrange(args.id_lo, args.id_hi) for _ in range(args.prompt_tokens + args.followup)]
               for _ in range(n_clients * args.requests)]
    results, errors, cached = [], [], []
    lock = threading.Lock()

    def client(ci, prime):
        for r in range(args.requests):
            got = []
            try:
                p = prompts[ci * args.requests + r]
                if prime:
                    one_request(args.host, port, p[:args.prompt_tokens], 1, [], native)
                else:
                    one_request(args.host, port, p, args.max_tokens, got, native, cached)
            except Exception as e:  # noqa: BLE001 (reported below)
                with lock:
                    errors.append(str(e))
                return
            with lock:
                results.extend(got)

    def run_all(prime):
        threads = [threading.Thread(target=client, args=(i, prime)) for i in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"{len(errors)} request(s) failed, first: {errors[0]}")

    if args.followup:
        run_all(True)
    t0, c0 = time.perf_counter(), cpu_s(pid)
    run_all(False)
    wall, cpu = time.perf_counter() - t0, cpu_s(pid) - c0
    # a streamed chunk may carry more than one token: count the tokens each request was asked for
    n_tok = len(results) * args.max_tokens
    gaps = [g for _, gs in results for g in gs]
    return {"tps": n_tok / wall, "tpc": n_tok / cpu if cpu > 0 else float("nan"), "ttft": pct([r[0] for r in results], 50),
            "p50": pct(gaps, 50), "p99": pct(gaps, 99), "cached": sum(cached) / len(cached) if cached else float("nan")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, help="the server (or give --servers)")
    ap.add_argument("--servers", default="", help="LABEL:PORT[:PID[:native]],... run in turn for each round (A B A B); "
                    "native: llama-server's /completion, which takes token ids")
    ap.add_argument("--clients", default="1,2,4,8", help="comma-separated client counts")
    ap.add_argument("--requests", type=int, default=2, help="requests per client per round")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--followup", type=int, default=0,
                    help="conversations: prime each prompt (untimed), then time prompt + this many new tokens")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--id-lo", type=int, default=1000, help="prompt token ids are drawn from [lo, hi)")
    ap.add_argument("--id-hi", type=int, default=20000)
    ap.add_argument("--label", default="", help="first column of the table (e.g. the server's name)")
    ap.add_argument("--pid", type=int, default=0, help="the server's process id: also tokens per CPU-second")
    args = ap.parse_args()
    servers = []  # (label, port, pid, native)
    for spec in filter(None, args.servers.split(",")):
        f = spec.split(":")
        servers.append((f[0], int(f[1]), int(f[2]) if len(f) > 2 and f[2] else 0, len(f) > 3 and f[3] == "native"))
    if not servers:
        if args.port is None:
            ap.error("give --port or --servers")
        servers = [(args.label, args.port, args.pid, False)]

    for _, port, _, native in servers:
        one_request(args.host, port, list(range(args.id_lo, args.id_lo + 16)), 4, [], native)  # warm-up
    rows = []
    for c in [int(x) for x in args.clients.split(",")]:
        runs = {s[0]: [] for s in servers}
        for k in range(args.repeat):
            for label, port, pid, native in servers:  # in turn: A B A B
                load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                r = round_once(args, c, seed=1000 * c + k, port=port, pid=pid, native=native)
                print(f"# {label} clients {c} run {k + 1}: load average {load} before; {r['tps']:.1f} tokens/s, "
                      f"{r['tpc']:.1f} per CPU-s, TTFT p50 {r['ttft'] * 1e3:.0f} ms, TPOT p50 {r['p50'] * 1e3:.1f} "
                      f"p99 {r['p99'] * 1e3:.1f} ms" + (f", cached prompt tokens {r['cached']:.0f} a request" if args.followup else ""),
                      file=sys.stderr, flush=True)
                runs[label].append(r)
        for label in runs:
            rs = runs[label]
            tps, tpc = [r["tps"] for r in rs], [r["tpc"] for r in rs]
            med = statistics.median(tps)
            mid = min(rs, key=lambda r: abs(r["tps"] - med))
            rows.append(f"| {label} | {c} | {med:.1f} ({min(tps):.1f}-{max(tps):.1f}) | "
                        f"{statistics.median(tpc):.1f} ({min(tpc):.1f}-{max(tpc):.1f}) | {mid['ttft'] * 1e3:.0f} | "
                        f"{mid['p50'] * 1e3:.1f} | {mid['p99'] * 1e3:.1f} | {', '.join(f'{t:.1f}' for t in tps)} |")
    print("| server | clients | tokens/s (median, min-max) | tokens per CPU-s (median, min-max) | TTFT p50 ms | "
          "TPOT p50 ms | TPOT p99 ms | runs (tokens/s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
