#!/usr/bin/env bash
# A local JetStream cluster and two labroute nodes on loopback (issue 9, DECISIONS D23):
# three nats-server processes (clients on 127.0.0.1:4222-4224, cluster routes on 6222-6224,
# storage in DIR/nats0-2) and two labroute nodes on the embedded defaults (routes/, certs/),
# each with its own data directory and a `[store]` on that cluster (stream LABROUTE, three
# replicas). Node a listens on routes/'s ports (MLLP 2575/2576, admin 2580, FHIR 2581);
# node b on the same ports + 1000. Both deliver to routes/'s destinations (2675-2677), each
# destination by one node at a time.
#
#   bash ops/cluster/start.sh [DIR]      # default DIR: ./cluster; Ctrl-C stops everything
#
# SERVERS=1 runs one NATS server (replicas 1), NODES=1 one labroute node (what
# benches/cluster.sh compares with the embedded store).
#
# Then send to either node (`labroute loadgen --to 127.0.0.1:2575,127.0.0.1:3575 ...`),
# kill one (`kill -9 <pid>`, printed below) or one NATS server, and watch the other take its
# destinations over (DIR/a.log, DIR/b.log; /readyz and /metrics on each admin port).
# Needs: nats-server (Debian package nats-server), and labroute built (`cargo build
# --release`, or LABROUTE_BIN=path).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-cluster}
bin=${LABROUTE_BIN:-target/release/labroute}
command -v nats-server >/dev/null || { echo "nats-server is not installed (apt install nats-server)" >&2; exit 1; }
[ -x "$bin" ] || { echo "no $bin: cargo build --release (or LABROUTE_BIN=path)" >&2; exit 1; }
servers=${SERVERS:-3}
nodes=${NODES:-2}
[ "$servers" = 1 ] || [ "$servers" = 3 ] || { echo "SERVERS: 1 or 3" >&2; exit 2; }
mkdir -p "$dir"
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

routes="nats://127.0.0.1:6222,nats://127.0.0.1:6223,nats://127.0.0.1:6224"
urls=()
for i in $(seq 0 $((servers - 1))); do
    cluster=()
    [ "$servers" = 3 ] && cluster=(--cluster_name labroute --cluster "nats://127.0.0.1:$((6222 + i))" --routes "$routes")
    nats-server -js -a 127.0.0.1 -p $((4222 + i)) -n "n$i" "${cluster[@]}" -sd "$dir/nats$i" \
        >"$dir/nats$i.log" 2>&1 &
    pids+=($!)
    urls+=("\"nats://127.0.0.1:$((4222 + i))\"")
    echo "nats-server n$i: pid $!, 127.0.0.1:$((4222 + i))"
done
servers_toml=$(IFS=,; echo "${urls[*]}")
sleep 2 # the cluster elects its JetStream leader

for node in $( [ "$nodes" = 1 ] && echo a || echo a b ); do
    offset=0
    [ "$node" = b ] && offset=1000
    mkdir -p "$dir/$node/routes"
    for f in routes/*.toml; do
        # Listener, admin and FHIR ports moved by the node's offset; certs/ by absolute path.
        perl -pe "s{^(bind\s*=\s*\"127\.0\.0\.1:)(\d+)\"}{\$1.(\$2+$offset).'\"'}e; s{\"\.\./certs/}{\"$PWD/certs/}g" \
            "$f" >"$dir/$node/routes/$(basename "$f")"
    done
    cat >>"$dir/$node/routes/$(basename "$(ls routes/*.toml | head -1)")" <<TOML

[store]
kind = "jetstream"
servers = [$servers_toml]
stream = "LABROUTE"
replicas = $servers
node = "$node"
TOML
    "$bin" serve --routes "$dir/$node/routes" --data "$dir/$node/data" >"$dir/$node.log" 2>&1 &
    pids+=($!)
    echo "labroute node $node: pid $!, MLLP 127.0.0.1:$((2575 + offset)), admin https://127.0.0.1:$((2580 + offset))"
done
echo "running; logs in $dir/. Ctrl-C stops everything."
wait
