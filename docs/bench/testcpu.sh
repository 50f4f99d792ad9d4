#!/bin/bash
# testcpu.sh BINARY TEST... — each test of a test binary run alone, one after another: its
# wall time, the process's user and system CPU, and MariaDB's CPU meanwhile (read from
# /proc before and after). Run it with the services up, from the package's directory, e.g.
#   go test -race -gcflags='modernc.org/...=-d=checkptr=0' -c -o /tmp/audit.race.test ./internal/audit
#   ./scripts/test bash -c 'cd internal/audit && ../../docs/bench/testcpu.sh /tmp/audit.race.test TestAttack9RepairLargeTail'
# (PERFORMANCE, thirty-sixth session). Each test's output is left in /tmp/testcpu.NAME.out.
set -u
bin=$1
shift
mpid=$(pgrep -x mariadbd | head -1)
tck=$(getconf CLK_TCK)
mcpu() { if [ -n "$mpid" ]; then awk '{print $14+$15}' "/proc/$mpid/stat"; else echo 0; fi; }
for t in "$@"; do
	m0=$(mcpu)
	/usr/bin/time -o /tmp/testcpu.time -f "%e s wall, %U s user, %S s system" "$bin" -test.run "^$t\$" -test.count=1 -test.v -test.timeout=10m >"/tmp/testcpu.$t.out" 2>&1
	m1=$(mcpu)
	printf '%s: %s, MariaDB %.2f s; %s\n' "$t" "$(cat /tmp/testcpu.time)" "$(echo "($m1-$m0)/$tck" | bc -l)" "$(tail -n 1 "/tmp/testcpu.$t.out")"
done
