#!/bin/bash
# rotation.sh BIN — the request journal's syncs under load: runs ../shared/bench/peers for
# Strongroom binary BIN alone (one round, 10 s) and traces the process's fdatasync, fsync
# and openat for 4 s mid-run (perf trace: tracepoints, no hardware counters). Prints how
# many segments started (a packed segment's file is created O_EXCL, mode 0600), the
# durations of the journal's fdatasyncs (periodic syncs, closes, new headers), and those of
# each segment's close — the fdatasync just before a segment starts. A close made by a
# request's writer holds the journal's lock throughout (docs/PERFORMANCE.md, eighteenth
# session). The journal's segment is found as fd 13 on this build's start-up order: check
# with `ls -l /proc/PID/fd` if the counts look wrong.
set -u
bin=$1
cd "$(dirname "$0")/../.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
(
	for _ in $(seq 1 600); do
		pid=$(pgrep -f -- "$(basename "$bin") --data" | head -1)
		[ -n "$pid" ] && break
		sleep 0.1
	done
	sleep 5 # the warm-up (3 s) and a little of the run
	timeout -s INT 4 perf trace -p "$pid" -e fdatasync,fsync,openat >"$out" 2>&1
) &
../shared/bench/peers --strongroom "$bin" --rounds 1 --duration 10 --only strongroom 2>&1 | grep '^round'
wait
echo "segments started: $(grep -c 'CREAT|EXCL, mode: IRUSR' "$out")"
grep 'fdatasync(fd: 13)' "$out" | grep -o '( *[0-9.]* ms)' | tr -d '()ms ' | sort -n |
	awk '{a[NR] = $1} END {print "journal fdatasyncs: " NR ", median " a[int(NR / 2)] " ms, p90 " a[int(NR * 0.9)] " ms, max " a[NR] " ms"}'
echo "closes (ms): $(awk '/CREAT\|EXCL, mode: IRUSR/ {print prev} /fdatasync\(fd: 13\)/ {prev = $0}' "$out" |
	grep -o '( *[0-9.]* ms)' | tr -d '()ms ' | sort -n | tr '\n' ' ')"
