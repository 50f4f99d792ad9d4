#!/bin/bash
# perfload.sh BIN OUT [RATE] — docs/bench/loadprofile.sh's load (RATE requests a second,
# default 3,000, for 20 s, no Go profiler) with `perf record -e cpu-clock -F 999 -g` of the
# `serve` process for 12 s from 5 s into it; the samples go to OUT (perf.data format) and
# `perf script` text to OUT.txt, for docs/bench/perfstacks.py. Prints loadprofile's lines.
set -u
b=$1 out=$2 rate=${3:-3000}
cd "$(dirname "$0")/../.."
(
	for _ in $(seq 1 600); do
		pgrep -f -- "^$b --data .* serve" >/dev/null && break
		sleep 0.1
	done
	sleep 5
	pid=$(pgrep -f -- "^$b --data .* serve" | tail -1)
	perf record -e cpu-clock -F 999 -g -p "$pid" -o "$out" -- sleep 12 >/dev/null 2>&1
) &
docs/bench/loadprofile.sh "$b" "" "$rate" 20s 2>&1 | tail -2
wait
perf script -i "$out" >"$out.txt" 2>/dev/null
