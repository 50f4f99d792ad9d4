#!/bin/bash
# openloop.sh RATE ROUNDS BIN [OFFBIN] — CPU per request of proxies sent the SAME offered
# load: RATE requests a second for 8 s (after 2 s of warm-up), by docs/bench/openloop (an
# open loop: a slower answer does not lower the rate, unlike peers' wrk), to the kit's
# mock upstream through httputil, bifrost-core, strongroom BIN and, if given, OFFBIN (the
# log-off copy, log-off.patch). Systems alternate within each round; CPU is the process's
# utime+stime from /proc, read after it settled (under 5% of a core for 1 s), as peers
# does. Prints one line a run and the same-round ratios' medians. Pick RATE below every
# system's closed-loop req/s (peers), so that all keep up; GOMAXPROCS passes through.
# Rounds alternate the systems' order; ONLY="a b" limits the systems run.
set -euo pipefail
rate=$1 rounds=$2 sr=$3 off=${4:-}
kit=$(cd "$(dirname "$0")/../../../shared/bench" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d -t openloop.XXXXXX)
pids=()
declare -A procs url
cleanup() {
	set +e
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
bg() { local n=$1; shift; "$@" >"$work/$n.log" 2>&1 & pids+=($!); procs[$n]=$!; }
addr() {
	local i a
	for i in $(seq 1200); do
		a=$(sed -n "s|^$2||p" "$work/$1.log" | head -n1)
		[ -n "$a" ] && { echo "$a"; return 0; }
		kill -0 "${procs[$1]}" 2>/dev/null || break
		sleep 0.1
	done
	echo "openloop: $1 did not start:" >&2; tail -n 20 "$work/$1.log" >&2; return 1
}
mkdir -p "$work/bin"
for m in mock httputil bifrostcore; do (cd "$kit/$m" && GOWORK=off go build -buildvcs=false -o "$work/bin/$m" .); done
(cd "$repo" && go build -o "$work/bin/openloop" ./docs/bench/openloop)
bg mock "$work/bin/mock" -listen 127.0.0.1:0 -chunks 200
mock=$(addr mock 'listening on ')
bg httputil "$work/bin/httputil" -upstream "$mock" -listen 127.0.0.1:0
url[httputil]=$(addr httputil 'listening on ')/v1/chat/completions
bg bifrost-core "$work/bin/bifrostcore" -upstream "$mock" -listen 127.0.0.1:0
url[bifrost-core]=$(addr bifrost-core 'listening on ')/v1/chat/completions
systems=(httputil bifrost-core strongroom)
[ -n "$off" ] && systems+=(strongroom-off)
# ONLY="strongroom strongroom-off" runs just those (e.g. more rounds of on against off).
[ -n "${ONLY:-}" ] && read -ra systems <<<"$ONLY"
key=none
for s in strongroom strongroom-off; do
	b=$sr && [ $s = strongroom-off ] && b=$off
	[ -n "$b" ] || continue
	d=$work/$s-data
	"$b" init --data "$d" >"$work/$s-setup.log" 2>&1
	"$b" principal add bench --tenant bench --data "$d" >>"$work/$s-setup.log" 2>&1
	k=$("$b" key create --principal bench --data "$d" 2>>"$work/$s-setup.log")
	[ $s = strongroom ] && key=$k
	# ON_JQ: a jq filter applied to the log-on copy's config after the route (e.g.
	# '.audit.request_sync_interval = "200ms"'), to measure a setting against the log off.
	f='.gateway.routes = [{model: "demo", upstreams: [$u], classification: "public"}]'
	[ $s = strongroom ] && [ -n "${ON_JQ:-}" ] && f="$f | $ON_JQ"
	jq --arg u "$mock/v1" "$f" "$d/config.json" >"$d/config.new" && mv "$d/config.new" "$d/config.json"
	bg $s "$b" --data "$d" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --custody-listen 127.0.0.1:0
	url[$s]=$(addr $s 'STRONGROOM_URL=')/chat/completions
	eval "key_${s//-/_}=\$k"
done
body='{"model":"demo","max_tokens":256,"messages":[{"role":"user","content":"hello there"}]}'
hz=$(getconf CLK_TCK)
ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
uticks() { awk '{sub(/^.*\) /, ""); print $12}' "/proc/$1/stat"; }
# faults PID: the process's minor page faults so far (on this VM a fault that maps a fresh
# page costs ~5 µs: the host's; docs/PERFORMANCE.md, thirty-ninth session).
faults() { awk '{sub(/^.*\) /, ""); print $8}' "/proc/$1/stat"; }
# switches PID: context switches of all its threads so far (each a futex wake and a
# schedule, costly in this guest).
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'; }
settle() {
	local t0 t1 i
	t1=$(ticks "$1")
	for i in $(seq 120); do
		t0=$t1 && sleep 1 && t1=$(ticks "$1")
		((t1 - t0 <= hz / 20)) && break
	done
	echo "$t1"
}
res=$work/res
# kof SYSTEM: the API key to send it (none for the peers, which ask for none).
kof() { case $1 in strongroom) echo "$key_strongroom" ;; strongroom-off) echo "$key_strongroom_off" ;; *) echo none ;; esac; }
# PAIRED=1 (with ONLY="a b", two systems): each round loads the two AT THE SAME TIME, one
# openloop client each at RATE, and counts each one's CPU over the same window — a drift
# of this shared machine (another guest's load, the host's clock) then lands on both,
# where taking turns let it land on one (log on ÷ off swung 0.97–1.39 over one run's
# rounds taking turns). The two compete for the same cores, so a figure is only for the
# ratio, not comparable with a taking-turns run's.
if [ -n "${PAIRED:-}" ]; then
	((${#systems[@]} == 2)) || { echo "openloop: PAIRED needs ONLY with two systems" >&2; exit 2; }
	a=${systems[0]} b=${systems[1]}
	for r in $(seq "$rounds"); do
		warm=()
		for s in "$a" "$b"; do
			"$work/bin/openloop" -url "${url[$s]}" -key "$(kof "$s")" -body "$body" -rate "$rate" -duration 2s >/dev/null &
			warm+=($!)
		done
		wait "${warm[@]}"
		# Which one is waited on to settle first alternates (ABBA): the other's window is
		# the longer by that wait, its idle CPU counted with it.
		if ((r % 2)); then ta0=$(settle "${procs[$a]}") tb0=$(settle "${procs[$b]}"); else tb0=$(settle "${procs[$b]}") ta0=$(settle "${procs[$a]}"); fi
		fa0=$(faults "${procs[$a]}") fb0=$(faults "${procs[$b]}") sa0=$(switches "${procs[$a]}") sb0=$(switches "${procs[$b]}")
		"$work/bin/openloop" -url "${url[$a]}" -key "$(kof "$a")" -body "$body" -rate "$rate" -duration 8s >"$work/out-a" &
		pa=$!
		"$work/bin/openloop" -url "${url[$b]}" -key "$(kof "$b")" -body "$body" -rate "$rate" -duration 8s >"$work/out-b" &
		pb=$!
		# PERF=DIR: the first round's load is sampled in each process too (perf record -g,
		# cpu-clock; DIR/NAME.txt is perf script's text, for docs/bench/perfstacks.py A B).
		# PERF_EVENT=EV records that event instead (every one, with its stack), e.g.
		# raw_syscalls:sys_enter to count each process's system calls by number.
		if [ -n "${PERF:-}" ] && ((r == 1)); then
			mkdir -p "$PERF"
			perfs=()
			for s in "$a" "$b"; do
				ev=(-e cpu-clock -F 999)
				[ -n "${PERF_EVENT:-}" ] && ev=(-e "$PERF_EVENT") # every event, e.g. raw_syscalls:sys_enter
				perf record "${ev[@]}" -g -p "${procs[$s]}" -o "$PERF/$s.data" -- sleep 6 >/dev/null 2>&1 &
				perfs+=($!)
			done
		fi
		wait $pa $pb
		if [ -n "${PERF:-}" ] && ((r == 1)); then
			wait "${perfs[@]}" || true
			for s in "$a" "$b"; do perf script -i "$PERF/$s.data" >"$PERF/$s.txt" 2>/dev/null; done
		fi
		if ((r % 2)); then ta1=$(settle "${procs[$a]}") tb1=$(settle "${procs[$b]}"); else tb1=$(settle "${procs[$b]}") ta1=$(settle "${procs[$a]}"); fi
		fa1=$(faults "${procs[$a]}") fb1=$(faults "${procs[$b]}") sa1=$(switches "${procs[$a]}") sb1=$(switches "${procs[$b]}")
		for x in a b; do
			s=$a t0=$ta0 t1=$ta1 f=$((fa1 - fa0)) w=$((sa1 - sa0))
			[ $x = b ] && s=$b t0=$tb0 t1=$tb1 f=$((fb1 - fb0)) w=$((sb1 - sb0))
			out=$(cat "$work/out-$x")
			n=$(sed -n 's/.* ok \([0-9]*\) .*/\1/p' <<<"$out")
			cpu=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$n" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }')
			fpr=$(awk -v f=$f -v w=$w -v n="$n" 'BEGIN { printf "faults/req %.3f, switches/req %.3f", (n > 0 ? f / n : 0), (n > 0 ? w / n : 0) }')
			echo "round $r $s cpu_us_per_req $cpu (paired, $fpr) | $out"
			echo "$r $s $cpu" >>"$res"
		done
	done
	rounds=0
fi
for r in $(seq "$rounds"); do
	# Every other round runs the systems in reverse order (ABBA), so that a drift of the
	# machine within a round is not always against the same system.
	order=("${systems[@]}")
	if ((r % 2 == 0)); then
		order=()
		for ((i = ${#systems[@]} - 1; i >= 0; i--)); do order+=("${systems[i]}"); done
	fi
	for s in "${order[@]}"; do
		k=$(kof "$s")
		"$work/bin/openloop" -url "${url[$s]}" -key "$k" -body "$body" -rate "$rate" -duration 2s >/dev/null
		t0=$(settle "${procs[$s]}") u0=$(uticks "${procs[$s]}")
		out=$("$work/bin/openloop" -url "${url[$s]}" -key "$k" -body "$body" -rate "$rate" -duration 8s)
		t1=$(settle "${procs[$s]}") u1=$(uticks "${procs[$s]}")
		n=$(sed -n 's/.* ok \([0-9]*\) .*/\1/p' <<<"$out")
		cpu=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$n" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }')
		# The user-space share of it (the rest is the kernel's: system calls, the network).
		user=$(awk -v u=$((u1 - u0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.0f%%", (t > 0 ? 100 * u / t : 0) }')
		echo "round $r $s cpu_us_per_req $cpu (user $user) | $out"
		echo "$r $s $cpu" >>"$res"
	done
done
awk '{ c[$2, $1] = $3; R = $1 > R ? $1 : R }
function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }; return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
function ratio(x, y, label,   r, a) { for (r = 1; r <= R; r++) a[r] = c[y, r] > 0 ? c[x, r] / c[y, r] : 0; printf "%s: %.2f (median over %d rounds)\n", label, med(a, R), R }
END {
	if (c["bifrost-core", 1] > 0) ratio("strongroom", "bifrost-core", "strongroom/bifrost-core CPU per request at one offered rate")
	if (c["httputil", 1] > 0) ratio("strongroom", "httputil", "strongroom/httputil CPU per request at one offered rate")
	if (c["strongroom-off", 1] > 0) ratio("strongroom", "strongroom-off", "log on/log off CPU per request at one offered rate")
}' "$res"
