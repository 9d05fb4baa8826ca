#!/usr/bin/env bash
# What an idle connection holds, allocation by allocation: the release tlsvisor under heaptrack
# (echo, or proxy to a redis-server on loopback), N Python TLS clients that each send one
# request, read the answer and stay connected, then the heap at its peak (the N idle
# connections) grouped by call stack, in bytes per connection, with the server's RSS and
# anonymous memory per connection from /proc/PID/smaps_rollup. On demand (root; needs
# heaptrack, redis-server for proxy, python3):
#   benches/idle_heap.sh [echo|proxy] [N]
# The sizes are what was asked of malloc; glibc adds 8-16 bytes to each.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-proxy}
N=${2:-2000}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cargo build -q --release --bin tlsvisor

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
args=(--protocol echo)
if [ "$MODE" = proxy ]; then
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
  pids+=($!)
  args=(--protocol proxy --upstream "127.0.0.1:$redis_port")
fi
heaptrack -o "$work/heap" target/release/tlsvisor serve "${args[@]}" --listen "127.0.0.1:$port" \
  --cert certs/server.crt --key certs/server.key --max-connections 50000 --idle-timeout 0 \
  --log-level warn >/dev/null 2>&1 &
pids+=($!); wrapper=$!
for _ in $(seq 150); do ss -ltnpH "sport = :$port" | grep -q pid= && break; sleep 0.1; done
server=$(ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2)

python3 - "$port" "$N" "$server" "$MODE" <<'PY'
import resource, socket, ssl, sys, time
port, n, pid, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
ctx = ssl.create_default_context(cafile="certs/ca.crt")
def memory():
    fields = dict(l.split(":", 1) for l in open(f"/proc/{pid}/smaps_rollup") if ":" in l)
    return {k: int(fields[k].split()[0]) for k in ("Rss", "Anonymous")}
time.sleep(0.3)
before, conns = memory(), []
for _ in range(n):
    tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    if mode == "proxy":
        tls.sendall(b"PING\r\n"); assert tls.recv(64) == b"+PONG\r\n"
    else:
        tls.sendall(b"hello\n"); got = b""
        while len(got) < 6: got += tls.recv(64)
    conns.append(tls)
time.sleep(1.0)
after = memory()
print(f"{mode}, {n} idle connections: " + ", ".join(
    f"{k} {(after[k] - before[k]) / n:.2f} KiB per connection" for k in after))
for c in conns: c.close()
PY
kill -TERM "$server"; wait "$wrapper" || true

heaptrack_print -f "$work/heap.zst" --print-peaks 1 --print-allocators 0 --print-temporary 0 \
  --print-leaks 0 --merge-backtraces 0 --peak-limit 80 --sub-peak-limit 0 2>/dev/null \
  | python3 -c '
import re, sys
n = int(sys.argv[1])
units = {"K": 1e3, "M": 1e6, "G": 1e9}
blocks = sys.stdin.read().split(" peak memory consumed over ")
total = 0
for prev, body in zip(blocks, blocks[1:]):
    size = prev.split()[-1]
    calls = int(body.split()[0])
    if calls < n * 0.9:
        continue  # not one per connection
    per = (float(size[:-1]) * units[size[-1]] if size[-1] in units else float(size.rstrip("B"))) / n
    frames = [l.strip() for l in body.splitlines()[1:] if l.startswith("  ") and not l.startswith("    ")]
    def readable(f):
        for a, b in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$C$", ","), ("$u7b$", "{"),
                     ("$u7d$", "}"), ("..", "::")):
            f = f.replace(a, b)
        return re.sub(r"::h[0-9a-f]{16}$", "", f)
    frames = [readable(f) for f in frames
              if not re.match(r"(_RNv|_RIN|alloc::|core::|std::|__rust|_\$LT\$alloc|_\$LT\$core)", f)]
    total += per
    print(f"{per:6.0f}  " + "  <  ".join(frames[:3])[:200])
print(f"{total:6.0f}  bytes per connection in all")
' "$N"
