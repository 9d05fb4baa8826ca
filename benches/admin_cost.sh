#!/usr/bin/env bash
# What the admin API costs: the release binary's CPU (utime + stime from /proc, 10 ms ticks)
# while idle with and without --admin-listen, and the time of GET /connections with 10,000
# live TLS connections, in one page of 10,000 and in pages of 100. On demand:
#   benches/admin_cost.sh [CONNECTIONS]
# Needs python3 and curl; builds the release binary first.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
ulimit -n "$(ulimit -Hn)"
cargo build -q --release --bin tlsvisor
bin=${CARGO_TARGET_DIR:-target}/release/tlsvisor
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
idle_ticks() { # pid seconds
  local before; before=$(ticks "$1"); sleep "$2"; echo $(( $(ticks "$1") - before ))
}

port=$(free_port); admin=$(free_port)
"$bin" serve --listen "127.0.0.1:$port" --cert certs/server.crt --key certs/server.key --workers 2 --max-connections $((N + 2000)) \
  --idle-timeout 0 --log-level warn >/dev/null 2>&1 &
pids+=($!); plain=$!
sleep 1
echo "idle 30 s without --admin-listen: $(idle_ticks "$plain" 30) ticks"
kill "$plain"

"$bin" serve --listen "127.0.0.1:$port" --cert certs/server.crt --key certs/server.key --workers 2 --max-connections $((N + 2000)) \
  --idle-timeout 0 --admin-listen "127.0.0.1:$admin" --log-level warn >/dev/null 2>&1 &
pids+=($!); server=$!
sleep 1
echo "idle 30 s with --admin-listen: $(idle_ticks "$server" 30) ticks"

# Hold N connections, each having echoed once, until told to stop.
python3 - "$port" "$N" "$work/held" <<'PY' &
import asyncio, ssl, sys, os
port, n, flag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile="certs/ca.crt")
async def one(sem):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        w.write(b"ping"); await w.drain(); await r.readexactly(4)
        return w
async def main():
    sem = asyncio.Semaphore(64)
    conns = await asyncio.gather(*(one(sem) for _ in range(n)))
    open(flag, "w").write(str(len(conns)))
    for _ in range(600):
        if not os.path.exists(flag):
            break
        await asyncio.sleep(0.5)
asyncio.run(main())
PY
pids+=($!)
for _ in $(seq 1 600); do [ -s "$work/held" ] && break; sleep 0.5; done
echo "live connections: $(cat "$work/held")"
sleep 2
echo "idle 20 s with $N live connections and --admin-listen: $(idle_ticks "$server" 20) ticks"

for i in 1 2 3; do
  before=$(ticks "$server")
  t=$(curl -s -o "$work/page" -w '%{time_total}' "127.0.0.1:$admin/connections?limit=10000")
  echo "GET /connections?limit=10000: ${t} s, $(( $(ticks "$server") - before )) ticks, $(wc -c <"$work/page") bytes"
done
for i in 1 2 3; do
  before=$(ticks "$server")
  t=$(curl -s -o /dev/null -w '%{time_total}' "127.0.0.1:$admin/connections?limit=100")
  echo "GET /connections?limit=100: ${t} s, $(( $(ticks "$server") - before )) ticks"
done
rm -f "$work/held"
