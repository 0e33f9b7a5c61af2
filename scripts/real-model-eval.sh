#!/usr/bin/env bash
# real-model-eval.sh: the real-model accuracy tables (docs/real-models.md) in one command.
#
#   scripts/real-model-eval.sh -m MODEL -o OUTDIR [--device cpu|cuda] [--haystack DIR] [--code FILE]
#                              [--tailor BIN]
#
# Steps (STEPS, default "calib niah ruler ppl"), every result line appended to OUTDIR/results.jsonl
# (the tools' --out), tables and logs beside it:
#   calib  TailorKV calibration of the model on three texts (essays, a code file, the essays from
#          their middle), each -c 4096, for the stability table; the first becomes the plan the
#          TailorKV configurations use (OUTDIR/plan.json); and auto:4's per-layer key layouts
#          (OUTDIR/auto4.json), pinned so every session uses the same measured plan
#   niah   needle grid: LENGTHS x DEPTHS x NEEDLES per cell, for every KV configuration in KVS
#   ruler  the six RULER tasks at RULER_LENGTHS, RULER_N samples per task
#   ppl    perplexity and KLD against f16 at PPL_CTX windows over the essays and the code file
# Environment: KVS (comma list; "TK" expands to the eight TailorKV configurations: bits 1/2 x
# budget 192/1024 x summary 0/4, or to those TK_SET names as bits/budget/summary, e.g.
# TK_SET="2/1024/4 1/192/0"), LENGTHS (1k,2k,4k,8k,16k,32k), DEPTHS (0,25,50,75,100),
# NEEDLES (10), RULER_LENGTHS (4k,16k,32k), RULER_N (20), PPL_CTX (8192 16384 32768),
# PPL_CHUNKS (windows per context: 4), THREADS (tools' -t), STEPS.
# Every figure is printed with its interval by the tools (Wilson for pass rates, a paired block
# bootstrap for PPL ratio and KLD). Progress goes to OUTDIR/*.log; the script stops at the
# first failing tool, naming it.
set -euo pipefail
die() { echo "real-model-eval: error: $*" >&2; exit 1; }
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.md" >&2; }

MODEL="" OUT="" DEVICE=cpu HAY="" CODE="" BIN=""
while [ $# -gt 0 ]; do
    case "$1" in
        -m) MODEL="$2"; shift 2 ;;
        -o) OUT="$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        --haystack) HAY="$2"; shift 2 ;;
        --code) CODE="$2"; shift 2 ;;
        --tailor) BIN="$2"; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -n "$MODEL" ] && [ -f "$MODEL" ] || die "-m MODEL: a GGUF file is needed (got '$MODEL')"
[ -n "$OUT" ] || die "-o OUTDIR is needed"
BIN="${BIN:-$ROOT/build/tailor}"
[ -x "$BIN" ] || die "$BIN: not an executable (build first, or --tailor BIN)"
HAY="${HAY:-$ROOT/../shared/data/pg_essays}"
[ -d "$HAY" ] || die "--haystack $HAY: not a folder of essays"
[ -z "$CODE" ] || [ -f "$CODE" ] || die "--code $CODE: no such file"
mkdir -p "$OUT"
RES="$OUT/results.jsonl"
STEPS="${STEPS:-calib niah ruler ppl}"
has() { [[ " $STEPS " == *" $1 "* ]]; }
T=(--device "$DEVICE")
[ -z "${THREADS:-}" ] || T+=(-t "$THREADS")

ESSAYS="$OUT/essays.txt"
cat "$HAY"/*.txt > "$ESSAYS"
# the essays from their middle: a third calibration text with the same style, other content
MID="$OUT/essays-mid.txt"
tail -c +$(( $(wc -c < "$ESSAYS") / 2 )) "$ESSAYS" > "$MID"

run() { # NAME CMD...: run a tool, its stderr to OUTDIR/NAME.log, stop on failure
    local name="$1"; shift
    local t0; t0=$(date +%s)
    "$@" 2>"$OUT/$name.log" || { tail -5 "$OUT/$name.log" >&2; die "$name failed: $*"; }
    echo "   $name: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.md" >&2
}

PLAN="$OUT/plan.json"
if has calib; then
    log "TailorKV calibration on three texts (-c 4096), and auto:4's key layouts"
    run calib-essays "$BIN" calibrate -m "$MODEL" -f "$ESSAYS" -c 4096 -o "$PLAN" "${T[@]:2}" > "$OUT/calib-essays.txt"
    run calib-mid "$BIN" calibrate -m "$MODEL" -f "$MID" -c 4096 -o "$OUT/plan-mid.json" "${T[@]:2}" > "$OUT/calib-mid.txt"
    if [ -n "$CODE" ]; then
        run calib-code "$BIN" calibrate -m "$MODEL" -f "$CODE" -c 4096 -o "$OUT/plan-code.json" "${T[@]:2}" \
            > "$OUT/calib-code.txt"
    fi
    run calib-auto4 "$BIN" calibrate -m "$MODEL" --auto 4 $([ "$DEVICE" = cuda ] && echo --gpu) -o "$OUT/auto4.json" \
        "${T[@]:2}" > "$OUT/calib-auto4.txt"
    cat "$OUT"/calib-*.txt >> "$OUT/summary.md"
fi

# KV configurations: auto:4 is the pinned plan of the calib step (same measurement, once)
KVS="${KVS:-f16,k8v8,k4v4,auto:4,k4v2,k2v2:kivi,TK}"
KV_LIST=()
IFS=',' read -r -a items <<< "$KVS"
for kv in "${items[@]}"; do
    if [ "$kv" = TK ]; then
        [ -f "$PLAN" ] || die "$PLAN missing: the TailorKV configurations need the calib step"
        for tk in ${TK_SET:-1/192/0 1/192/4 1/1024/0 1/1024/4 2/192/0 2/192/4 2/1024/0 2/1024/4}; do
            IFS=/ read -r b bud s <<< "$tk"
            KV_LIST+=("tailor:plan=$PLAN,bits=$b,budget=$bud,summary=$s")
        done
    elif [ "$kv" = auto:4 ] && [ -f "$OUT/auto4.json" ]; then
        KV_LIST+=("$OUT/auto4.json")
    else
        KV_LIST+=("$kv")
    fi
done
slug() { echo "$1" | sed -e "s|$OUT/||g" -e 's|[^A-Za-z0-9._=-]|_|g'; }

if has niah; then
    for kv in "${KV_LIST[@]}"; do
        log "niah --kv $kv"
        run "niah-$(slug "$kv")" "$BIN" niah -m "$MODEL" "${T[@]}" --kv "$kv" --haystack "$HAY" \
            --lengths "${LENGTHS:-1k,2k,4k,8k,16k,32k}" --depths "${DEPTHS:-0,25,50,75,100}" -n "${NEEDLES:-10}" \
            --quiet --out "$RES" --csv "$OUT/niah-$(slug "$kv").csv" > "$OUT/niah-$(slug "$kv").txt"
        tail -3 "$OUT/niah-$(slug "$kv").txt" >> "$OUT/summary.md"
    done
fi

if has ruler; then
    for kv in "${KV_LIST[@]}"; do
        log "ruler --kv $kv"
        run "ruler-$(slug "$kv")" "$BIN" ruler -m "$MODEL" "${T[@]}" --kv "$kv" --haystack "$HAY" \
            --lengths "${RULER_LENGTHS:-4k,16k,32k}" -n "${RULER_N:-20}" --quiet --out "$RES" \
            > "$OUT/ruler-$(slug "$kv").txt"
        tail -3 "$OUT/ruler-$(slug "$kv").txt" >> "$OUT/summary.md"
    done
fi

if has ppl; then
    TEXTS=("essays:$ESSAYS")
    [ -z "$CODE" ] || TEXTS+=("code:$CODE")
    for tx in "${TEXTS[@]}"; do
        name="${tx%%:*}" file="${tx#*:}"
        for C in ${PPL_CTX:-8192 16384 32768}; do
            base="$OUT/base-$name-$C.kld"
            log "perplexity $name -c $C (f16 baseline, then each KV against it)"
            run "ppl-$name-$C-f16" "$BIN" perplexity -m "$MODEL" "${T[@]}" -f "$file" -c "$C" --chunks "${PPL_CHUNKS:-4}" \
                --kl-base-write "$base" --out "$RES" > "$OUT/ppl-$name-$C-f16.txt"
            for kv in "${KV_LIST[@]}"; do
                [ "$kv" = f16 ] && continue
                run "ppl-$name-$C-$(slug "$kv")" "$BIN" perplexity -m "$MODEL" "${T[@]}" -f "$file" -c "$C" \
                    --chunks "${PPL_CHUNKS:-4}" --kv "$kv" --kl-base "$base" --out "$RES" \
                    > "$OUT/ppl-$name-$C-$(slug "$kv").txt"
                tail -4 "$OUT/ppl-$name-$C-$(slug "$kv").txt" >> "$OUT/summary.md"
            done
        done
    done
fi
log "done: $RES"
