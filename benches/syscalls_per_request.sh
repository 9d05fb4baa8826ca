#!/usr/bin/env bash
# System calls per request: the release tlsvisor proxy against the bare tokio-rustls proxy of
# the peer harness, both in front of one redis-server on loopback, each traced with
# `strace -c -f` while `redis-benchmark -c 50 -t set,get -n N --tls` runs through it (after a
# first untraced run, so that the traced one pays no warm-up). On demand (root; needs strace,
# redis-server, redis-benchmark):
#   benches/syscalls_per_request.sh [N]
# Prints the calls per request, futex excluded (thread hand-offs inside the runtimes), and the
# calls per request of each kind; the connections' own start and end are in the count too
# (50 of them, against 2 N requests).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build -q --release --bin tlsvisor
cargo bench -q --bench peers --no-run 2>/dev/null
peers=$(ls -t target/release/deps/peers-* | grep -v '\.d$' | head -n 1)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids+=($!)

bench() { # port
  redis-benchmark --tls --cacert certs/ca.crt --sni localhost -h 127.0.0.1 -p "$1" -c 50 \
    -n "$N" -t set,get -q -P 1 >/dev/null 2>&1
}

measure() { # name pid port
  local out="$work/$1.strace"
  bench "$3"
  strace -c -f -q -o "$out" -p "$2" &
  local tracer=$!
  sleep 0.5
  bench "$3"
  sleep 0.5
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  awk -v n=$((2 * N)) -v who="$1" '$NF != "total" && $4 ~ /^[0-9]+$/ {
      c[$NF] = $4; if ($NF != "futex") t += $4 }
    END { printf "%-12s %5.2f system calls per request (futex excluded):", who, t / n;
      for (k in c) if (c[k] / n >= 0.005) printf " %s %.2f", k, c[k] / n; print "" }' "$out"
}

port=$(free_port)
target/release/tlsvisor serve --protocol proxy --upstream "127.0.0.1:$redis_port" \
  --listen "127.0.0.1:$port" --cert certs/server.crt --key certs/server.key \
  --idle-timeout 0 --log-level error 2>/dev/null &
pids+=($!); tls_pid=$!
bare_port=$(free_port)
"$peers" --bare-proxy "127.0.0.1:$bare_port" "127.0.0.1:$redis_port" certs/server.crt certs/server.key >/dev/null &
pids+=($!); bare_pid=$!
sleep 1
echo "redis-benchmark -c 50 -t set,get -n $N (2 x $N requests)"
measure tlsvisor "$tls_pid" "$port"
measure bare-rustls "$bare_pid" "$bare_port"
