#!/usr/bin/env bash
# What passthrough costs per connection: the CPU (utime + stime from /proc, 10 ms ticks) of the
# front while `openssl s_time -new` makes full TLS handshakes through it, one connection after
# another (connect, ClientHello, the handshake with the backend, a few bytes, close), for
# `tlsvisor --protocol passthrough --workers 1` and, if nginx has the stream module, for nginx's
# `ssl_preread` (worker_processes 1) in front of the same backend (a release tlsvisor echo,
# not measured). On demand:
#   benches/passthrough_cost.sh [SECONDS]
# Needs openssl, python3; nginx with the stream module is optional. Builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-20}
cargo build -q --release --bin tlsvisor
bin=${CARGO_TARGET_DIR:-target}/release/tlsvisor
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { local sum=0; for p in "$@"; do sum=$(( sum + $(awk '{print $14 + $15}' "/proc/$p/stat") )); done; echo "$sum"; }
wait_port() { for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }

# Drives full handshakes through 127.0.0.1:$1 for SECONDS_EACH, measuring the CPU of pids
# $2...; prints connections, ticks and µs of CPU per connection.
measure() {
  local port=$1; shift
  local before after out conns
  before=$(ticks "$@")
  out=$(openssl s_time -connect "127.0.0.1:$port" -new -time "$SECONDS_EACH" -CAfile certs/ca.crt 2>&1 || true)
  after=$(ticks "$@")
  conns=$(echo "$out" | grep -oE '^[0-9]+ connections in' | head -1 | cut -d' ' -f1)
  if [ -z "$conns" ] || [ "$conns" = 0 ]; then echo "no connections: $out" >&2; exit 1; fi
  echo "$conns connections, $(( after - before )) ticks, $(( (after - before) * 10000 / conns )) µs CPU per connection"
}

backend=$(free_port)
"$bin" serve --listen "127.0.0.1:$backend" --workers 1 --log-level warn >/dev/null 2>&1 &
pids+=($!)
wait_port "$backend"

front=$(free_port)
"$bin" serve --listen "127.0.0.1:$front" --protocol passthrough --upstream "127.0.0.1:$backend" \
  --workers 1 --log-level warn >/dev/null 2>&1 &
pids+=($!); tv=$!
wait_port "$front"
echo "tlsvisor passthrough: $(measure "$front" "$tv")"
echo "direct to the backend (no front): $(measure "$backend" "$tv") (the front's idle ticks)"
kill "$tv"

if nginx -V 2>&1 | grep -q -- '--with-stream'; then
  nginx_port=$(free_port)
  module=""
  [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] && module="load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
  cat >"$work/nginx.conf" <<EOF
$module
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 1024; }
stream {
  server {
    listen 127.0.0.1:$nginx_port;
    ssl_preread on;
    proxy_pass 127.0.0.1:$backend;
  }
}
EOF
  nginx -c "$work/nginx.conf" -p "$work" &
  pids+=($!); master=$!
  wait_port "$nginx_port"
  workers=$(pgrep -P "$master" | tr '\n' ' ')
  # shellcheck disable=SC2086 # one pid per word
  echo "nginx ssl_preread: $(measure "$nginx_port" "$master" $workers)"
else
  echo "nginx without the stream module: no comparison"
fi
echo "load average during the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
