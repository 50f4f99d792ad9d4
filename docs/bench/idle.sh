#!/bin/bash
# idle.sh BIN SECONDS — CPU of an idle `strongroom serve` (a fresh `init`, no requests):
# utime+stime from /proc over SECONDS, 3 s after it said it was up. Prints ms of CPU a
# second: the fixed costs (polls, probes, timers) every gateway pays whatever its load.
set -euo pipefail
b=$1 secs=$2
d=$(mktemp -d -t idle.XXXXXX)
"$b" init --data "$d/d" >/dev/null 2>&1
"$b" --data "$d/d" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --custody-listen 127.0.0.1:0 >"$d/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$d"' EXIT
until grep -q STRONGROOM_URL= "$d/log"; do kill -0 $pid || { cat "$d/log"; exit 1; }; sleep 0.2; done
sleep 3
ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
t0=$(ticks $pid); sleep "$secs"; t1=$(ticks $pid)
echo "$b idle: $(( (t1 - t0) * 1000 / $(getconf CLK_TCK) / secs )) ms CPU/s"
