#!/usr/bin/env bash
# Stage a file larger than one device call can carry (a 1.1 GB model, say) onto the GPU machine.
#
# The device tool copies the working tree plus at most 8 carried, git-ignored paths, 64 MiB in
# all, per command. So the file travels in numbered chunks, one per command, issued back to back
# while the machine stays warm; each command appends its chunk to a file outside the repository
# copy, and the last checks the sha256 (docs/real-models.md, "Staging"). Subcommands:
#
#   here:   scripts/device-stage.sh split FILE [CHUNK_MIB]
#             cuts FILE into carry/stage/NAME.NN (git-ignored), sized so the working tree plus
#             one chunk stays under 64 MiB (CHUNK_MIB overrides), writes carry/stage/NAME.sha256
#             and prints the device commands, one per chunk, then the check.
#   device: scripts/device-stage.sh append NAME CHUNK
#             appends CHUNK to $TL_STAGE/NAME.partial (default TL_STAGE=/tmp/tailor-stage) when it
#             is the next chunk in order; a chunk already appended is skipped (a retried call is
#             harmless), one out of order is refused.
#   device: scripts/device-stage.sh check NAME SHA256
#             hashes the partial file; on a match renames it to $TL_STAGE/NAME and prints that path.
#   either: scripts/device-stage.sh path NAME    prints $TL_STAGE/NAME if it is complete, else fails
set -euo pipefail

die() { echo "device-stage: error: $*" >&2; exit 1; }
log() { echo "device-stage: $*" >&2; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGE="${TL_STAGE:-/tmp/tailor-stage}"
LIMIT_MIB=64

valid_name() { [[ "$1" =~ ^[A-Za-z0-9._-]+$ ]] || die "name '$1': use letters, digits, '.', '_' and '-' only"; }

cmd_split() {
    local file="$1" chunk_mib="${2:-}"
    [ -f "$file" ] && [ -r "$file" ] || die "$file: not a readable regular file"
    local name; name="$(basename "$file")"; valid_name "$name"
    local out="$ROOT/carry/stage"
    git -C "$ROOT" check-ignore -q carry/stage/x || die "carry/ is not git-ignored: chunks would travel as untracked files"
    if [ -z "$chunk_mib" ]; then
        # what travels besides the chunk: tracked files and untracked files that are not ignored
        local tree
        tree="$(cd "$ROOT" && git ls-files -z -c -o --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null \
                | awk '{ s += $1 } END { print s + 0 }')"
        chunk_mib=$(( (LIMIT_MIB * 1048576 - tree) / 1048576 - 2 ))   # 2 MiB of margin
        log "working tree $((tree / 1048576)) MiB: chunks of $chunk_mib MiB"
    fi
    [[ "$chunk_mib" =~ ^[0-9]+$ ]] && [ "$chunk_mib" -ge 1 ] || die "chunk size '$chunk_mib' MiB: need a positive integer"
    mkdir -p "$out"
    rm -f "$out/$name".[0-9][0-9] "$out/$name.sha256"
    split -b "${chunk_mib}M" -d -a 2 "$file" "$out/$name."
    local sum; sum="$(sha256sum "$file" | cut -d' ' -f1)"
    echo "$sum  $name" > "$out/$name.sha256"
    local n; n="$(ls "$out/$name".[0-9][0-9] | wc -l)"
    log "$n chunks in carry/stage, sha256 $sum"
    echo "# one device command per chunk, back to back (the machine stays warm 30 s between calls):"
    for c in "$out/$name".[0-9][0-9]; do
        echo "carry=[carry/stage/$(basename "$c")]  command: bash scripts/device-stage.sh append $name carry/stage/$(basename "$c")"
    done
    echo "# then: bash scripts/device-stage.sh check $name $sum"
}

cmd_append() {
    local name="$1" chunk="$2"
    valid_name "$name"
    [ -f "$chunk" ] || die "$chunk: no such chunk (was it named in carry?)"
    local idx="${chunk##*.}"
    [[ "$idx" =~ ^[0-9][0-9]$ ]] || die "$chunk: the chunk's name must end in .NN"
    mkdir -p "$STAGE"
    local part="$STAGE/$name.partial" done="$STAGE/$name.chunks"
    [ -f "$part" ] || { : > "$part"; : > "$done"; }
    if grep -qx "$idx" "$done"; then
        log "chunk $idx already appended: skipped"
    else
        local want; want="$(printf '%02d' "$(wc -l < "$done")")"
        [ "$idx" = "$want" ] || die "chunk $idx out of order: the next is $want"
        local size before; size="$(stat -c %s "$chunk")"; before="$(stat -c %s "$part")"
        if ! cat "$chunk" >> "$part"; then
            truncate -s "$before" "$part"; die "appending chunk $idx failed (disk full?); rolled back"
        fi
        echo "$idx" >> "$done"
        log "chunk $idx appended ($size bytes): $(stat -c %s "$part") bytes in $part"
    fi
}

cmd_check() {
    local name="$1" want="$2"
    valid_name "$name"
    local part="$STAGE/$name.partial"
    [ -f "$part" ] || { [ -f "$STAGE/$name" ] && { echo "$STAGE/$name"; return; }; die "$part: nothing staged"; }
    local got; got="$(sha256sum "$part" | cut -d' ' -f1)"
    [ "$got" = "$want" ] || die "$part: sha256 $got, expected $want ($(wc -l < "$STAGE/$name.chunks") chunks appended)"
    mv -f "$part" "$STAGE/$name"
    rm -f "$STAGE/$name.chunks"
    log "ok: $STAGE/$name"
    echo "$STAGE/$name"
}

cmd_path() {
    valid_name "$1"
    [ -f "$STAGE/$1" ] || die "$STAGE/$1: not staged (or not checked yet)"
    echo "$STAGE/$1"
}

case "${1:-}" in
    split) [ $# -ge 2 ] && [ $# -le 3 ] || die "usage: $0 split FILE [CHUNK_MIB]"; shift; cmd_split "$@" ;;
    append) [ $# -eq 3 ] || die "usage: $0 append NAME CHUNK"; shift; cmd_append "$@" ;;
    check) [ $# -eq 3 ] || die "usage: $0 check NAME SHA256"; shift; cmd_check "$@" ;;
    path) [ $# -eq 2 ] || die "usage: $0 path NAME"; shift; cmd_path "$@" ;;
    -h|--help|"") sed -n '2,22p' "$0" ;;
    *) die "unknown subcommand '$1' (split, append, check, path)" ;;
esac
