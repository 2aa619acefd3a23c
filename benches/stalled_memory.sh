#!/usr/bin/env bash
# Memory of an instance whose record systems accept connections and never answer
# (RELIABILITY.md, peer faults): its RSS after N and after 3N results queued for them.
# A backlog lives in the store, not in the process: the two figures should be close.
# Then it stops the instance (SIGTERM) and starts it again on that backlog: the time until
# its listener accepts and until a message sent then is acknowledged, and its RSS.
#   bash benches/stalled_memory.sh [N] [path/to/labroute]
set -euo pipefail
n=${1:-20000}
bin=${2:-target/release/labroute}
[ -x "$bin" ] || { echo "no $bin: cargo build --release (or pass the binary)"; exit 2; }
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
silent=$(free_port); sil=$(free_port); lab=$(free_port)
# A record system that reads and never answers.
python3 - "$silent" <<'PY' &
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(64)
def hold(c):
    while c.recv(65536): pass
while True:
    c, _ = srv.accept(); threading.Thread(target=hold, args=(c,), daemon=True).start()
PY
mkdir -p "$dir/routes"
cat > "$dir/routes/r.toml" <<TOML
[engine]
idle_timeout_secs = 600
[[listener]]
name = "sil"
bind = "127.0.0.1:$sil"
insecure = true
[[destination]]
name = "sil"
address = "127.0.0.1:$lab"
insecure = true
[[destination]]
name = "dpi-es1"
address = "127.0.0.1:$silent"
insecure = true
ack_timeout_secs = 30
[[destination]]
name = "dpi-es2"
address = "127.0.0.1:$silent"
insecure = true
ack_timeout_secs = 30
[routing]
orders_to = ["sil"]
adt_to = ["sil"]
[[establishment]]
id = "ES1"
name = "Nordville"
record = "dpi-es1"
identify.patient_authorities = ["CHNORD-IPP"]
[[establishment]]
id = "ES2"
name = "Sudville"
record = "dpi-es2"
identify.patient_authorities = ["CHSUD-IPP"]
TOML
start() {
  LABROUTE_LOG=error "$bin" serve --routes "$dir/routes" --data "$dir/data" &
  pid=$!
  for _ in $(seq 3000); do (echo > /dev/tcp/127.0.0.1/$sil) 2>/dev/null && return; sleep 0.01; done
  echo "labroute did not start listening within 30 s"; exit 1
}
start
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
echo "start: RSS $(rss) kB"
"$bin" loadgen --to "127.0.0.1:$sil" --connections 8 --messages "$n" | tail -1
sleep 2; a=$(rss); echo "after $n queued: RSS $a kB ($(du -sk "$dir/data" | cut -f1) kB on disk)"
"$bin" loadgen --to "127.0.0.1:$sil" --connections 8 --messages $((2 * n)) | tail -1
sleep 2; b=$(rss); echo "after $((3 * n)) queued: RSS $b kB ($(du -sk "$dir/data" | cut -f1) kB on disk)"
python3 -c "print(f'RSS ratio (3N / N queued): {$b / $a:.2f}')"
kill -TERM "$pid"; wait "$pid" || true
t0=$(date +%s.%N); start; t1=$(date +%s.%N)
# Ready means acknowledging: one message sent and its ACK back.
"$bin" loadgen --to "127.0.0.1:$sil" --connections 1 --messages 1 > /dev/null; t2=$(date +%s.%N)
sleep 2
python3 -c "print(f'restart with $((3 * n)) queued: listening after {$t1 - $t0:.2f} s, first ACK after {$t2 - $t0:.2f} s, RSS $(rss) kB')"
