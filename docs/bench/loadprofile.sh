#!/bin/bash
# loadprofile.sh BIN PROFILE RATE DURATION — one `strongroom serve` (BIN) sent RATE
# requests a second for DURATION (e.g. 40s) by docs/bench/openloop, after 2 s of warm-up,
# with STRONGROOM_CPUPROFILE=PROFILE (and STRONGROOM_MEMPROFILE=$MEMPROF if set); prints
# the generator's line and the CPU ticks, minor page faults and context switches of the
# process during the load. For profiles longer than openloop.sh's 8 s runs; alternate two
# builds for a comparison.
set -euo pipefail
b=$1 prof=$2 rate=$3 dur=$4
kit=$(cd "$(dirname "$0")/../../../shared/bench" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
w=$(mktemp -d -t loadprofile.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done; wait 2>/dev/null; rm -rf "$w"' EXIT
(cd "$kit/mock" && GOWORK=off go build -buildvcs=false -o "$w/mock" .)
(cd "$repo" && go build -o "$w/openloop" ./docs/bench/openloop)
"$w/mock" -listen 127.0.0.1:0 -chunks 200 >"$w/mock.log" 2>&1 & pids+=($!)
until grep -q "listening on" "$w/mock.log"; do sleep 0.1; done
mock=$(sed -n 's/^listening on //p' "$w/mock.log")
d=$w/d
"$b" init --data "$d" >/dev/null 2>&1
"$b" principal add bench --tenant bench --data "$d" >/dev/null 2>&1
k=$("$b" key create --principal bench --data "$d" 2>/dev/null)
jq --arg u "$mock/v1" '.gateway.routes = [{model: "demo", upstreams: [$u], classification: "public"}]' "$d/config.json" >"$d/c" && mv "$d/c" "$d/config.json"
STRONGROOM_CPUPROFILE=$prof STRONGROOM_MEMPROFILE=${MEMPROF:-} "$b" --data "$d" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --custody-listen 127.0.0.1:0 >"$w/sr.log" 2>&1 &
sp=$!
until grep -q STRONGROOM_URL= "$w/sr.log"; do kill -0 $sp || { cat "$w/sr.log"; exit 1; }; sleep 0.1; done
url=$(sed -n 's/^STRONGROOM_URL=//p' "$w/sr.log" | head -1)/chat/completions
body='{"model":"demo","max_tokens":256,"messages":[{"role":"user","content":"hello there"}]}'
"$w/openloop" -url "$url" -key "$k" -body "$body" -rate "$rate" -duration 2s >/dev/null
ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
uticks() { awk '{sub(/^.*\) /, ""); print $12}' "/proc/$1/stat"; }
# Minor page faults (each ~11 µs of CPU on this VM: a heap page the runtime's scavenger
# gave back, touched again) and context switches of all the process's threads: counts,
# less noisy than CPU time.
faults() { awk '{sub(/^.*\) /, ""); print $8}' "/proc/$1/stat"; }
switches() { cat /proc/$1/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s}'; }
# Read- and write-family system calls (every read, recvmsg, write, sendmsg, pwrite...).
sysr() { awk '/^syscr/ {print $2}' "/proc/$1/io"; }
sysw() { awk '/^syscw/ {print $2}' "/proc/$1/io"; }
t0=$(ticks $sp) u0=$(uticks $sp) f0=$(faults $sp) c0=$(switches $sp) r0=$(sysr $sp) w0=$(sysw $sp)
"$w/openloop" -url "$url" -key "$k" -body "$body" -rate "$rate" -duration "$dur"
t1=$(ticks $sp) u1=$(uticks $sp) f1=$(faults $sp) c1=$(switches $sp) r1=$(sysr $sp) w1=$(sysw $sp)
echo "ticks during load: $((t1 - t0)) (of $(getconf CLK_TCK) a second; user $((u1 - u0))); minor faults $((f1 - f0)); context switches $((c1 - c0)); read calls $((r1 - r0)), write calls $((w1 - w0))"
kill $sp; wait $sp || true
