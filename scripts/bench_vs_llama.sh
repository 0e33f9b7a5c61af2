#!/usr/bin/env bash
# tailor bench beside llama-bench on the same GGUF, threads and test sizes, one after the
# other, so that a ratio can be quoted. llama.cpp is not part of this repository: pass the
# path of a llama-bench you built yourself.
#   scripts/bench_vs_llama.sh LLAMA_BENCH MODEL.gguf [THREADS] [DEPTHS] [REPS]
# Depth 0 uses -p 512 -n 128; deeper points -p 512 -n 64 (llama-bench's -d).
set -euo pipefail
cd "$(dirname "$0")/.."
LB="${1:?path to llama-bench}"; MODEL="${2:?model}"; TH="${3:-2}"; DEPTHS="${4:-0,4096,8192}"; REPS="${5:-3}"
T="${TAILOR:-build/tailor}"
for d in ${DEPTHS//,/ }; do
  n=128; [ "$d" -gt 0 ] && n=64
  r=$REPS; [ "$d" -gt 0 ] && r=1
  echo "## depth $d (tailor, then llama.cpp)"
  "$T" bench -m "$MODEL" -t "$TH" -p 512 -n "$n" -d "$d" -r "$r" -o md 2>/dev/null | tail -n +3
  "$LB" -m "$MODEL" -t "$TH" -p 512 -n "$n" -d "$d" -r "$r" -fa 1 2>/dev/null | grep -E "^\| .*(pp|tg)"
done
