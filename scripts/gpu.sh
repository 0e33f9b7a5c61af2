#!/usr/bin/env bash
# gpu.sh: build the CUDA backend, check it against the CPU, and time it (docs/cuda.md).
# Meant for a machine with an NVIDIA GPU (the device tool runs it with $OUT set; logs and
# tables land there, or in ./gpu-out). Steps:
#   1. cmake -DTL_CUDA=ON build (sm_90 + PTX)
#   2. tests/cuda/test_cuda.c: GPU vs CPU logits on the synthetic f32 fixtures, and quantized KV on a
#      2-layer SmolLM2-shaped synth (head_dim 64)
#   3. a synthetic Llama-3.1-8B (bf16, streamed to disk), decode ms/token at depths 0 / 32k /
#      128k for f16, k4v4, k2v2 (+ KIVI) KV, and prefill time per chunk size
#   4. (prof) where a decode step's GPU time goes (--cuda-opt prof), depth 0 and 128k;
#      (before) the decode bench with --cuda-opt no-fuse,no-pdl (no fused GLU matvecs, no
#      programmatic dependent launch), then each alone, for before/after tables;
#      (minb3) decode kernels at 3 blocks/SM; (olddec) --cuda-opt no-decode, the general kernel
#   5. (prefill) prefill time per chunk size: pp4096, a 512 chunk after 32k, and (long) the
#      whole 128k-token prefill per chunk size, with --cuda-opt no-tc (CUDA-core attention) beside it
#   6. (tailor) TailorKV with --gpu-mem-budget 24GiB at depth 131072 (f16 refused by the plan):
#      the device key summary (summary=4) and the paper's channel-row fetch (summary=0), on the
#      bf16 synth or TK_MODEL (e.g. /dev/shm/llama8b-q4_K_M.gguf that step qweights made)
#   8. (real) a real model staged by scripts/device-stage.sh (REAL_MODEL, default the staged
#      Qwen2.5-Coder-1.5B): GPU logits against the CPU's (the KL divergence of the GPU run from a
#      CPU baseline over REAL_CTX-token windows, and the PPL ratio, each with its interval), then
#      scripts/real-model-eval.sh on the GPU (REAL_STEPS, and its KVS / LENGTHS / ... variables)
#      with the essays and the C file carried in carry/data
#   9. (qweights) weights kept in their GGUF block formats (qmatvec.cu): synthetic Llama-3.1-8B in
#      q4_K_M (llama.cpp's mix), q8_0 and w4g128 (QTYPES), decode ms/token at QDEPTHS with f16 and
#      k4v4 KV, prefill pp4096 (chunk 4096), device memory by part (the block kernels, the
#      default); then q4_K_M widened to f16 at upload (--cuda-opt widen, the 16-bit deployment)
#      at depths 0 and 131072
#  10. (pareto) tailor pareto --device cuda on the staged real model (PARETO_WEIGHTS, PARETO_KVS,
#      PARETO_CTX, PARETO_TASKS, PARETO_NIAH; --resume: a later call continues the sweep)
#   7. (dectc) f16 decode attention on tensor cores (--cuda-opt dec-tc=always) vs decode.cu: the
#      kernel alone (bench_cuda_attn --m 1) and the decode bench; (decmma) per-token codes decoded
#      on decode.cu's CUDA cores (--cuda-opt no-dec-mma) instead of decode_mma.cu's tensor cores
#  11. (serve) tailor serve --device cuda (continuous batching on the GPU, docs/server.md): a
#      30-layer SmolLM2-shaped synth (f16, the fixtures' 300-token byte vocabulary, so that the
#      generated text names the tokens) with -c 1024 --parallel 64, per KV policy (SERVE_KVS):
#      greedy completions from 16 concurrent clients against the same requests one at a time
#      (scripts/serve-check.py: the same tokens), then aggregate tokens/s at SERVE_CLIENTS
#      (1,16,64) clients (scripts/serve-bench.py, SERVE_PROMPT (256) prompt + 128 generated tokens
#      each, slots of SERVE_CTX (1024) tokens; SERVE_NOCHECK skips the check; SERVE_FOLLOWUP=N: each
#      prompt held first, then timed with N new tokens after it: decode at the prompt's depth); and a
#      --gpu-mem-budget the slots do not fit must stop the start with the plan
#  13. (capacity) the largest count of concurrent CAP_CTX-token (32768) sequences a --gpu-mem-budget
#      (CAP_BUDGET, 24GiB) holds on CAP_MODEL (the q4_K_M synth of step qweights), per KV@N of
#      CAP_KVS: the server started with --parallel N serves N clients at once, and N+1 is refused
#  12. (ncu) Nsight Compute: every kernel of a few decode steps timed alone (scripts/ncu-summary.py:
#      per-kernel time and DRAM bytes per forward pass), then the matvec kernels' SOL / memory /
#      warp-stall sections, on NCU_MODEL (default the q4_K_M synth of step qweights)
# Env: STEPS (default "build test bench prof before prefill tailor"; also minb3 olddec safe
# long dectc decmma real qweights pareto serve capacity ncu), GPU_JOBS, DATA (real, pareto: the essays and
# the C file, default carry/data), REAL_MODEL, REAL_CTX, REAL_STEPS, DEPTHS, KVS, CHUNKS, LONG_CHUNKS, TK_KVS,
# MMA_DEPTHS, MMA_KVS, QTYPES, QDEPTHS, SERVE_MODEL, SERVE_KVS, SERVE_CLIENTS, SERVE_REQUESTS, SERVE_FOLLOWUP,
# CAP_MODEL, CAP_KVS, CAP_CTX, CAP_BUDGET,
# TL_CUDA_SAFE (=1: every tailor run on the reference path, --cuda-opt safe), CUDA_OPT (a
# --cuda-opt list added to every tailor run that takes one).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
STEPS=${STEPS:-"build test bench prof before prefill tailor"}
DEPTHS=${DEPTHS:-0,32768,131072}
KVS=${KVS:-f16,k8v8,k4v4,k2v2,k2v2:kivi}
B=build-gpu
CO=(); [ -n "${CUDA_OPT:-}" ] && CO=(--cuda-opt "$CUDA_OPT")
has() { [[ " $STEPS " == *" $1 "* ]]; }
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.md"; }

nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv 2>&1 | tee -a "$OUT/summary.md"

if has build; then
  log "build"
  DEPS=()
  if [ -d .gpudeps ] && [ ! -f /usr/include/cjson/cJSON.h ]; then
    # a machine without cJSON / libmicrohttpd: headers and libraries carried in .gpudeps
    D=$PWD/.gpudeps
    DEPS=(-DCJSON_INCLUDE=$D/include -DCJSON_LIB=$D/lib/libcjson.so -DMHD_INCLUDE=$D/include
      -DMHD_LIB=$D/lib/libmicrohttpd.so "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--disable-new-dtags,-rpath,$D/lib,-rpath-link,$D/lib")
  fi
  cmake -S . -B $B -DTL_CUDA=ON -DCMAKE_BUILD_TYPE=Release "${DEPS[@]}" >"$OUT/build.log" 2>&1 &&
    cmake --build $B -j "${GPU_JOBS:-16}" --target tailor test_cuda bench_cuda_attn >>"$OUT/build.log" 2>&1 || {
    tail -40 "$OUT/build.log"
    exit 1
  }
fi
T=$B/tailor
SHM=/dev/shm
[ -w $SHM ] || SHM=/tmp

if has test; then
  log "test_cuda"
  $T synth --shape smollm2-135m --layers 2 --type f32 -o $SHM/smol2.gguf -q 2>&1 | tail -1
  TL_FIXTURES=$PWD/tests/fixtures TL_CUDA_MODEL=$SHM/smol2.gguf timeout 300 $B/test_cuda 2>&1 | tee "$OUT/test_cuda.log" | tail -30
  rc=${PIPESTATUS[0]}
  echo "test_cuda exit $rc" | tee -a "$OUT/summary.md"
  grep -E "FAIL|passed" "$OUT/test_cuda.log" | tail -5 >>"$OUT/summary.md"
  if [ "$rc" != 0 ]; then
    # which kernels failed? the same checks with the decode kernel off, then with the plain loops
    log "test_cuda with no-decode, then safe (benchmarks still use the defaults)"
    for o in no-decode safe; do
      TL_TEST_CUDA_OPT=$o TL_FIXTURES=$PWD/tests/fixtures TL_CUDA_MODEL=$SHM/smol2.gguf timeout 200 $B/test_cuda >"$OUT/test_cuda_$o.log" 2>&1
      echo "test_cuda (TL_TEST_CUDA_OPT=$o) exit $?" | tee -a "$OUT/summary.md"
      grep -E "FAIL" "$OUT/test_cuda_$o.log" | head -5 >>"$OUT/summary.md"
    done
  fi
fi

M=$SHM/llama8b-bf16.gguf
TKM=${TK_MODEL:-$M}
if has bench || has prefill || has dectc || { has tailor && [ "$TKM" = "$M" ]; }; then
  if [ ! -f $M ]; then
    log "synth llama-3.1-8b bf16"
    $T synth --shape llama-3.1-8b --type bf16 -o $M -q 2>&1 | tail -1
  fi
fi

if has bench; then
  log "decode bench (depths $DEPTHS, kv $KVS)"
  timeout 240 $T bench -m $M --device cuda --cuda-opt verbose "${CO[@]}" -p 0 -n 32 -d "$DEPTHS" --kv "$KVS" -r 2 -o md \
    >"$OUT/decode.md" 2>"$OUT/decode.err"
  echo "bench exit $?" >>"$OUT/summary.md"
  cat "$OUT/decode.md" | tee -a "$OUT/summary.md"
  grep -E "gpu memory|error|tailor bench" "$OUT/decode.err" | sort -u | head -20 | tee -a "$OUT/summary.md"
fi

if has prof; then
  log "profile of a decode step (--cuda-opt prof: events between parts, slightly slower)"
  timeout 240 $T bench -m $M --device cuda --cuda-opt prof "${CO[@]}" -p 0 -n 16 -d 0,131072 --kv f16,k4v4,k2v2 -r 1 -o md \
    >"$OUT/prof.md" 2>"$OUT/prof.err"
  grep -E "profile|ms/step|matrix parts" "$OUT/prof.err" | tee -a "$OUT/summary.md"
fi

if has before; then
  # before/after: both switches off is the decode step of the previous version; then each alone
  for sw in no-fuse,no-pdl no-fuse no-pdl; do
    log "decode bench with --cuda-opt $sw"
    timeout 120 $T bench -m $M --device cuda --cuda-opt $sw "${CO[@]}" -p 0 -n 32 -d 0,131072 --kv f16 -r 2 -o md \
      >"$OUT/decode_before.md" 2>/dev/null
    tail -2 "$OUT/decode_before.md" | tee -a "$OUT/summary.md"
  done
fi

if has minb3; then
  log "decode bench with --cuda-opt dec-minb=3 (head_dim-128 decode kernels at 3 blocks/SM)"
  timeout 240 $T bench -m $M --device cuda --cuda-opt dec-minb=3 "${CO[@]}" -p 0 -n 32 -d "$DEPTHS" --kv "$KVS" -r 2 -o md \
    >"$OUT/decode_minb3.md" 2>"$OUT/decode_minb3.err"
  echo "bench (minb 3) exit $?" >>"$OUT/summary.md"
  cat "$OUT/decode_minb3.md" | tee -a "$OUT/summary.md"
fi

if has decmma; then
  log "decode bench with --cuda-opt no-dec-mma (per-token codes on decode.cu's CUDA cores: before decode_mma.cu)"
  timeout 240 $T bench -m $M --device cuda --cuda-opt no-dec-mma "${CO[@]}" -p 0 -n 32 -d "${MMA_DEPTHS:-32768,131072}" --kv "${MMA_KVS:-k4v4,k2v2}" -r 2 -o md \
    >"$OUT/decode_nomma.md" 2>"$OUT/decode_nomma.err"
  echo "bench (no-dec-mma) exit $?" >>"$OUT/summary.md"
  cat "$OUT/decode_nomma.md" | tee -a "$OUT/summary.md"
fi

if has olddec; then
  log "decode bench with --cuda-opt no-decode (general attention kernel: before)"
  timeout 240 $T bench -m $M --device cuda --cuda-opt no-decode "${CO[@]}" -p 0 -n 32 -d "$DEPTHS" --kv "$KVS" -r 2 -o md \
    >"$OUT/decode_old.md" 2>"$OUT/decode_old.err"
  echo "bench (old decode) exit $?" >>"$OUT/summary.md"
  cat "$OUT/decode_old.md" | tee -a "$OUT/summary.md"
fi

if has prefill; then
  log "prefill attention alone: tensor cores vs the general kernel (bench_cuda_attn)"
  timeout 120 $B/bench_cuda_attn --history 32768 --m 512,4096 2>&1 | tee "$OUT/bench_cuda_attn.txt" | tail -8 | tee -a "$OUT/summary.md"
  log "prefill bench (pp4096 at depth 0, by chunk size)"
  for C in ${CHUNKS:-512 2048 4096}; do
    echo "chunk $C:" | tee -a "$OUT/summary.md" "$OUT/prefill.md"
    timeout 75 $T bench -m $M --device cuda "${CO[@]}" -p 4096 -n 0 --chunk $C -r 2 -o md >"$OUT/prefill_tmp.md" 2>>"$OUT/prefill.err"
    cat "$OUT/prefill_tmp.md" >>"$OUT/prefill.md"
    tail -1 "$OUT/prefill_tmp.md" | tee -a "$OUT/summary.md"
    rm -f "$OUT/prefill_tmp.md"
  done
  echo "pp512 after a 32k-token history (chunk 512):" | tee -a "$OUT/summary.md" "$OUT/prefill.md"
  timeout 90 $T bench -m $M --device cuda "${CO[@]}" -p 512 -n 0 -d 32768 --kv f16,k4v4,k2v2:kivi --chunk 512 -r 2 -o md \
    >"$OUT/prefill_tmp.md" 2>>"$OUT/prefill.err"
  cat "$OUT/prefill_tmp.md" >>"$OUT/prefill.md"
  tail -3 "$OUT/prefill_tmp.md" | tee -a "$OUT/summary.md"
  rm -f "$OUT/prefill_tmp.md"
  tail -5 "$OUT/prefill.err" >>"$OUT/summary.md"
  echo "pp512 after a 32k-token history, CUDA-core attention (--cuda-opt no-tc):" | tee -a "$OUT/summary.md" "$OUT/prefill.md"
  timeout 90 $T bench -m $M --device cuda --cuda-opt no-tc "${CO[@]}" -p 512 -n 0 -d 32768 --kv f16 --chunk 512 -r 2 -o md \
    >"$OUT/prefill_tmp.md" 2>>"$OUT/prefill.err"
  cat "$OUT/prefill_tmp.md" >>"$OUT/prefill.md"
  tail -1 "$OUT/prefill_tmp.md" | tee -a "$OUT/summary.md"
  rm -f "$OUT/prefill_tmp.md"
fi

if has long; then
  # the whole 131072-token prompt through the model, f16 KV, one run per chunk size: time and
  # peak GPU memory (the bench prints the memory plan and use after the run)
  log "prefill of 131072 tokens per chunk size"
  for C in ${LONG_CHUNKS:-1024 4096}; do
    timeout 200 $T bench -m $M --device cuda "${CO[@]}" -p 131072 -n 0 --kv f16 --chunk $C -r 1 -o md >"$OUT/long_$C.md" 2>"$OUT/long_$C.err"
    echo "chunk $C exit $?" | tee -a "$OUT/summary.md"
    tail -1 "$OUT/long_$C.md" | tee -a "$OUT/summary.md"
    grep -iE "gpu memory|peak" "$OUT/long_$C.err" | head -4 | tee -a "$OUT/summary.md"
  done
fi

if has safe && [ -z "${TL_CUDA_SAFE:-}" ]; then
  log "decode with --cuda-opt safe (the reference path: general kernel, plain loops, for comparison)"
  timeout 90 $T bench -m $M --device cuda --cuda-opt safe "${CO[@]}" -p 0 -n 32 -d 32768,131072 --kv f16,k4v4 -r 2 -o md \
    >"$OUT/decode_safe.md" 2>/dev/null
  cat "$OUT/decode_safe.md" | tee -a "$OUT/summary.md"
fi
if has tailor; then
  # TailorKV (sparse layers offloaded to pinned host memory, 4-bit device key summary) under a
  # 24 GiB device budget at 128k: f16 must be refused by the plan, tailor must fit and run
  log "tailor: --gpu-mem-budget 24GiB at depth 131072, $(basename $TKM)"
  BUD=${BUDGET:-24GiB}
  timeout 60 $T bench -m $TKM --device cuda "${CO[@]}" --gpu-mem-budget $BUD -p 0 -n 32 -d 131072 --kv f16 -r 1 -o md \
    >"$OUT/tailor_f16.md" 2>"$OUT/tailor_f16.err"
  echo "f16 under $BUD: exit $?" | tee -a "$OUT/summary.md"
  grep -E "gpu-mem-budget" "$OUT/tailor_f16.err" | head -3 | tee -a "$OUT/summary.md"
  timeout 300 $T bench -m $TKM --device cuda --cuda-opt verbose "${CO[@]}" --gpu-mem-budget $BUD -p 0 -n 32 -d ${TK_DEPTHS:-131072} \
    --kv "${TK_KVS:-tailor:summary=4,tailor:summary=0}" -r 2 -o md >"$OUT/tailor.md" 2>"$OUT/tailor.err"
  echo "tailor bench exit $?" | tee -a "$OUT/summary.md"
  cat "$OUT/tailor.md" | tee -a "$OUT/summary.md"
  grep -E "memory|tailorKV|error|tailor bench|uploaded" "$OUT/tailor.err" | sort -u | head -20 | tee -a "$OUT/summary.md"
  ps -o rss= -p $$ >/dev/null 2>&1
fi
if has dectc; then
  log "f16 decode attention: tensor cores (prefill_tc.cu, m = 1) vs decode.cu, one layer"
  for H in 32768 65536 131072; do
    timeout 60 $B/bench_cuda_attn --history $H --m 1 --reps 20 2>&1 | tail -1 | tee -a "$OUT/summary.md"
  done
  for tc in always never; do
    log "decode bench, f16, --cuda-opt dec-tc=$tc (always: tensor cores at every depth, never: decode.cu)"
    timeout 150 $T bench -m $M --device cuda --cuda-opt dec-tc=$tc "${CO[@]}" -p 0 -n 32 -d ${TC_DEPTHS:-32768,65536,131072} --kv f16 -r 2 \
      -o md >"$OUT/decode_dectc.md" 2>"$OUT/decode_dectc.err"
    tail -n +3 "$OUT/decode_dectc.md" | tee -a "$OUT/summary.md"
  done
fi
if has real; then
  # many small files: the device tool returns at most 8, so they go into $OUT/real.tgz
  RM=${REAL_MODEL:-$(bash scripts/device-stage.sh path qwen2.5-coder-1.5b-instruct-q4_k_m.gguf 2>/dev/null || true)}
  DATA=${DATA:-$PWD/carry/data} R=$SHM/real
  mkdir -p $R
  if [ -z "$RM" ] || [ ! -f "$RM" ] || [ ! -d "$DATA/pg_essays" ]; then
    echo "real: no staged model or no carry/data (REAL_MODEL '$RM')" | tee -a "$OUT/summary.md"
  else
    cat "$DATA"/pg_essays/*.txt >$SHM/essays.txt
    for C in ${REAL_CTX:-2048 8192}; do
      if [ ! -f $R/gpu_vs_cpu_$C.txt ]; then
        log "real: GPU logits vs CPU, $(basename "$RM"), -c $C"
        timeout 300 $T perplexity -m "$RM" -f $SHM/essays.txt -c $C --chunks 2 --kl-base-write $SHM/cpu-$C.kld \
          --out $R/check.jsonl >$R/cpu_$C.txt 2>$R/cpu_$C.err
        timeout 120 $T perplexity -m "$RM" --device cuda "${CO[@]}" -f $SHM/essays.txt -c $C --chunks 2 --kl-base $SHM/cpu-$C.kld \
          --out $R/check.jsonl >$R/gpu_vs_cpu_$C.txt 2>$R/gpu_$C.err
      fi
      grep -E "Final|PPL ratio|mean KLD|max KLD|same top-1|verdict" $R/gpu_vs_cpu_$C.txt | tee -a "$OUT/summary.md"
    done
    log "real: scripts/real-model-eval.sh (steps ${REAL_STEPS:-calib niah ruler ppl})"
    STEPS="${REAL_STEPS:-calib niah ruler ppl}" timeout ${REAL_TIMEOUT:-540} bash scripts/real-model-eval.sh -m "$RM" \
      -o $R/eval --device cuda --haystack "$DATA/pg_essays" --code "$DATA/glibc-2.36-malloc.c" --tailor $T 2>&1 | tail -30
    [ -f $R/eval/results.jsonl ] && python3 scripts/real-model-report.py $R/eval/results.jsonl >"$OUT/real_tables.md" 2>&1
  fi
  tar czf "$OUT/real.tgz" -C $SHM real 2>/dev/null
fi
if has pareto; then
  # the KV Pareto sweep on the GPU over the staged real model: weights x KV at PARETO_CTX,
  # projected to Llama-3.1-8B at 128k; --resume continues a sweep a previous call left
  RM=${REAL_MODEL:-$(bash scripts/device-stage.sh path qwen2.5-coder-1.5b-instruct-q4_k_m.gguf 2>/dev/null || true)}
  DATA=${DATA:-$PWD/carry/data} P=$SHM/real/pareto
  mkdir -p $SHM/real
  if [ -z "$RM" ] || [ ! -f "$RM" ] || [ ! -d "$DATA/pg_essays" ]; then
    echo "pareto: no staged model or no carry/data (REAL_MODEL '$RM')" | tee -a "$OUT/summary.md"
  else
    cat "$DATA"/pg_essays/*.txt >$SHM/essays.txt
    log "pareto --device cuda: weights ${PARETO_WEIGHTS:=base,f16,q8_0,q4_0,w4g128,awq} x kv ${PARETO_KVS:=f16,k8v8,k4v4,k4v2,k2v2:kivi}"
    timeout ${PARETO_TIMEOUT:-540} $T pareto --device cuda "${CO[@]}" -m "$RM" -o $P -c ${PARETO_CTX:-32768} --target-ctx 131072 \
      --project-to llama-3.1-8b --weights $PARETO_WEIGHTS --calib $SHM/essays.txt --kv-axis $PARETO_KVS \
      --tasks ${PARETO_TASKS:-ppl,niah} --windows 1 --niah-samples ${PARETO_NIAH:-2} -f $SHM/essays.txt \
      --haystack "$DATA/pg_essays" --speed --resume >"$OUT/pareto.log" 2>&1
    echo "pareto exit $?" | tee -a "$OUT/summary.md"
    tail -5 "$OUT/pareto.log" | tee -a "$OUT/summary.md"
    for f in report.md frontier.csv frontier.svg results.jsonl; do [ -f $P/$f ] && cp $P/$f "$OUT/pareto_$f"; done
  fi
fi
if has qweights; then
  # 8B models in /dev/shm (q4_K_M about 4.9 GB, q8_0 8.5, w4g128 4.3): the K-quants' reference
  # quantizers take a minute or so on 16 cores
  QDEPTHS=${QDEPTHS:-0,32768,131072}
  for QT in ${QTYPES:-q4_K_M q8_0 w4g128}; do
    QM=$SHM/llama8b-$QT.gguf
    if [ ! -f $QM ]; then
      log "synth llama-3.1-8b $QT"
      $T synth --shape llama-3.1-8b --type $QT -o $QM -q 2>&1 | tail -1 | tee -a "$OUT/summary.md"
    fi
    log "qweights $QT: decode (depths $QDEPTHS, kv f16,k4v4)"
    timeout 300 $T bench -m $QM --device cuda --cuda-opt verbose "${CO[@]}" -p 0 -n 32 -d "$QDEPTHS" --kv f16,k4v4 -r 2 -o md \
      >"$OUT/qw_$QT.md" 2>"$OUT/qw_$QT.err"
    echo "bench $QT exit $?" | tee -a "$OUT/summary.md"
    cat "$OUT/qw_$QT.md" | tee -a "$OUT/summary.md"
    grep -E "gpu memory|uploaded|widened|error|tailor bench" "$OUT/qw_$QT.err" | sort -u | head -8 | tee -a "$OUT/summary.md"
    log "qweights $QT: prefill pp4096 (chunk 4096)"
    timeout 120 $T bench -m $QM --device cuda "${CO[@]}" -p 4096 -n 0 --chunk 4096 -r 2 -o md >"$OUT/qw_${QT}_pp.md" 2>>"$OUT/qw_$QT.err"
    echo "prefill $QT exit $?" | tee -a "$OUT/summary.md"
    tail -1 "$OUT/qw_${QT}_pp.md" | tee -a "$OUT/summary.md"
  done
  QM=$SHM/llama8b-q4_K_M.gguf
  if [ -f $QM ]; then
    log "qweights q4_K_M widened to f16 at upload (--cuda-opt widen: before), depths 0,131072, kv f16"
    timeout 200 $T bench -m $QM --device cuda --cuda-opt widen "${CO[@]}" -p 0 -n 32 -d 0,131072 --kv f16 -r 2 -o md \
      >"$OUT/qw_widen.md" 2>"$OUT/qw_widen.err"
    echo "bench (widened) exit $?" | tee -a "$OUT/summary.md"
    cat "$OUT/qw_widen.md" | tee -a "$OUT/summary.md"
    grep -E "gpu memory|error" "$OUT/qw_widen.err" | sort -u | head -4 | tee -a "$OUT/summary.md"
  fi
fi
if has serve; then
  SM=${SERVE_MODEL:-$SHM/serve-smol.gguf}
  if [ ! -f $SM ]; then
    log "synth smollm2-135m f16 with the fixtures' byte vocabulary (serve)"
    $T synth --shape smollm2-135m --type f16 --vocab tests/fixtures/synth_llama_tied.gguf -o $SM -q 2>&1 | tail -1
  fi
  # the port a server started on ($1: its log), once it listens; fails when it exits first
  port_of() {
    for _ in $(seq 1 1200); do
      p=$(grep -o 'listening on http://[^ ]*' "$1" | grep -o '[0-9]*$')
      if [ -n "$p" ]; then echo "$p"; return 0; fi
      kill -0 "$2" 2>/dev/null || return 1
      sleep 0.1
    done
    return 1
  }
  for KV in ${SERVE_KVS:-f16 k4v4 tailor:summary=4,bits=2}; do
    tag=$(echo "$KV" | tr -c 'A-Za-z0-9\n' _)
    SC=${SERVE_CTX:-1024}
    log "serve --device cuda --kv $KV (-c $SC --parallel 64)"
    $T serve -m $SM --device cuda "${CO[@]}" --port 0 -c $SC --parallel 64 --queue 128 --kv "$KV" >"$OUT/serve_$tag.log" 2>&1 &
    SP=$!
    if PORT=$(port_of "$OUT/serve_$tag.log" $SP); then
      grep -E "slot\(s\)" "$OUT/serve_$tag.log" | tee -a "$OUT/summary.md"
      [ -n "${SERVE_NOCHECK:-}" ] || timeout 300 python3 scripts/serve-check.py --no-cache-prompt --port $PORT --clients 16 --requests 48 --max-tokens 64 --id-lo 3 --id-hi 256 \
        2>&1 | tee "$OUT/serve_check_$tag.txt" | tail -8 | tee -a "$OUT/summary.md"
      echo "serve-check $KV exit ${PIPESTATUS[0]}" | tee -a "$OUT/summary.md"
      timeout 400 python3 scripts/serve-bench.py --port $PORT --pid $SP --clients ${SERVE_CLIENTS:-1,16,64} --requests ${SERVE_REQUESTS:-2} \
        --prompt-tokens ${SERVE_PROMPT:-256} ${SERVE_FOLLOWUP:+--followup $SERVE_FOLLOWUP} --max-tokens 128 --repeat 1 --id-lo 3 --id-hi 256 --label "cuda $KV" 2>&1 | tee -a "$OUT/summary.md"
    else
      echo "serve $KV did not start:" | tee -a "$OUT/summary.md"
      tail -5 "$OUT/serve_$tag.log" | tee -a "$OUT/summary.md"
    fi
    kill -TERM $SP 2>/dev/null
    wait $SP
    echo "serve $KV exit $?" | tee -a "$OUT/summary.md"
  done
  log "serve: 64 slots of 131072 tokens under --gpu-mem-budget 8GiB must be refused at start"
  timeout 120 $T serve -m $SM --device cuda "${CO[@]}" --port 0 -c 131072 --parallel 64 --gpu-mem-budget 8GiB >"$OUT/serve_budget.log" 2>&1
  echo "exit $? (want 1)" | tee -a "$OUT/summary.md"
  tail -2 "$OUT/serve_budget.log" | tee -a "$OUT/summary.md"
fi
if has capacity; then
  # how many concurrent sequences of CAP_CTX tokens a --gpu-mem-budget holds, by starting the
  # server: each KV@N of CAP_KVS starts with --parallel N (every slot's KV allocated at start,
  # the plan checked against the budget), then N clients decode at once (short prompts: the
  # slots' memory is allocated whole either way); --parallel N+1 must be refused by the plan
  CM=${CAP_MODEL:-$SHM/llama8b-q4_K_M.gguf}
  CB=${CAP_BUDGET:-24GiB}
  CC=${CAP_CTX:-32768}
  cap_start() { # KV N TAG: start, wait until it listens or exits; sets SP and PORT
    $T serve -m $CM --device cuda "${CO[@]}" --port 0 -c $CC --parallel $2 --gpu-mem-budget $CB --kv "$1" >"$OUT/cap_$3.log" 2>&1 &
    SP=$!
    PORT=""
    for _ in $(seq 1 1800); do
      PORT=$(grep -o 'listening on http://[^ ]*' "$OUT/cap_$3.log" | grep -o '[0-9]*$')
      [ -n "$PORT" ] && return 0
      kill -0 $SP 2>/dev/null || return 1
      sleep 0.1
    done
    return 1
  }
  for KN in ${CAP_KVS:-f16@4 k4v4@14 k2v2:kivi@24 tailor:summary=4,bits=2@29}; do
    KV=${KN%@*}; N=${KN##*@}
    tag=$(echo "$KV" | tr -c 'A-Za-z0-9\n' _)
    log "capacity: $(basename $CM) --kv $KV: $N x $CC tokens under --gpu-mem-budget $CB"
    if cap_start "$KV" $N ${tag}_$N; then
      grep -E "slot\(s\)|gpu memory|plan" "$OUT/cap_${tag}_$N.log" | head -4 | tee -a "$OUT/summary.md"
      timeout 300 python3 scripts/serve-bench.py --port $PORT --pid $SP --clients $N --requests 1 --prompt-tokens 64 \
        --max-tokens 32 --repeat 1 --id-lo 3 --id-hi 256 --label "cap $KV x$N" 2>&1 | tail -3 | tee -a "$OUT/summary.md"
    else
      echo "capacity $KV x$N: did not start" | tee -a "$OUT/summary.md"
      tail -4 "$OUT/cap_${tag}_$N.log" | tee -a "$OUT/summary.md"
    fi
    kill -TERM $SP 2>/dev/null; wait $SP 2>/dev/null
    N1=$((N + 1))
    if cap_start "$KV" $N1 ${tag}_$N1; then
      echo "capacity $KV x$N1: started (not refused)" | tee -a "$OUT/summary.md"
    else
      echo "capacity $KV x$N1: refused:" | tee -a "$OUT/summary.md"
      grep -E "does not fit|error" "$OUT/cap_${tag}_$N1.log" | tail -2 | cut -c1-400 | tee -a "$OUT/summary.md"
    fi
    kill -TERM $SP 2>/dev/null; wait $SP 2>/dev/null
  done
fi
if has ncu; then
  # every kernel of a few decode steps timed alone by Nsight Compute (kernels serialized, no
  # PDL overlap): what each part costs, how the sum compares with the step's wall time (the
  # gaps between kernels), and the memory throughput of the matvec kernels; NCU_MODEL (default
  # the q4_K_M synth that qweights made)
  NM=${NCU_MODEL:-$SHM/llama8b-q4_K_M.gguf}
  if ! command -v ncu >/dev/null; then echo "ncu: not installed" | tee -a "$OUT/summary.md"
  elif [ ! -f "$NM" ]; then echo "ncu: no $NM (run qweights first)" | tee -a "$OUT/summary.md"
  else
    log "ncu: kernel times of decode steps ($(basename $NM), depth 0)"
    # -p 0 -n 3: a few one-token passes (the bench's warm-up among them); ncu-summary.py averages
    # over all of them (passes = launches of the embedding kernel)
    timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \
      --csv --print-units base $T bench -m $NM --device cuda "${CO[@]}" -p 0 -n 3 -d 0 --kv f16 -r 1 -o md >"$OUT/ncu.csv" 2>"$OUT/ncu.err"
    echo "ncu exit $?" | tee -a "$OUT/summary.md"
    python3 scripts/ncu-summary.py "$OUT/ncu.csv" 2>&1 | tee -a "$OUT/summary.md"
    timeout 200 ncu --clock-control none --kernel-name regex:qmatvec_k --launch-skip 40 --launch-count 4 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
      $T bench -m $NM --device cuda "${CO[@]}" -p 0 -n 2 -d 0 --kv f16 -r 1 -o md >"$OUT/ncu_qmatvec.txt" 2>&1
    echo "ncu qmatvec exit $?" | tee -a "$OUT/summary.md"
    grep -E "qmatvec_k|Memory Throughput|DRAM Throughput|Duration|Achieved Occupancy|Registers Per|Stall|Warp Cycles Per Issued" "$OUT/ncu_qmatvec.txt" | head -60 | tee -a "$OUT/summary.md"
  fi
fi
log "done"
