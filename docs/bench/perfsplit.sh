#!/bin/bash
# perfsplit.sh SYSTEM [BIN] — where a proxy's CPU goes, kernel against user space, with no
# hardware counters (this VM has none): ../shared/bench/peers runs SYSTEM (strongroom,
# bifrost-core, httputil) alone for one 10-second round; `perf record -e cpu-clock -g`
# samples that process for 5 s from 4 s into the run (its threads exist by then: perf -p
# does not follow threads started later). Prints the split by object (the binary, the
# kernel, the vdso) and the top user-space and kernel symbols, and µs a request of each
# from the round's req/s. BIN is the Strongroom binary (needed for SYSTEM=strongroom).
# KEEP=PREFIX keeps the samples: PREFIX.data (perf.data) and PREFIX.txt (`perf script`,
# for docs/bench/perfstacks.py or a stack walk of your own).
set -u
sys=$1
bin=${2:-}
cd "$(dirname "$0")/../.."
case $sys in
strongroom) pat="^$bin --data .* serve" ;;
bifrost-core) pat="^/tmp/peers.*/bin/bifrostcore" ;;
*) pat="^/tmp/peers.*/bin/$sys" ;;
esac
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
(
	for _ in $(seq 1 600); do
		pgrep -f -- "$pat" >/dev/null && break
		sleep 0.1
	done
	sleep 4
	pid=$(pgrep -f -- "$pat" | tail -1)
	perf record -e cpu-clock -F 999 -g -p "$pid" -o "$dir/perf.data" -- sleep 5 >"$dir/perf.log" 2>&1
) &
../shared/bench/peers ${bin:+--strongroom "$bin"} --rounds 1 --duration 10 --only "$sys" 2>&1 | grep '^round' | tee "$dir/round"
wait
rate=$(awk '{print $4}' "$dir/round")
# By object: share, samples, and µs a request (a sample is 1/999 s of one CPU).
perf report -i "$dir/perf.data" --stdio --no-children --show-nr-samples --sort dso -q -g none 2>/dev/null |
	awk -v r="$rate" 'NF >= 3 && $2 > 0 {all += $2; n[NR] = $2; name[NR] = $3 " " $4; share[NR] = $1}
		END {printf "all: %d samples, %.1f µs a request\n", all, all / 999 / 5 / r * 1e6
			for (i in n) printf "%8s %6d %7.1f µs  %s\n", share[i], n[i], n[i] / 999 / 5 / r * 1e6, name[i]}'
echo "top symbols:"
perf report -i "$dir/perf.data" --no-children --sort sym -q -g none 2>/dev/null | head -25
if [ -n "${KEEP:-}" ]; then
	cp "$dir/perf.data" "$KEEP.data"
	perf script -i "$KEEP.data" >"$KEEP.txt" 2>/dev/null
	echo "kept: $KEEP.data, $KEEP.txt"
fi
