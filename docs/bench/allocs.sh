#!/bin/bash
# allocs.sh BIN-A BIN-B — heap allocations a request of two Strongroom builds under
# ../shared/bench/peers (Strongroom alone, one round, 5 s each), from the allocation profile
# each writes at exit (STRONGROOM_MEMPROFILE). Per request = the profile's totals divided
# by the requests it saw, counted from the gateway's request record buffer (768 bytes,
# one a request). The profile samples one allocation per 512 KiB: rows under ~60 bytes a
# request are noise; the totals are good to a few per cent. The log's per-second work (folds,
# the index, tessera) allocates too and is counted per request: compare runs of similar
# req/s (a run at two thirds the rate showed +7 % bytes a request for the same build). For
# a figure that does not move with the load: BenchmarkProxy/gateway's allocs/op.
set -u
cd "$(dirname "$0")/../.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for b in "$1" "$2"; do
	n=$(basename "$b")
	STRONGROOM_MEMPROFILE="$dir/$n.prof" ../shared/bench/peers --strongroom "$b" --rounds 1 --duration 5 --only strongroom 2>&1 | grep '^round'
done
python3 - "$1" "$dir/$(basename "$1").prof" "$2" "$dir/$(basename "$2").prof" <<'PY'
import re, subprocess, sys
def load(binp, prof):
    def top(index):
        return subprocess.run(['go', 'tool', 'pprof', '-sample_index=' + index, '-top', '-nodecount=400', binp, prof],
                              capture_output=True, text=True, check=True).stdout
    t, o = top('alloc_space'), top('alloc_objects')
    unit = {'MB': 2**20, 'kB': 1024, 'B': 1}
    rows = {}
    for line in t.splitlines():
        m = re.match(r'\s*([\d.]+)(MB|kB|B)\s+[\d.]+%\s+[\d.]+%\s+[\d.]+(?:MB|kB|B)\s+[\d.]+%\s+(\S+)', line)
        if m:
            rows[m.group(3)] = float(m.group(1)) * unit[m.group(2)]
    n = rows['github.com/strongroom/strongroom/internal/gateway.(*Gateway).requestRecord'] / 768
    m = re.search(r'of ([\d.]+)(MB|kB|B) total', t)
    total = float(m.group(1)) * unit[m.group(2)]
    objs = int(re.search(r'of (\d+) total', o).group(1))
    return n, total / n, objs / n, {k: v / n for k, v in rows.items()}
a, b = load(sys.argv[1], sys.argv[2]), load(sys.argv[3], sys.argv[4])
print('requests seen: ~%.0f / ~%.0f' % (a[0], b[0]))
print('bytes a request: %.0f -> %.0f (%+.1f %%)' % (a[1], b[1], 100 * (b[1] / a[1] - 1)))
print('objects a request: %.1f -> %.1f (%+.1f %%)' % (a[2], b[2], 100 * (b[2] / a[2] - 1)))
print('bytes a request by function (flat), A B:')
for k in sorted(set(a[3]) | set(b[3]), key=lambda k: -max(a[3].get(k, 0), b[3].get(k, 0))):
    if max(a[3].get(k, 0), b[3].get(k, 0)) >= 60:
        print('%7.0f %7.0f  %s' % (a[3].get(k, 0), b[3].get(k, 0), k))
PY
