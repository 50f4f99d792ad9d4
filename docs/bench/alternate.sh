#!/bin/bash
# alternate.sh OUT ROUNDS BIN... — run ../shared/bench/peers one round at a time, taking the
# binaries in turn, ROUNDS times; each round's lines go to OUT under "### BIN round R". Use it
# to set the shipped binary next to the log-off copy (log-off.patch): the machine's noise
# between runs is larger than the differences measured, so rounds must alternate.
# EXTRA="--stream" (or other peers options) is passed through. GOMAXPROCS=1 in the
# environment reaches every Go system peers starts (the mock too): one P each narrowed the
# round-to-round spread of JSON answers in a quiet hour (58.2–59.7 µs/req over 4 rounds),
# not the host's own noise — a lens for comparing builds, not a setting to ship (streams cost twice as much a chunk with it; docs/PERFORMANCE.md,
# eighteenth session).
set -u
out=$1; n=$2; shift 2
cd "$(dirname "$0")/../.."
for r in $(seq 1 "$n"); do
	for b in "$@"; do
		echo "### $b round $r" >>"$out"
		../shared/bench/peers --strongroom "$b" --rounds 1 --duration 5 \
			--only httputil,bifrost-core,strongroom ${EXTRA:-} 2>&1 | grep -E "^round" >>"$out"
	done
done
