#!/usr/bin/env bash
# Where a run's CPU, bytes and tail go: one `labroute serve` (benches/serve.sh; set
# LABROUTE_ROUTES for other routes, say with `[store] write_ahead_log = true`), `labroute
# loadgen` over MLLP/TLS for SECONDS at RATE ("max": as fast as the ACKs come), nobody
# receiving (MODE ingest) or loadgen receiving as the record systems (MODE e2e). Prints:
# - each serve thread's CPU per message (/proc/PID/task/TID/stat) and loadgen's;
# - bytes serve wrote per message (/proc/PID/io write_bytes);
# - the ACK (and sent → delivered) p50, p99, p99.9, max as loadgen saw them;
# - from the instance's histograms: mean commit (and of it redb's write and sync), log sync
#   (D28) and batch size, and how
#   many commits, syncs, index applications and ACKs went over 5, 10, 50, 100 ms (the
#   instance's ACK clock starts at a whole frame: a stall holds back the frames loadgen has
#   not sent yet, which only loadgen's figures count).
#   bash benches/threads.sh BINARY SECONDS RATE [ingest|e2e]
set -euo pipefail
bin=${1:-target/release/labroute}
secs=${2:-30}
rate=${3:-5000}
mode=${4:-ingest}
[ -x "$bin" ] || { echo "no $bin: cargo build --release (or pass the binary)"; exit 2; }
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
. "$(dirname "$0")/serve.sh"
start_serve "$bin" "$dir/data"
snap() {
    for t in /proc/"$serve"/task/*; do echo "$(cat "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"; done
}
written() { awk '/^write_bytes/ {print $2}' "/proc/$serve/io"; }
snap > "$dir/before"
w0=$(written)
args=(--to 127.0.0.1:2575 --connections 32 --messages 100000000 --duration "$secs" --mix results
      --cert certs/sil.pem --key certs/sil.key --ca certs/ca.pem --json)
[ "$rate" = max ] || args+=(--rate "$rate")
[ "$mode" = e2e ] && args+=(--receive 127.0.0.1:2676,127.0.0.1:2677)
start=$(awk '{print $14 + $15}' /proc/self/stat)
"$bin" loadgen "${args[@]}" > "$dir/report.json" &
lg=$!
lgcpu=0
while kill -0 "$lg" 2>/dev/null; do
    lgcpu=$(awk '{print $14 + $15}' "/proc/$lg/stat" 2>/dev/null || echo "$lgcpu")
    sleep 0.5
done
wait "$lg"
snap > "$dir/after"
echo $(($(written) - w0)) > "$dir/written"
curl -sf --cacert certs/ca.pem https://localhost:2580/metrics > "$dir/metrics" || {
    echo "cannot read /metrics on 127.0.0.1:2580: the routes' [admin] needs"
    echo "without_certificate = [\"127.0.0.1\"] (as in routes/)"
    exit 1
}
python3 - "$dir" "$lgcpu" "$(getconf CLK_TCK)" <<'PY'
import collections, json, re, sys
d, lgcpu, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = json.load(open(d + "/report.json"))
sent = max(r["sent"], 1)
def cpu(f):
    c = collections.Counter()
    for line in open(f):
        name, v = line.rsplit(" ", 1)
        c[name] += int(v)
    return c
b, a = cpu(d + "/before"), cpu(d + "/after")
us = {k: (a[k] - b.get(k, 0)) / hz * 1e6 / sent for k in a}
threads = " ".join(f"{k} {v:.0f}" for k, v in sorted(us.items(), key=lambda kv: -kv[1]) if v >= 0.5)
print(f"sent {r['sent']}, {r['per_second']:.0f} msg/s | serve {sum(us.values()):.0f} us/msg "
      f"({threads}) | loadgen {lgcpu / hz * 1e6 / sent:.0f} us/msg | written "
      f"{int(open(d + '/written').read()) / sent / 1024:.1f} KB/msg")
def pct(h):
    return " ".join(f"{k} {h[k + '_us'] / 1000:.1f}" for k in ("p50", "p99", "p999", "max"))
print(f"ACK ms: {pct(r['ack'])}")
if r.get("end_to_end"):
    e = r["end_to_end"]
    print(f"sent -> delivered ms: {pct(e['latency'])}; delivered {e['delivered']}, "
          f"duplicates {e['duplicates']}")
m, buckets = {}, collections.defaultdict(list)
for line in open(d + "/metrics"):
    if line.startswith("#") or " " not in line.strip():
        continue
    name, value = line.rsplit(" ", 1)
    if name.endswith("}") and "_bucket{" in name:
        le = re.search(r'le="([^"]+)"', name).group(1)
        buckets[name.split("_bucket{")[0]].append((le, float(value)))
    elif "{" not in name:
        m[name] = float(value)
def mean(n):
    c = m.get(n + "_count", 0)
    return m.get(n + "_sum", 0) / c if c else 0.0
print(f"mean commit {mean('labroute_store_commit_seconds') * 1e3:.2f} ms (redb's write and "
      f"sync {mean('labroute_store_sync_seconds') * 1e3:.2f} ms), log sync "
      f"{mean('labroute_store_wal_sync_seconds') * 1e3:.2f} ms, batch "
      f"{mean('labroute_store_batch_size'):.1f}")
for n in ("labroute_store_commit_seconds", "labroute_store_sync_seconds",
          "labroute_store_wal_sync_seconds",
          "labroute_store_index_seconds", "labroute_ack_latency_seconds"):
    rows = buckets.get(n)
    if rows:
        total = rows[-1][1]
        over = ", ".join(f">{float(le) * 1e3:g} ms {total - v:.0f}" for le, v in rows
                         if le in ("0.005", "0.01", "0.05", "0.1"))
        print(f"  {n}: {total:.0f}; {over}")
PY
