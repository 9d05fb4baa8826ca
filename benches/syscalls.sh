#!/usr/bin/env bash
# System calls per proxied connection: the release tlsvisor proxy against the bare tokio-rustls
# proxy of the peer harness, both in front of one redis-server on loopback, each traced with
# `strace -c -f` while a Python ssl client makes N connections (full handshake, PING through
# the upstream, close_notify, close). On demand (root; needs strace, redis-server, python3):
#   benches/syscalls.sh [N]
# Builds the release binaries first. Prints the calls per connection, futex excluded (it
# counts thread hand-offs inside the runtimes, not work), and the per-call breakdown of both.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
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

client() { # port
  python3 - "$1" "$N" <<'PY'
import socket, ssl, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context(cafile="certs/ca.crt")
for _ in range(n):
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"PING\r\n")
            assert tls.recv(64) == b"+PONG\r\n"
            tls.unwrap()
PY
}

measure() { # name pid port
  local out="$work/$1.strace"
  strace -c -f -q -o "$out" -p "$2" &
  local tracer=$!
  sleep 0.5
  client "$3"
  sleep 0.5
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  local calls
  calls=$(awk '$NF != "futex" && $NF != "total" && $4 ~ /^[0-9]+$/ {c += $4} END {print c}' "$out")
  printf '%-12s %8.1f system calls per connection (futex excluded)\n' "$1" "$(echo "$calls / $N" | bc -l)"
  cp "$out" "target/syscalls-$1.txt"
}

port=$(free_port)
target/release/tlsvisor serve --protocol proxy --upstream "127.0.0.1:$redis_port" \
  --listen "127.0.0.1:$port" --log-level error 2>/dev/null &
pids+=($!); tls_pid=$!
bare_port=$(free_port)
"$peers" --bare-proxy "127.0.0.1:$bare_port" "127.0.0.1:$redis_port" certs/server.crt certs/server.key >/dev/null &
pids+=($!); bare_pid=$!
sleep 1
echo "$N connections each: handshake, PING, close_notify"
measure tlsvisor "$tls_pid" "$port"
measure bare-rustls "$bare_pid" "$bare_port"
echo "per-call breakdowns: target/syscalls-tlsvisor.txt, target/syscalls-bare-rustls.txt"
