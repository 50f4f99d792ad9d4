#!/bin/bash
# syscalls.sh BIN [PEERS-OPTIONS...] — run ../shared/bench/peers for Strongroom binary BIN
# alone (one round, 10 s) and count the syscalls its process makes over 4 s in the middle
# of the load (perf's syscall tracepoints; no hardware counters are needed), with the
# process's task-clock. Prints one line per syscall: its count, and per request (or per
# chunk with --stream: requests × 200), from the round's req/s. Use it to set two builds
# side by side (the shipped binary and the log-off copy, docs/bench/log-off.patch):
# syscalls per request do not depend on the machine's noise as CPU time does. Strongroom's
# sockets are read and written with recvfrom and sendto (package rawsock), counted first;
# peers' Go systems use read and write.
set -u
bin=$1; shift
cd "$(dirname "$0")/../.."
out=$(mktemp)
# SYS=httputil (or another peers system whose binary the kit builds: bifrostcore's row is
# bifrost-core) counts that system's process instead, under the same load.
sys=${SYS:-strongroom}
../shared/bench/peers --strongroom "$bin" --rounds 1 --duration 10 --only "$sys" "$@" >"$out" 2>&1 &
peers=$!
pid=
for _ in $(seq 1 600); do
	case $sys in
	strongroom) pid=$(pgrep -f -- "$(basename "$bin") --data" | head -1) ;;
	bifrost-core) pid=$(pgrep -f -- "^/tmp/peers.*/bin/bifrostcore" | head -1) ;;
	*) pid=$(pgrep -f -- "^/tmp/peers.*/bin/$sys" | head -1) ;;
	esac
	[ -n "$pid" ] && break
	sleep 0.1
done
[ -n "$pid" ] || { echo "syscalls.sh: the strongroom process did not start" >&2; exit 1; }
sleep 5 # the warm-up (3 s) and a little of the run
events=syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_fdatasync,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_nanosleep,syscalls:sys_enter_pwrite64
# sys_exit_read filtered on EAGAIN (-11): the reads that found nothing to read, each a
# park on the poller and a second read later (Go's netpoll must try a read before it
# waits: its poll reset drops a readiness that came first). Page faults and context
# switches are the process's too.
stat=$(perf stat -x, -e "$events,task-clock,page-faults,context-switches" \
	-e syscalls:sys_exit_read --filter 'ret == -11' -e syscalls:sys_exit_recvfrom --filter 'ret == -11' -p "$pid" -- sleep 4 2>&1 |
	sed 's/syscalls:sys_exit_read/reads that returned EAGAIN/; s/syscalls:sys_exit_recvfrom/recvfroms that returned EAGAIN/')
wait $peers
rate=$(awk '/^round/ {print $4}' "$out")
per=1
case " $* " in *" --stream "*) per=200 ;; esac
echo "req/s $rate (CPU line: $(grep '^round' "$out" | sed 's/.*CPU/CPU/'))"
echo "$stat" | awk -F, -v rate="$rate" -v per="$per" '$3 != "" && $1 ~ /^[0-9.]+$/ {
	n = rate * 4 * per
	printf "%-34s %10d  %.4f per %s\n", $3, $1, $1 / n, (per == 1 ? "request" : "chunk")
}'
rm -f "$out"
