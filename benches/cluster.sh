#!/usr/bin/env bash
# Durable ingest on the JetStream store beside the embedded one (issue 9, DECISIONS D23):
# the same load (`labroute loadgen` over MLLP/TLS with the sil certificate, nobody receiving:
# the ACK path only) against
#   embedded  one node on the embedded store (as benches/e2e.sh ingest);
#   js1       one node on one NATS server (replicas 1);
#   js2       two nodes on a three-server NATS cluster (replicas 3), the connections split
#             between them (ops/cluster/start.sh).
# Prints each setup's ACKs per second and ACK latency (p50/p99), and the ratios to embedded.
#   bash benches/cluster.sh [SECONDS] [CONNECTIONS] [MIX] [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
conns=${2:-32}
mix=${3:-oru:25}
bin=${4:-target/release/labroute}
[ -x "$bin" ] || { echo "no $bin: cargo build --release (or pass the binary)"; exit 2; }
command -v nats-server >/dev/null || { echo "nats-server is not installed (apt install nats-server)"; exit 2; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

wait_port() {
    for _ in $(seq 400); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on $1" >&2
    return 1
}

load() { # port connections out
    LABROUTE_LOG=error "$bin" loadgen --to "127.0.0.1:$1" --connections "$2" --messages 100000000 \
        --duration "$secs" --mix "$mix" --cert certs/sil.pem --key certs/sil.key --ca certs/ca.pem \
        --json >"$3"
}

for setup in embedded js1 js2; do
    dir="$work/$setup"
    mkdir -p "$dir"
    case $setup in
        embedded)
            LABROUTE_LOG=error "$bin" serve --data "$dir/data" &
            wait_port 2575
            load 2575 "$conns" "$dir/a.json"
            ;;
        js1)
            SERVERS=1 NODES=1 LABROUTE_BIN="$bin" bash ops/cluster/start.sh "$dir/cluster" >/dev/null &
            wait_port 2575
            load 2575 "$conns" "$dir/a.json"
            ;;
        js2)
            SERVERS=3 NODES=2 LABROUTE_BIN="$bin" bash ops/cluster/start.sh "$dir/cluster" >/dev/null &
            wait_port 2575
            wait_port 3575
            load 2575 $((conns / 2)) "$dir/a.json" &
            load 3575 $((conns / 2)) "$dir/b.json"
            wait %%
            ;;
    esac
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    # Ports free again before the next setup.
    sleep 2
done

python3 - "$work" <<'PY'
import json, os, sys
work = sys.argv[1]
rows = {}
for setup in ("embedded", "js1", "js2"):
    reps = [json.load(open(os.path.join(work, setup, f))) for f in ("a.json", "b.json")
            if os.path.exists(os.path.join(work, setup, f))]
    rate = sum(r["per_second"] for r in reps)
    p50 = max(r["ack"]["p50_us"] for r in reps) / 1000
    p99 = max(r["ack"]["p99_us"] for r in reps) / 1000
    failed = sum(r["failed"] + r["refused"] for r in reps)
    rows[setup] = rate
    print(f"{setup:9} {rate:8.0f} ACKs/s  ACK p50 {p50:.1f} ms  p99 {p99:.1f} ms  not accepted {failed}")
base = rows["embedded"]
print("ratios to embedded: " + ", ".join(f"{k} ×{v / base:.2f}" for k, v in rows.items() if k != "embedded"))
PY
