#!/usr/bin/env bash
# Idle memory of the daemon, several builds interleaved on one box.
#
#   benches/idle.sh [-r ROUNDS] [-w SECONDS] [-s] LABEL=BINARY [LABEL=BINARY ...]
#
# Each round starts every build once, in turn (alternating, so the load of
# the moment falls on all of them alike): `BINARY run --dev` in a fresh
# working directory and HOME (so a fresh data directory, no gateway
# installed), waits SECONDS (default 12), reads /proc/PID/status and
# /proc/PID/smaps, stops it. Prints one line per start and, at the end, each
# build's range. Besides VmRSS and its anonymous and file parts, `binary` is
# what the executable's own mappings hold (its code, read-only data and the
# relocated data), the least noisy figure for a codegen change. `-s` also
# keeps each start's /proc/PID/smaps_rollup and smaps under $OUT (default
# a temp dir) to see where the memory is.
#
# Example (the aim is VmRSS <= 12 MiB):
#   cargo build --release && cp target/release/hermes-tenantd /tmp/new
#   benches/idle.sh -r 3 base=/tmp/base new=/tmp/new
set -euo pipefail

rounds=3
wait_s=12
keep_smaps=0
while getopts "r:w:s" opt; do
    case $opt in
        r) rounds=$OPTARG ;;
        w) wait_s=$OPTARG ;;
        s) keep_smaps=1 ;;
        *) echo "usage: $0 [-r ROUNDS] [-w SECONDS] [-s] LABEL=BINARY ..." >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-r ROUNDS] [-w SECONDS] [-s] LABEL=BINARY ..." >&2; exit 2; }

out=${OUT:-$(mktemp -d)}
results=$out/results.tsv
: >"$results"
pid=""
work=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    if [ -n "$work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

kib() { awk -v k="$1" '$1 == k":" { print $2 }' "$2"; }

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs, VmRSS ${wait_s} s after start"
printf '%-12s %5s %9s %9s %9s %7s %9s\n' build round "VmRSS" anon file threads binary
for round in $(seq 1 "$rounds"); do
    for spec in "$@"; do
        label=${spec%%=*}
        bin=${spec#*=}
        work=$(mktemp -d)
        (cd "$work" && HOME="$work" exec "$bin" run --dev >"$work/stdout" 2>"$work/stderr") &
        pid=$!
        sleep "$wait_s"
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$label: the daemon exited; its stderr:" >&2
            cat "$work/stderr" >&2
            exit 1
        fi
        status=/proc/$pid/status
        cp "$status" "$work/status"
        cp "/proc/$pid/smaps" "$work/smaps"
        if [ "$keep_smaps" = 1 ]; then
            cp "$work/smaps" "$out/$label.$round.smaps"
            cp "/proc/$pid/smaps_rollup" "$out/$label.$round.smaps_rollup"
        fi
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        pid=""
        rss=$(kib VmRSS "$work/status")
        anon=$(kib RssAnon "$work/status")
        file=$(kib RssFile "$work/status")
        threads=$(awk '$1 == "Threads:" { print $2 }' "$work/status")
        exe=$(readlink -f "$bin")
        binary=$(awk -v exe="$exe" '/^[0-9a-f]+-[0-9a-f]+ / { mine = ($6 == exe) } mine && $1 == "Rss:" { s += $2 } END { print s + 0 }' "$work/smaps")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$round" "$rss" "$anon" "$file" "$threads" "$binary" >>"$results"
        awk -v l="$label" -v r="$round" -v v="$rss" -v a="$anon" -v f="$file" -v t="$threads" -v b="$binary" \
            'BEGIN { printf "%-12s %5s %6.2f MiB %9.2f %9.2f %7s %9.2f\n", l, r, v/1024, a/1024, f/1024, t, b/1024 }'
        rm -rf "$work"
        work=""
    done
done
echo "# load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; per build: VmRSS min-max (mean), anon, file, threads, binary (MiB)"
for spec in "$@"; do
    label=${spec%%=*}
    awk -F'\t' -v l="$label" '
        $1 == l {
            n++; s += $3
            if (n == 1 || $3 < lo) lo = $3; if (n == 1 || $3 > hi) hi = $3
            if (n == 1 || $4 < alo) alo = $4; if (n == 1 || $4 > ahi) ahi = $4
            if (n == 1 || $5 < flo) flo = $5; if (n == 1 || $5 > fhi) fhi = $5
            if (n == 1 || $6 < tlo) tlo = $6; if (n == 1 || $6 > thi) thi = $6
            if (n == 1 || $7 < blo) blo = $7; if (n == 1 || $7 > bhi) bhi = $7
        }
        END {
            printf "%-12s %.2f-%.2f MiB (%.2f)  anon %.2f-%.2f  file %.2f-%.2f  threads %d-%d  binary %.2f-%.2f\n",
                l, lo/1024, hi/1024, s/n/1024, alo/1024, ahi/1024, flo/1024, fhi/1024, tlo, thi, blo/1024, bhi/1024
        }' "$results"
done
[ "$keep_smaps" = 1 ] && echo "# smaps kept in $out"
exit 0
