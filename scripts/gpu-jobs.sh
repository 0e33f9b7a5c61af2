#!/usr/bin/env bash
# Long GPU jobs that outlive one device call (docs/real-models.md, "Background jobs").
#
# A device call returns within 10 minutes and the machine is given back after 30 s without a
# call; a process that starts its own session (setsid) survives between calls until then. So a
# staged model's evaluations run as background jobs, and the calls that follow poll them back to
# back (each poll waits up to SECONDS, so no gap reaches 30 s) and finally collect the results.
#
#   scripts/gpu-jobs.sh keep PATH...        copy ignored carried paths (.gpudeps, carry/data) to
#                                           $TL_KEEP (default /tmp/tlkeep): a later call that
#                                           does not carry them gets them back with `restore`
#   scripts/gpu-jobs.sh restore             put the kept paths back into the repository copy
#   scripts/gpu-jobs.sh start NAME CMD...   run CMD (through bash -c) in its own session, output
#                                           to $TL_JOBS/NAME.log (default /dev/shm/jobs), exit
#                                           status to NAME.rc when it ends
#   scripts/gpu-jobs.sh poll SECONDS        wait until every job has ended or SECONDS passed;
#                                           print each job's state and the last lines of its log
#   scripts/gpu-jobs.sh stop                end every job still running (its process group)
#   scripts/gpu-jobs.sh collect DIR...      tar the logs and the text results under DIR... into
#                                           $OUT/jobs.tgz, leaving out models, KL bases and copies
#                                           of the texts (the device tool returns small files only)
set -uo pipefail
JOBS="${TL_JOBS:-/dev/shm/jobs}"
KEEP="${TL_KEEP:-/tmp/tlkeep}"
die() { echo "gpu-jobs: error: $*" >&2; exit 1; }

running() { # NAME: its process group still has members
    local pg; pg="$(cat "$JOBS/$1.pgid" 2>/dev/null)" || return 1
    [ ! -f "$JOBS/$1.rc" ] && kill -0 -- "-$pg" 2>/dev/null
}

case "${1:-}" in
keep)
    shift
    mkdir -p "$KEEP"
    for p in "$@"; do
        [ -e "$p" ] || die "$p: not here"
        mkdir -p "$KEEP/$(dirname "$p")" && rm -rf "${KEEP:?}/$p" && cp -a "$p" "$KEEP/$p" || die "cannot keep $p"
        echo "$p" >> "$KEEP/.list"
    done
    sort -u -o "$KEEP/.list" "$KEEP/.list" ;;
restore)
    [ -f "$KEEP/.list" ] || die "nothing kept in $KEEP"
    while read -r p; do
        [ -e "$p" ] || { mkdir -p "$(dirname "$p")" && cp -a "$KEEP/$p" "$p"; } || die "cannot restore $p"
    done < "$KEEP/.list" ;;
start)
    [ $# -ge 3 ] || die "usage: start NAME CMD..."
    name="$2"; shift 2
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "job name '$name': letters, digits, '.', '_', '-'"
    mkdir -p "$JOBS"
    running "$name" && die "job $name is still running"
    rm -f "$JOBS/$name.rc"
    # a later call re-sends the repository copy without the ignored .gpudeps (unless it carries
    # it again), and a binary linked against it would then fail to start in the middle of the
    # job: the job finds the libraries in the kept copy instead
    [ -d "$KEEP/.gpudeps/lib" ] && export LD_LIBRARY_PATH="$KEEP/.gpudeps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # the job leads its own session: it writes its pgid, runs CMD, then writes CMD's status
    setsid bash -c 'echo $$ > "$0.pgid"; bash -c "$1"; echo $? > "$0.rc"' "$JOBS/$name" "$*" \
        > "$JOBS/$name.log" 2>&1 < /dev/null &
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -f "$JOBS/$name.pgid" ] && break; sleep 0.1; done
    echo "gpu-jobs: started $name (pgid $(cat "$JOBS/$name.pgid" 2>/dev/null || echo ?))" ;;
poll)
    [[ "${2:-}" =~ ^[0-9]+$ ]] || die "usage: poll SECONDS"
    end=$(( $(date +%s) + $2 ))
    while [ "$(date +%s)" -lt "$end" ]; do
        busy=0
        for f in "$JOBS"/*.pgid; do [ -e "$f" ] && running "$(basename "$f" .pgid)" && busy=1; done
        [ $busy = 0 ] && break
        sleep 5
    done
    for f in "$JOBS"/*.pgid; do
        [ -e "$f" ] || continue
        n="$(basename "$f" .pgid)"
        if running "$n"; then s=running; elif [ -f "$JOBS/$n.rc" ]; then s="exit $(cat "$JOBS/$n.rc")"; else s=killed; fi
        echo "== $n: $s"
        tail -n "${TAIL:-6}" "$JOBS/$n.log" | cut -c1-240
    done ;;
stop)
    for f in "$JOBS"/*.pgid; do
        [ -e "$f" ] || continue
        n="$(basename "$f" .pgid)"
        running "$n" && kill -- "-$(cat "$f")" 2>/dev/null && echo "gpu-jobs: stopped $n"
    done ;;
collect)
    shift
    [ -n "${OUT:-}" ] || die "OUT is not set (the device tool sets it)"
    mkdir -p "$OUT"
    tar czf "$OUT/jobs.tgz" --exclude='*.gguf' --exclude='*.kld' --exclude='*.partial' --exclude='essays*.txt' \
        "$JOBS" "$@" 2>/dev/null
    ls -l "$OUT/jobs.tgz" ;;
*)
    sed -n '2,25p' "$0"; exit 2 ;;
esac
