#!/usr/bin/env bash
# Where a SIGKILL burst's time goes: the release tlsvisor proxy in front of redis-server holds
# N idle TLS clients (the peer harness's crowd), `perf record -g` samples it for 3 s while the
# crowd is SIGKILLed, and the report lists the hottest symbols, inclusive. On demand (root;
# needs perf, redis-server, ss):
#   benches/burst_perf.sh [N]
# Prints the time from the kill to no CLOSE-WAIT on the port (perf slows the server: compare
# runs of this script with each other, not with `cargo bench --bench peers`).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-9000}
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build -q --release --bin tlsvisor
cargo bench -q --bench peers --no-run 2>/dev/null
target=${CARGO_TARGET_DIR:-target}
peers=$(ls -t "$target"/release/deps/peers-* | grep -v '\.d$' | head -n 1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port); port=$(free_port)

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --maxclients $((N + 1000)) >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
"$target/release/tlsvisor" serve --protocol proxy --upstream "127.0.0.1:$redis_port" \
  --listen "127.0.0.1:$port" --cert certs/server.crt --key certs/server.key \
  --idle-timeout 0 --log-level warn >/dev/null 2>&1 &  # --max-connections: what the limit holds
server=$!; pids+=($server)
sleep 1
"$peers" --crowd "127.0.0.1:$port" "$N" certs/ca.crt >"$work/crowd" &
crowd=$!; pids+=($crowd)
for _ in $(seq 1 600); do grep -q READY "$work/crowd" && break; sleep 0.1; done
sleep 1
perf record -F 4999 -g -p "$server" -o "$work/perf.data" -- sleep 3 >/dev/null 2>&1 &
perf_pid=$!
sleep 0.3
start=$(date +%s%N)
kill -9 "$crowd"; wait "$crowd" 2>/dev/null || true
for _ in $(seq 1 5000); do
  [ "$(ss -Htan state close-wait "( sport = :$port )" | wc -l)" = 0 ] && break
  sleep 0.001
done
echo "$N SIGKILLed: no CLOSE-WAIT after $(( ($(date +%s%N) - start) / 1000000 )) ms (under perf)"
wait "$perf_pid"
perf report -i "$work/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%'
perf report -i "$work/perf.data" --children --sort symbol --stdio -g none 2>/dev/null \
  | grep '%' | head -n 40 | cut -c1-150
