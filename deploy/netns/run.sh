#!/usr/bin/env bash
# Scale-out on one machine, in network namespaces: a client, an L4 balancer (haproxy, mode tcp,
# send-proxy-v2), three tlsvisor instances (proxy protocol, --accept-proxy v2) and an upstream
# (a recording haproxy that reads tlsvisor's PROXY v2 header and logs the client address it
# names, in front of redis-server), each in a namespace of its own, joined by veth pairs.
# Nothing leaves the namespaces this script creates (private 10.12.0.0/16 addresses, no default
# route, no forwarding to the host).
#
#   client 10.12.0.2 ──veth── 10.12.0.1 balancer: haproxy :443, send-proxy-v2,
#                                 │       httpchk GET /health/ready on each admin port
#                                 │ bridge 10.12.1.1/24
#                  ┌──────────────┼───────────────┬────────────────┐
#          app1 10.12.1.11   app2 10.12.1.12   app3 10.12.1.13   upstream 10.12.1.100:6379
#          tlsvisor :8443    tlsvisor :8443    tlsvisor :8443    haproxy accept-proxy, logs %ci
#          admin :9091       admin :9091       admin :9091         └ redis-server 127.0.0.1:6379
#
# It measures the throughput of redis-benchmark --tls through 1, 2 and 3 instances and checks:
# requests spread over the instances; a TLS session made on one instance resumes on the others
# (a shared --ticket-key-file); the upstream sees the client's own address (PROXY v2 from the
# balancer to tlsvisor, and from tlsvisor to the upstream); a rolling restart of every instance
# (POST /drain: readiness 503 and the balancer's health check takes it out, SIGTERM, start
# again, back in once ready) and an in-place SIGUSR2 upgrade of every instance fail no request;
# SIGKILL of one instance fails only the requests in flight on it. It prints its figures and
# exits non-zero if a check fails.
#
# Usage (root): deploy/netns/run.sh [path/to/tlsvisor]   (default: target/release/tlsvisor)
# Bounded: every step has a timeout and the whole run is killed after LIMIT seconds (default
# 240); the namespaces, processes and files are removed on exit whatever happens.
set -euo pipefail
cd "$(dirname "$0")/../.."
LIMIT="${LIMIT:-240}"
# The whole run is bounded: past LIMIT, timeout sends SIGTERM and the EXIT trap cleans up.
if [ -z "${RUN_SH_BOUNDED:-}" ]; then
  RUN_SH_BOUNDED=1 exec timeout -k 20 "$LIMIT" "$0" "$@"
fi

BIN="$(realpath "${1:-${CARGO_TARGET_DIR:-target}/release/tlsvisor}")"
REQUESTS="${REQUESTS:-60000}"    # per redis-benchmark run
# How long a draining instance goes on accepting after its readiness turns 503: the balancer's
# health check interval (300 ms) and then some. 0s shows what a drain that pauses at once costs.
DRAIN_ACCEPT_FOR="${DRAIN_ACCEPT_FOR:-1s}"
CA="$PWD/certs/ca.crt"
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (network namespaces)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "run.sh: no binary at $BIN (cargo build --release)" >&2; exit 2; }
for tool in haproxy redis-server redis-cli redis-benchmark python3 curl ip openssl; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing" >&2; exit 2; }
done

P="tv$$"                          # a prefix unique to this run: names never clash with others
NS_CLIENT="${P}-client" NS_LB="${P}-lb" NS_UP="${P}-up"
APPS=(1 2 3)
WORK="$(mktemp -d)"

cleanup() {
  set +e
  exec 2>/dev/null  # the shell's notes about the jobs killed below
  # Every process this run started lives in one of its namespaces: end them by pid.
  for ns in "$NS_CLIENT" "$NS_LB" "$NS_UP" "${APPS[@]/#/${P}-app}"; do
    pids="$(ip netns pids "$ns" 2>/dev/null)"
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  done
  sleep 0.2
  for ns in "$NS_CLIENT" "$NS_LB" "$NS_UP" "${APPS[@]/#/${P}-app}"; do
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted or over the ${LIMIT}s limit" >&2; exit 130' INT TERM

in_ns() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }
say() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; FAILED=1; }
FAILED=0
STARTED=$SECONDS

# --- the network ---------------------------------------------------------------------------
for ns in "$NS_CLIENT" "$NS_LB" "$NS_UP" "${APPS[@]/#/${P}-app}"; do
  ip netns add "$ns"
  in_ns "$ns" ip link set lo up
done
ip link add "${P}c0" type veth peer name "${P}c1"
ip link set "${P}c0" netns "$NS_LB"
ip link set "${P}c1" netns "$NS_CLIENT"
in_ns "$NS_LB" ip addr add 10.12.0.1/24 dev "${P}c0"
in_ns "$NS_LB" ip link set "${P}c0" up
in_ns "$NS_CLIENT" ip addr add 10.12.0.2/24 dev "${P}c1"
in_ns "$NS_CLIENT" ip link set "${P}c1" up
in_ns "$NS_LB" ip link add br0 type bridge
in_ns "$NS_LB" ip addr add 10.12.1.1/24 dev br0
in_ns "$NS_LB" ip link set br0 up
attach() { # namespace, address: a veth from the balancer's bridge into the namespace
  local ns="$1" addr="$2" end="${P}$3"
  ip link add "$end" type veth peer name "${end}p"
  ip link set "$end" netns "$NS_LB"
  ip link set "${end}p" netns "$ns"
  in_ns "$NS_LB" ip link set "$end" master br0 up
  in_ns "$ns" ip link set "${end}p" name eth0
  in_ns "$ns" ip addr add "$addr/24" dev eth0
  in_ns "$ns" ip link set eth0 up
}
attach "$NS_UP" 10.12.1.100 r
for i in "${APPS[@]}"; do attach "${P}-app$i" "10.12.1.1$i" "a$i"; done

# --- the upstream --------------------------------------------------------------------------
# redis on its namespace's loopback, reached only through a haproxy that reads the PROXY v2
# header tlsvisor sends (accept-proxy) and logs the client address it names (%ci), one line
# per connection: what the upstream believes its clients' addresses are.
ip netns exec "$NS_UP" redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
  --logfile "$WORK/redis.log" --daemonize no &
cat >"$WORK/upstream.cfg" <<EOF
global
  maxconn 8000
  nbthread 1
  log stdout format raw local0
defaults
  mode tcp
  log global
  option logasap
  log-format "client=%ci"
  timeout connect 2s
  timeout client 60s
  timeout server 60s
frontend redis
  bind 10.12.1.100:6379 accept-proxy
  default_backend redis
backend redis
  server redis 127.0.0.1:6379
EOF
ip netns exec "$NS_UP" haproxy -f "$WORK/upstream.cfg" -db >"$WORK/upstream.log" 2>"$WORK/upstream.err" &

# --- the instances -------------------------------------------------------------------------
# One ticket key for every instance: a session made on one resumes on the others.
openssl rand -hex 48 >"$WORK/tickets.key"
chmod 600 "$WORK/tickets.key"

start_app() { # i: start tlsvisor in its namespace (proxy to the upstream, one worker)
  local i="$1"
  # `ip netns exec` execs the program: $! is tlsvisor's own pid (a shell function run in the
  # background would be a subshell, and a signal to it would miss the server).
  # --accept-proxy-from: only the balancer must send a header, and the clients it names (not
  # the balancer) count against the per-IP limits; --proxy-protocol v2 hands the client's
  # address on to the upstream.
  # --cert/--key: the development certificate as files (clients trust certs/ca.crt); the
  # built-in one is served on loopback addresses only.
  ip netns exec "${P}-app$i" "$BIN" serve --listen "10.12.1.1$i:8443" --protocol proxy \
    --cert "$PWD/certs/server.crt" --key "$PWD/certs/server.key" \
    --upstream 10.12.1.100:6379 --proxy-protocol v2 \
    --accept-proxy v2 --accept-proxy-from 10.12.1.1/32 \
    --ticket-key-file "$WORK/tickets.key" --admin-listen "10.12.1.1$i:9091" \
    --max-connections-per-ip 200 --workers 1 --shutdown-grace 5s --log-level warn \
    >>"$WORK/app$i.log" 2>&1 &
  echo $! >"$WORK/app$i.pid"
}
admin() { # i path [curl args]: a request to instance i's admin API, from the balancer
  local i="$1" path="$2"; shift 2
  in_ns "$NS_LB" curl -s --max-time 2 "$@" "http://10.12.1.1$i:9091$path"
}
metric() { # i name: one sample of instance i's metrics (0 if absent)
  admin "$1" /metrics | awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }'
}
wait_app() { # i: until its readiness answers 200 (it accepts by then)
  for _ in $(seq 100); do
    [ "$(admin "$1" /health/ready -o /dev/null -w '%{http_code}')" = 200 ] && return 0
    sleep 0.05
  done
  fail "app$1 did not become ready"; return 1
}
for i in "${APPS[@]}"; do start_app "$i"; done
for i in "${APPS[@]}"; do wait_app "$i"; done

# --- the balancer --------------------------------------------------------------------------
cat >"$WORK/haproxy.cfg" <<EOF
global
  maxconn 8000
  nbthread 1
  stats socket $WORK/haproxy.sock level admin
defaults
  mode tcp
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  # A connection refused by a stopped or killed instance is retried on another one.
  retries 3
  option redispatch
frontend tls
  bind 10.12.0.1:443
  default_backend apps
backend apps
  balance roundrobin
  # Each instance says whether it should get clients: 503 from the instant a drain or a
  # shutdown starts. The check goes to the admin port (without a PROXY header: "port" turns
  # it off for checks); the traffic starts with a PROXY v2 header naming the client.
  option httpchk GET /health/ready
  http-check expect status 200
$(for i in "${APPS[@]}"; do echo "  server app$i 10.12.1.1$i:8443 send-proxy-v2 check port 9091 inter 300ms fall 1 rise 2"; done)
EOF
ip netns exec "$NS_LB" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
hap() { # a runtime API command
  python3 - "$WORK/haproxy.sock" "$*" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall((sys.argv[2] + "\n").encode())
out = b""
while True:
    chunk = s.recv(65536)
    if not chunk: break
    out += chunk
sys.stdout.write(out.decode())
PY
}
for _ in $(seq 100); do [ -S "$WORK/haproxy.sock" ] && break; sleep 0.05; done
[ -S "$WORK/haproxy.sock" ] || { cat "$WORK/haproxy.log"; echo "run.sh: haproxy did not start" >&2; exit 1; }
status() { # i: haproxy's view of instance i (UP, DOWN, MAINT, "UP 1/2", ...)
  hap "show stat" | awk -F, -v s="app$1" '$1 == "apps" && $2 == s { print $18 }'
}
wait_status() { # i state: until haproxy sees instance i in that state (bounded: 5 s)
  for _ in $(seq 100); do [ "$(status "$1")" = "$2" ] && return 0; sleep 0.05; done
  fail "haproxy does not see app$1 $2 (it says $(status "$1"))"; return 1
}
for i in "${APPS[@]}"; do wait_status "$i" UP; done
only() { # n...: these instances take traffic, the others are in maintenance
  for i in "${APPS[@]}"; do
    if [[ " $* " == *" $i "* ]]; then hap "set server apps/app$i state ready" >/dev/null
    else hap "set server apps/app$i state maint" >/dev/null; fi
  done
  for i in "$@"; do wait_status "$i" UP; done
}

bench() { # redis-benchmark --tls through the balancer; prints requests per second (SET+GET)
  in_ns "$NS_CLIENT" timeout 120 redis-benchmark --tls --cacert "$CA" --sni localhost \
    -h 10.12.0.1 -p 443 -c 50 -n "$REQUESTS" -t set,get -q 2>/dev/null |
    tr '\r' '\n' | awk '/requests per second/ { sum += $2; n++ } END { printf "%d", (n ? sum / n : 0) }'
}
cpu_ticks() { # utime+stime of every process in namespace $1
  local total=0
  for pid in $(ip netns pids "$1"); do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
key() { in_ns "$NS_UP" redis-cli -h 127.0.0.1 GET "$1" | tr -d '\r'; }
load() { # seconds threads key: fresh-connection INCR loop through the balancer
  in_ns "$NS_CLIENT" timeout $(( $1 + 30 )) python3 deploy/netns/load.py 10.12.0.1 443 "$CA" "$3" "$1" "$2"
}
s_client() { # extra args: one TLS connection through the balancer sending a PING, s_client's output
  # stdin stays open 1.5 s: the answer and (TLS 1.3) the session ticket arrive after the
  # handshake, and s_client hangs up when its stdin ends.
  (printf 'PING\r\n'; sleep 1.5) | in_ns "$NS_CLIENT" timeout 10 openssl s_client \
    -connect 10.12.0.1:443 -CAfile "$CA" -servername localhost "$@" 2>&1
}

# --- throughput with 1, 2, 3 instances -----------------------------------------------------
say "throughput: redis-benchmark --tls -c 50 -n $REQUESTS -t set,get, keep-alive, $(nproc) cores"
declare -A RPS
for n in 1 2 3; do
  only $(seq "$n")
  declare -A before=()
  for ns in "$NS_CLIENT" "$NS_LB" "$NS_UP" "${APPS[@]/#/${P}-app}"; do before[$ns]=$(cpu_ticks "$ns"); done
  bytes_before=(); for i in "${APPS[@]}"; do bytes_before[$i]=$(metric "$i" tlsvisor_proxy_bytes_client_to_upstream_total); done
  RPS[$n]=$(bench)
  cpu=""
  for ns in "$NS_CLIENT" "$NS_LB" "$NS_UP" "${APPS[@]/#/${P}-app}"; do
    cpu+=" ${ns#"${P}-"}=$(( $(cpu_ticks "$ns") - before[$ns] ))"
  done
  spread=""
  for i in "${APPS[@]}"; do
    spread+=" app$i=$(( $(metric "$i" tlsvisor_proxy_bytes_client_to_upstream_total) - bytes_before[$i] ))"
  done
  printf '%d instance(s): %s requests/s   cpu ticks (1/100 s):%s   bytes to the upstream:%s\n' \
    "$n" "${RPS[$n]}" "$cpu" "$spread"
  [ "${RPS[$n]}" -gt 0 ] || fail "redis-benchmark through $n instance(s) got no answer"
  if [ "$n" = 3 ]; then
    for i in "${APPS[@]}"; do
      [ "$(( $(metric "$i" tlsvisor_proxy_bytes_client_to_upstream_total) - bytes_before[$i] ))" -gt 0 ] ||
        fail "app$i got no requests with 3 instances"
    done
  fi
done

# --- resumption across instances (the shared ticket key) -----------------------------------
say "TLS resumption across instances: a session from app1, resumed through app2 and app3"
only 1
s_client -sess_out "$WORK/session.pem" >"$WORK/s_client1.out"
first="$(grep -Eo '^(New|Reused),' "$WORK/s_client1.out" | head -1)"
resumed=""
for i in 2 3; do
  only "$i"   # the session made on app1 is offered to app$i alone
  s_client -sess_in "$WORK/session.pem" >"$WORK/s_client$i.out"
  resumed+=" app$i=$(grep -Eo '^(New|Reused),' "$WORK/s_client$i.out" | head -1 | tr -d ,)"
  grep -q '^+PONG' "$WORK/s_client$i.out" || fail "no PONG through app$i"
done
echo "session made on app1: ${first%,}; offered to the others:$resumed"
[ "${first%,}" = New ] || { fail "the first s_client did not make a new session"; tail -5 "$WORK/s_client1.out"; }
[ "$resumed" = " app2=Reused app3=Reused" ] ||
  { fail "the session did not resume on the other instances"; tail -5 "$WORK"/s_client[23].out; }
only "${APPS[@]}"

# --- rolling restart -----------------------------------------------------------------------
say "rolling restart (POST /drain?accept_for=$DRAIN_ACCEPT_FOR, health check out, SIGTERM, start, back in) under a fresh-connection INCR loop (8 threads)"
load 10 8 rolling >"$WORK/rolling.out" 2>"$WORK/rolling.err" &
LOAD=$!
sleep 1.5
for i in "${APPS[@]}"; do
  t0=$SECONDS
  # Readiness 503 at once; tlsvisor goes on accepting for DRAIN_ACCEPT_FOR (what haproxy
  # sends before its next check is served), then pauses and asks what is left to close.
  answer="$(admin "$i" "/drain?accept_for=$DRAIN_ACCEPT_FOR&period=1s" -X POST -o /dev/null -w '%{http_code}')"
  [ "$answer" = 202 ] || fail "app$i: POST /drain answered $answer"
  wait_status "$i" DOWN
  for _ in $(seq 100); do [ "$(metric "$i" tlsvisor_connections_active)" = 0 ] && break; sleep 0.05; done
  pid="$(cat "$WORK/app$i.pid")"
  kill -TERM "$pid"
  rc=0; wait "$pid" || rc=$?
  [ "$rc" = 0 ] || fail "app$i exited $rc after SIGTERM"
  start_app "$i"
  wait_app "$i"
  wait_status "$i" UP     # rise 2: two good checks
  echo "app$i restarted and back in after $(( SECONDS - t0 )) s"
done
wait "$LOAD"
rolling="$(cat "$WORK/rolling.out")"
echo "rolling restart: $rolling; redis counted $(key rolling) INCRs"
case "$rolling" in *" failed=0 "*) ;; *) fail "requests failed during the rolling restart"; sort "$WORK/rolling.err" | uniq -c | head ;; esac

# --- in-place upgrade of every instance (SIGUSR2), without the balancer's help -------------
say "SIGUSR2 upgrade of every instance in place under the same loop"
load 12 8 upgraded >"$WORK/upgrade.out" 2>"$WORK/upgrade.err" &
LOAD=$!
sleep 1.5
for i in "${APPS[@]}"; do
  pid="$(cat "$WORK/app$i.pid")"
  kill -USR2 "$pid"
  # The old process exits 0 once the new one (its child, same sockets) is ready and it drained.
  rc=0; wait "$pid" || rc=$?
  [ "$rc" = 0 ] || fail "app$i: the old process exited $rc after SIGUSR2"
  new="$(ip netns pids "${P}-app$i" | head -1)"
  [ -n "$new" ] || fail "app$i: no process after the upgrade"
  echo "${new:-0}" >"$WORK/app$i.pid"
  sleep 0.3
done
wait "$LOAD"
upgraded="$(cat "$WORK/upgrade.out")"
echo "upgrade: $upgraded; redis counted $(key upgraded) INCRs"
case "$upgraded" in *" failed=0 "*) ;; *) fail "requests failed during the upgrades"; sort "$WORK/upgrade.err" | uniq -c | head ;; esac
for i in "${APPS[@]}"; do wait_status "$i" UP; done

# --- SIGKILL of one instance ---------------------------------------------------------------
say "SIGKILL of app2 under the same loop"
load 5 8 killed >"$WORK/kill.out" 2>"$WORK/kill.err" &
LOAD=$!
sleep 2
inflight="$(metric 2 tlsvisor_connections_active)"
kill -KILL "$(cat "$WORK/app2.pid")"
wait "$LOAD"
killed="$(cat "$WORK/kill.out")"
echo "SIGKILL: $killed; connections open on app2 when killed: $inflight; redis counted $(key killed) INCRs"
failed="$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' <<<"$killed")"
[ "${failed:-99}" -le 8 ] || fail "more failures ($failed) than requests in flight (8 threads)"
sort "$WORK/kill.err" | uniq -c | head -5

# --- the addresses the upstream saw ---------------------------------------------------------
# Each line of the recording hop is one of three kinds:
# - `client=A`: a PROXY header was read and named A. A must be the client's own address; any
#   other is a header that names the wrong client, whatever happened around it.
# - `10.12.1.12:port [...] ...: Connection closed while waiting for PROXY protocol header`: an
#   instance connected upstream and died before it wrote the header. Only the SIGKILL of app2
#   can do that (every other stop drains), and at most once per connection it had in flight
#   (8 load threads), so exactly those lines are allowed.
# - anything else (a garbled or truncated header, a connection error from another instance):
#   a failure.
say "client addresses the upstream saw (from tlsvisor's PROXY v2 header)"
sed -E 's/:[0-9]+ \[[^]]*\]//' "$WORK/upstream.log" | sort | uniq -c | sed 's/^/  /'
killed_re='^10\.12\.1\.12:[0-9]+ \[[^]]*\] [^ ]+: Connection closed while waiting for PROXY protocol header$'
mine="$(grep -c '^client=10\.12\.0\.2$' "$WORK/upstream.log" || true)"
wrong="$(grep '^client=' "$WORK/upstream.log" | grep -c -v '^client=10\.12\.0\.2$' || true)"
cut_by_kill="$(grep -c -E "$killed_re" "$WORK/upstream.log" || true)"
other="$(grep -v '^client=' "$WORK/upstream.log" | grep -c -v -E "$killed_re" || true)"
echo "from the client's address: $mine; naming another client: $wrong; cut short by app2's SIGKILL: $cut_by_kill; other lines: $other"
[ "$mine" -gt 0 ] || fail "the upstream saw no connection from the client's address"
[ "$wrong" = 0 ] ||
  { fail "the upstream saw $wrong headers naming another address than the client's"; grep '^client=' "$WORK/upstream.log" | grep -v '^client=10\.12\.0\.2$' | head -5; }
[ "$cut_by_kill" -le 8 ] || fail "$cut_by_kill upstream connections of app2 ended without a header: more than the 8 a SIGKILL can cut short"
[ "$other" = 0 ] ||
  { fail "the upstream logged $other lines that are neither a header nor app2's SIGKILL"; grep -v '^client=' "$WORK/upstream.log" | grep -v -E "$killed_re" | head -5; }

say "result: $([ "$FAILED" = 0 ] && echo ok || echo FAILED) in $(( SECONDS - STARTED )) s"
exit "$FAILED"
