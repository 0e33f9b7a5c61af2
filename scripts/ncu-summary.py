#!/usr/bin/env python3
"""ncu-summary.py: per-kernel totals from an Nsight Compute CSV (`ncu --csv --print-units base
--metrics gpu__time_duration.sum,dram__bytes_read.sum,...`), as scripts/gpu.sh's ncu step makes.

Kernels are grouped by name (template arguments dropped); for each: launches, total and mean
time, DRAM bytes read and the rate they were read at. The number of forward passes is the
number of launches of the embedding kernel (one per pass), so "per pass" = total / passes.
Kernels run one at a time under ncu, so the sum is the step without launch overlap or gaps.

    python3 scripts/ncu-summary.py ncu.csv
"""
import csv
import re
import sys
from collections import defaultdict


def short(name):
    name = re.sub(r"<.*", "", name)  # template arguments
    name = re.sub(r"\(.*", "", name)  # parameter list
    return name.split()[-1] if name.split() else name


def main(path):
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu prints its own log lines before the CSV
    for r in csv.DictReader(lines):
        rows.append(r)
    if not rows:
        sys.exit("ncu-summary: no CSV rows in %s" % path)
    per = defaultdict(dict)  # launch id -> metric -> value
    names = {}
    for r in rows:
        i = r["ID"]
        names[i] = short(r["Kernel Name"])
        try:
            per[i][r["Metric Name"]] = float(r["Metric Value"].replace(",", ""))
        except ValueError:
            pass
    agg = defaultdict(lambda: [0, 0.0, 0.0])
    for i, m in per.items():
        a = agg[names[i]]
        a[0] += 1
        a[1] += m.get("gpu__time_duration.sum", 0.0)
        a[2] += m.get("dram__bytes_read.sum", 0.0)
    passes = max((a[0] for n, a in agg.items() if "embed" in n), default=1)
    tot_t = sum(a[1] for a in agg.values())
    tot_b = sum(a[2] for a in agg.values())
    print("| kernel | launches | per pass, us | share | mean us | DRAM read per pass, MB | GB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n, (c, t, b) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        print("| %s | %d | %.1f | %.1f%% | %.2f | %.2f | %.0f |" % (
            n, c, t / passes / 1e3, 100 * t / tot_t, t / c / 1e3, b / passes / 1e6, b / t if t else 0))
    print("| all (%d passes) | %d | %.1f | 100%% | | %.1f | %.0f |" % (
        passes, sum(a[0] for a in agg.values()), tot_t / passes / 1e3, tot_b / passes / 1e6, tot_b / tot_t if tot_t else 0))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
