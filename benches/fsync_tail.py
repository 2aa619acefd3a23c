#!/usr/bin/env python3
"""The disk's own sync latency, for reading the engine's ACK p99 against (BENCHMARKS.md).

Appends SIZE bytes and fdatasyncs, again and again, for SECONDS, in a file under DIR (the
data directory's filesystem), and prints the sync's p50, p99, p99.9, max and the count of
syncs over 50 and 100 ms. Nothing else should run meanwhile.
    python3 benches/fsync_tail.py [SECONDS=30] [SIZE=32768] [DIR=.]
"""
import os
import sys
import tempfile
import time

secs = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
size = int(sys.argv[2]) if len(sys.argv) > 2 else 32768
where = sys.argv[3] if len(sys.argv) > 3 else "."
fd, path = tempfile.mkstemp(prefix="fsync-tail-", dir=where)
os.close(fd)
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
buf = os.urandom(size)
lat = []
end = time.monotonic() + secs
try:
    while time.monotonic() < end:
        os.write(fd, buf)
        t = time.monotonic()
        os.fdatasync(fd)
        lat.append(time.monotonic() - t)
finally:
    os.close(fd)
    os.unlink(path)
lat.sort()
n = len(lat)


def q(p):
    return lat[min(n - 1, int(n * p))] * 1000


print(
    f"{n} fdatasync of {size} B appends in {secs:.0f} s: p50 {q(.5):.2f} p99 {q(.99):.2f} "
    f"p99.9 {q(.999):.2f} max {lat[-1] * 1000:.1f} ms; over 50 ms: "
    f"{sum(1 for x in lat if x > .05)}, over 100 ms: {sum(1 for x in lat if x > .1)}"
)
