#!/bin/bash
# The daemon's instructions over `zoomwire bench`'s throughput phase, counted
# by callgrind: every thread of the daemon, none of the bench's or the
# simulator's. Instruction counts do not move with the machine's load, so
# per-function figures compare two builds on the same workload; the total
# moves up to 3% between runs of one build, as the writer's batches do.
#
# usage: bench/callgrind-daemon.sh BINARY JOURNAL OUT [EVENTS]
#   BINARY   a release build of zoomwire (outside target/, so a rebuild does not replace it)
#   JOURNAL  full, normal or memory (as `zoomwire bench --journal`)
#   OUT      a path prefix: OUT.log is the bench's report, OUT.cg.<pid>.1 the daemon's counts
#   EVENTS   events of the throughput phase (default 10000; about 15 s under valgrind)
# then, for example:
#   callgrind_annotate --inclusive=yes OUT.cg.*.1 | grep -E 'PROGRAM TOTALS|decode_frame \['
set -euo pipefail
BINARY=$1 JOURNAL=$2 OUT=$3 EVENTS=${4:-10000}
rm -f "$OUT".cg.* "$OUT".log
valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$OUT.cg.%p" \
    "$BINARY" bench --events "$EVENTS" --rate 100 --seconds 1 --journal "$JOURNAL" \
    > "$OUT.log" 2>&1 &
bench=$!
daemon=""
state=counting_soon
while kill -0 "$bench" 2>/dev/null; do
    if [ "$state" = counting_soon ] && grep -q "^bench: throughput" "$OUT.log"; then
        daemon=$(pgrep -f "$BINARY run" | head -1)
        callgrind_control --zero "$daemon" > /dev/null 2>&1
        state=counting
    elif [ "$state" = counting ] && grep -q "^bench: latency" "$OUT.log"; then
        # The bench kills the daemon (kill -9) at its end: dump before that.
        callgrind_control --dump "$daemon" > /dev/null 2>&1
        state=dumped
    fi
    sleep 0.2
done
grep -v "^==" "$OUT.log" | grep -E "throughput  |delivery" || true
# A run with a missing or doubled post (or any other failure) gives no figure.
if ! wait "$bench"; then
    echo "the bench failed: no figure (see $OUT.log)" >&2
    exit 1
fi
counts=$(ls "$OUT".cg."$daemon".1)
total=$(callgrind_annotate "$counts" | grep "PROGRAM TOTALS" | awk '{gsub(",", "", $1); print $1}')
echo "daemon: $total instructions, $((total / EVENTS)) per event ($counts)"
