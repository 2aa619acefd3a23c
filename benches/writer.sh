#!/usr/bin/env bash
# The store writer at a fixed rate, from the instance's own figures: one `labroute serve` on
# the embedded defaults (routes/, the development PKI, a fresh data directory), `labroute
# loadgen` over MLLP/TLS at RATE for SECONDS (nobody receives: the ACK path), then
# - the writer thread's CPU per message (/proc/PID/task/TID/stat),
# - the pending index writes' application per entry (labroute_store_index_seconds over
#   labroute_store_index_batch_size) and the commits' total time, from /metrics.
# One line per run. Compare binaries by alternating them (BENCHMARKS.md, D27):
#   for i in 1 2; do bash benches/writer.sh OLD 20 5000; bash benches/writer.sh NEW 20 5000; done
set -euo pipefail
bin=${1:-target/release/labroute}
secs=${2:-20}
rate=${3:-5000}
mix=${4:-results}
[ -x "$bin" ] || { echo "no $bin: cargo build --release (or pass the binary)"; exit 2; }
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
. "$(dirname "$0")/serve.sh"
start_serve "$bin" "$dir/data"
writer=""
for t in /proc/"$serve"/task/*; do
    [ "$(cat "$t/comm")" = labroute-writer ] && writer=$(basename "$t")
done
[ -n "$writer" ] || { echo "no labroute-writer thread in process $serve"; exit 1; }
cpu() { awk '{print $14 + $15}' "/proc/$serve/task/$writer/stat"; }
before=$(cpu)
"$bin" loadgen --to 127.0.0.1:2575 --connections 32 --messages 100000000 --duration "$secs" \
    --rate "$rate" --mix "$mix" --cert certs/sil.pem --key certs/sil.key --ca certs/ca.pem \
    --json > "$dir/report.json"
after=$(cpu)
curl -sf --cacert certs/ca.pem https://localhost:2580/metrics > "$dir/metrics" || {
    echo "cannot read /metrics on 127.0.0.1:2580: the routes' [admin] needs"
    echo "without_certificate = [\"127.0.0.1\"] (as in routes/)"
    exit 1
}
python3 - "$bin" "$dir/report.json" "$dir/metrics" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import json, sys
bin, report, metrics, before, after, hz = sys.argv[1:]
r = json.load(open(report))
m = {}
for line in open(metrics):
    parts = line.split()
    # Unlabelled samples only: `name value`.
    if len(parts) == 2 and not line.startswith("#") and "{" not in parts[0]:
        m[parts[0]] = float(parts[1])
sent = r["sent"]
entries = m.get("labroute_store_index_batch_size_sum", 0) or 1
cpu_us = (int(after) - int(before)) / int(hz) * 1e6 / max(sent, 1)
print(f"{bin}: sent {sent}, ACK p50 {r['ack']['p50_us'] / 1000:.1f} ms p99 "
      f"{r['ack']['p99_us'] / 1000:.1f} ms | writer CPU {cpu_us:.1f} us/message | index "
      f"{int(m.get('labroute_store_index_seconds_count', 0))} applications, "
      f"{m.get('labroute_store_index_seconds_sum', 0) / entries * 1e6:.1f} us/entry | "
      f"commits {m.get('labroute_store_commit_seconds_sum', 0):.2f} s")
PY
