#!/usr/bin/env python3
"""perfstacks.py A.txt [B.txt] — `perf script` stacks (docs/bench/perfload.sh) summed.

With one file: the share of samples whose stack holds each of the Go runtime's scheduler
functions (sysmon, findRunnable, ...), and the top functions by cumulative samples. With
two (e.g. log on, log off): the same side by side, and the functions whose cumulative
samples differ most, A minus B (a function counted once a stack)."""
import collections
import sys

RUNTIME = ["runtime.sysmon", "runtime.entersyscallWakeSysmon", "runtime.findRunnable",
           "runtime.netpoll", "runtime.stopm", "runtime.startm", "runtime.injectglist",
           "runtime.entersyscall", "runtime.usleep.abi0", "runtime.futex.abi0",
           "runtime.gcBgMarkWorker"]


def stacks(path):
    stack = []
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = []
        elif line[0] in "\t ":
            p = line.split()
            if len(p) >= 2:
                stack.append(p[1].rsplit("+", 1)[0])
    if stack:
        yield stack


def summary(path):
    total, cum = 0, collections.Counter()
    for st in stacks(path):
        total += 1
        for f in set(st):
            cum[f] += 1
    return total, cum


def main():
    files = sys.argv[1:]
    if not 1 <= len(files) <= 2:
        sys.exit(__doc__)
    sums = [summary(f) for f in files]
    print("samples:", "  ".join(f"{f}: {t}" for f, (t, _) in zip(files, sums)))
    for name in RUNTIME:
        print(f"{name:36s}" + "".join(f" {c[name]:6d} {100 * c[name] / t:5.1f}%" for t, c in sums))
    if len(sums) == 1:
        t, c = sums[0]
        for f, n in c.most_common(40):
            print(f"{n:6d} {100 * n / t:5.1f}%  {f}")
        return
    (_, a), (_, b) = sums
    print("cumulative samples, A, B, A-B:")
    for f in sorted(set(a) | set(b), key=lambda f: -(a[f] - b[f]))[:50]:
        print(f"{a[f]:6d} {b[f]:6d} {a[f] - b[f]:+6d}  {f}")


main()
