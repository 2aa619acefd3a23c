#!/usr/bin/env bash
# Durable ingest and end to end on the embedded defaults (routes/, the development PKI):
# `labroute serve` on a fresh data directory, then `labroute loadgen` over MLLP/TLS with the
# sil certificate, standing in for ES1's and ES2's record systems when MODE=e2e. The
# instance's RSS is sampled every 5 s.
#   bash benches/e2e.sh MODE SECONDS [RATE] [CONNECTIONS] [MIX] [BINARY]
#     MODE   ingest: nobody receives (results queue in the store): ACK path only
#            e2e:    loadgen receives as the record systems: sent → delivered
#     RATE   messages/s in all, or "max" (default) for as fast as the ACKs come
# Example: bash benches/e2e.sh e2e 600 5000 32 results
set -euo pipefail
mode=${1:?ingest or e2e}
secs=${2:-20}
rate=${3:-max}
conns=${4:-32}
mix=${5:-oru:25}
bin=${6:-target/release/labroute}
[ -x "$bin" ] || { echo "no $bin: cargo build --release (or pass the binary)"; exit 2; }
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
. "$(dirname "$0")/serve.sh"
start_serve "$bin" "$dir/data"
(while kill -0 "$serve" 2>/dev/null; do
    ps -o rss= -p "$serve" >> "$dir/rss" || true
    sleep 5
done) &
args=(--to 127.0.0.1:2575 --connections "$conns" --messages 100000000 --duration "$secs"
      --mix "$mix" --cert certs/sil.pem --key certs/sil.key --ca certs/ca.pem --json)
[ "$rate" = max ] || args+=(--rate "$rate")
[ "$mode" = e2e ] && args+=(--receive 127.0.0.1:2676,127.0.0.1:2677)
"$bin" loadgen "${args[@]}" | tee "$dir/report.json"
ps -o rss= -p "$serve" >> "$dir/rss"
python3 - "$dir/rss" "$dir/data" <<'PY'
import os, sys
rss = [int(l) / 1024 for l in open(sys.argv[1]) if l.strip()]
size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(sys.argv[2]) for f in fs)
print(f"serve RSS: first {rss[0]:.1f} MB, min {min(rss):.1f}, max {max(rss):.1f}, "
      f"last {rss[-1]:.1f} MB over {len(rss)} samples; data directory {size / 1e6:.0f} MB")
# Flat or growing: the RSS at each quarter of the run, and how much the second half added.
q = [rss[min(len(rss) - 1, len(rss) * i // 4)] for i in range(1, 4)] + [rss[-1]]
half = rss[len(rss) // 2]
print("serve RSS at 1/4, 1/2, 3/4, end: " + ", ".join(f"{v:.1f}" for v in q)
      + f" MB; second half {rss[-1] - half:+.1f} MB ({(rss[-1] / half - 1) * 100:+.1f} %)")
PY
