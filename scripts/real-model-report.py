#!/usr/bin/env python3
"""Markdown tables from the result lines of scripts/real-model-eval.sh (tailor's --out JSON lines).

usage: scripts/real-model-report.py RESULTS.jsonl [...] > tables.md

Every figure is printed with the 95% interval the tool measured: Wilson for pass rates, a paired
circular block bootstrap for the PPL ratio and mean KLD (docs/accuracy.md, "Intervals"). A ratio
whose interval contains 1 reads "no measurable loss". Standard library only.
"""
import collections
import json
import os
import re
import sys


def label(cfg):
    """A short name for a KV configuration: the spec as given, plans by what they are."""
    spec = cfg.get("kv_spec") or cfg.get("kv", "?")
    if spec.endswith("auto4.json"):
        return "auto:4 (pinned plan)"
    m = re.match(r"tailor:(.*)", spec)
    if m:
        f = dict(kv.split("=", 1) for kv in m.group(1).split(",") if "=" in kv)
        return "TailorKV b%s k%s s%s" % (f.get("bits", "1"), f.get("budget", "-"), f.get("summary", "0"))
    return spec


def klen(L):
    return f"{L // 1024}k" if L % 1024 == 0 else str(L)


def ci(r, prec=2):
    if r is None:
        return "-"
    v, lo, hi = r.get("value"), r.get("lo"), r.get("hi")
    if lo is None or hi is None:
        return f"{v:.{prec}f}"
    return f"{v:.{prec}f} [{lo:.{prec}f}, {hi:.{prec}f}]"


def main(paths):
    rows = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    order = []  # configurations in first-seen order
    for r in rows:
        lab = label(r["config"])
        if lab not in order:
            order.append(lab)
    model = os.path.basename(rows[0]["config"]["model"]) if rows else "?"
    device = rows[0]["config"].get("device", "?") if rows else "?"
    out = [f"Model `{model}`, device {device}. 95% intervals in brackets.", ""]

    # NIAH: per (config, length) the lines without a depth; overall: neither length nor depth
    niah = collections.OrderedDict()
    for r in rows:
        if r["cmd"] != "niah":
            continue
        key = label(r["config"])
        d = niah.setdefault(key, {"len": {}, "all": None, "cells": {}, "seconds": 0.0})
        if "length" in r and "depth" in r:
            d["cells"][(r["length"], r["depth"])] = r
            d["seconds"] += r.get("seconds", 0)
        elif "length" in r:
            d["len"][r["length"]] = r
        else:
            d["all"] = r
    if niah:
        lengths = sorted({L for d in niah.values() for L in d["len"]})
        n_cell = max((c["n"] for d in niah.values() for c in d["cells"].values()), default=0)
        depths = sorted({dp for d in niah.values() for (_, dp) in d["cells"]})
        out += [f"### NIAH (passkey; {len(depths)} depths x {n_cell} needles per cell; pass rate per length)", ""]
        out.append("| KV | " + " | ".join(klen(L) for L in lengths) + " | all | wall s |")
        out.append("|---|" + "---|" * (len(lengths) + 2))
        for key, d in niah.items():
            cells = [ci(d["len"].get(L)) for L in lengths]
            wall = d["all"].get("seconds", 0) if d["all"] else d["seconds"]
            out.append(f"| {key} | " + " | ".join(cells) + f" | {ci(d['all'])} | {wall:.0f} |")
        out.append("")

    # RULER: ruler_avg per length, and per task at the longest length
    ruler = collections.OrderedDict()
    for r in rows:
        if r["cmd"] == "ruler":
            ruler.setdefault(label(r["config"]), []).append(r)
    if ruler:
        lengths = sorted({r["length"] for rs in ruler.values() for r in rs if "length" in r})
        out += ["### RULER (six tasks, average per length)", ""]
        out.append("| KV | " + " | ".join(klen(L) for L in lengths) + " |")
        out.append("|---|" + "---|" * len(lengths))
        for key, rs in ruler.items():
            avg = {r["length"]: r for r in rs if r["metric"] == "ruler_avg"}
            out.append(f"| {key} | " + " | ".join(ci(avg.get(L)) for L in lengths) + " |")
        out.append("")
        L = lengths[-1] if lengths else None
        tasks = sorted({r["task"] for rs in ruler.values() for r in rs if "task" in r})
        if L and tasks:
            out += [f"RULER per task at {klen(L)}:", ""]
            out.append("| KV | " + " | ".join(tasks) + " |")
            out.append("|---|" + "---|" * len(tasks))
            for key, rs in ruler.items():
                by = {r["task"]: r for r in rs if r.get("length") == L and "task" in r}
                out.append(f"| {key} | " + " | ".join(ci(by.get(t)) for t in tasks) + " |")
            out.append("")

    # perplexity: per (text, ctx) the f16 PPL, then ratio / KLD / same top-1 per configuration
    ppl = collections.OrderedDict()
    for r in rows:
        if r["cmd"] != "perplexity":
            continue
        c = r["config"]
        key = (os.path.basename(c.get("text", "?")), c.get("ctx"))
        ppl.setdefault(key, collections.OrderedDict()).setdefault(label(c), {})[r["metric"]] = r
    for (text, ctx), confs in ppl.items():
        base = next((m["ppl"] for k, m in confs.items() if "ppl" in m and "ppl_ratio" not in m), None)
        n = base["n"] if base else "?"
        out += [f"### Perplexity vs f16: `{text}`, -c {ctx} ({n} scored tokens)", ""]
        if base:
            out += [f"f16 PPL {ci(base, 3)}", ""]
        out.append("| KV | PPL ratio | verdict | mean KLD | same top-1 |")
        out.append("|---|---|---|---|---|")
        for key, m in confs.items():
            if "ppl_ratio" not in m:
                continue
            v = m["ppl_ratio"].get("verdict", "")
            verdict = {"no_loss": "no measurable loss", "loss": "loss", "lower": "lower than base"}.get(v, v)
            out.append(f"| {key} | {ci(m['ppl_ratio'], 4)} | {verdict} | {ci(m.get('kld_mean'), 4)} | "
                       f"{ci(m.get('same_top1'), 3)} |")
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
