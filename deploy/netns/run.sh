#!/usr/bin/env bash
# Scale-out on one machine, in network namespaces: a client, an L4 balancer (haproxy, mode tcp),
# three tlsvisor instances (proxy protocol) and a redis upstream, each in a namespace of its own,
# joined by veth pairs. Nothing leaves the namespaces this script creates (private 10.12.0.0/16
# addresses, no default route, no forwarding to the host).
#
#   client 10.12.0.2 ──veth── 10.12.0.1 balancer (haproxy :443)
#                                 │ bridge 10.12.1.1/24
#                  ┌──────────────┼───────────────┬────────────────┐
#          app1 10.12.1.11   app2 10.12.1.12   app3 10.12.1.13   redis 10.12.1.100:6379
#          tlsvisor :8443    tlsvisor :8443    tlsvisor :8443
#
# It measures the throughput of redis-benchmark --tls through 1, 2 and 3 instances, checks that
# requests spread over the instances, that a rolling restart of every instance (drain in haproxy,
# SIGTERM, start again, back in) fails no request, and that SIGKILL of one instance fails only the
# requests in flight on it. It prints its figures, exits non-zero if a check fails.
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
REQUESTS="${REQUESTS:-100000}"   # per redis-benchmark run
CA="$PWD/certs/ca.crt"
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (network namespaces)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "run.sh: no binary at $BIN (cargo build --release)" >&2; exit 2; }
for tool in haproxy redis-server redis-cli redis-benchmark python3 curl ip; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing" >&2; exit 2; }
done

P="tv$$"                          # a prefix unique to this run: names never clash with others
NS_CLIENT="${P}-client" NS_LB="${P}-lb" NS_REDIS="${P}-redis"
APPS=(1 2 3)
WORK="$(mktemp -d)"

cleanup() {
  set +e
  exec 2>/dev/null  # the shell's notes about the jobs killed below
  # Every process this run started lives in one of its namespaces: end them by pid.
  for ns in "$NS_CLIENT" "$NS_LB" "$NS_REDIS" "${APPS[@]/#/${P}-app}"; do
    pids="$(ip netns pids "$ns" 2>/dev/null)"
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  done
  sleep 0.2
  for ns in "$NS_CLIENT" "$NS_LB" "$NS_REDIS" "${APPS[@]/#/${P}-app}"; do
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

# --- the network ---------------------------------------------------------------------------
for ns in "$NS_CLIENT" "$NS_LB" "$NS_REDIS" "${APPS[@]/#/${P}-app}"; do
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
attach "$NS_REDIS" 10.12.1.100 r
for i in "${APPS[@]}"; do attach "${P}-app$i" "10.12.1.1$i" "a$i"; done

# --- the programs --------------------------------------------------------------------------
ip netns exec "$NS_REDIS" redis-server --bind 10.12.1.100 --port 6379 --save '' --appendonly no \
  --protected-mode no --logfile "$WORK/redis.log" --daemonize no &

start_app() { # i: start tlsvisor in its namespace (proxy to redis, one worker)
  local i="$1"
  # `ip netns exec` execs the program: $! is tlsvisor's own pid (a shell function run in the
  # background would be a subshell, and a signal to it would miss the server).
  ip netns exec "${P}-app$i" "$BIN" serve --listen "10.12.1.1$i:8443" --protocol proxy \
    --upstream 10.12.1.100:6379 --metrics-listen "10.12.1.1$i:9090" --workers 1 \
    --shutdown-grace 5s --log-level warn >>"$WORK/app$i.log" 2>&1 &
  echo $! >"$WORK/app$i.pid"
}
metric() { # i name: one sample of instance i's metrics (0 if absent)
  in_ns "$NS_LB" curl -s --max-time 2 "http://10.12.1.1$1:9090/metrics" |
    awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }'
}
wait_app() { # i: until its metrics answer (it accepts by then)
  for _ in $(seq 100); do
    in_ns "$NS_LB" curl -s --max-time 1 -o /dev/null "http://10.12.1.1$1:9090/metrics" && return 0
    sleep 0.05
  done
  fail "app$1 did not start"; return 1
}
for i in "${APPS[@]}"; do start_app "$i"; done
for i in "${APPS[@]}"; do wait_app "$i"; done

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
  # tlsvisor cannot read PROXY headers yet (--accept-proxy is issue 11), so no send-proxy-v2,
  # and the health check is a TCP connect (no admin API with /health/ready yet).
$(for i in "${APPS[@]}"; do echo "  server app$i 10.12.1.1$i:8443 check inter 300ms fall 2 rise 1"; done)
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
up_count() { hap "show stat" | awk -F, '$1 == "apps" && $2 ~ /^app/ && $18 == "UP"' | wc -l; }
for _ in $(seq 100); do [ "$(up_count)" = 3 ] && break; sleep 0.1; done
[ "$(up_count)" = 3 ] || fail "haproxy does not see 3 instances UP"

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
key() { in_ns "$NS_REDIS" redis-cli -h 10.12.1.100 GET "$1" | tr -d '\r'; }
load() { # seconds threads key: fresh-connection INCR loop through the balancer
  in_ns "$NS_CLIENT" timeout $(( $1 + 30 )) python3 deploy/netns/load.py 10.12.0.1 443 "$CA" "$3" "$1" "$2"
}

# --- throughput with 1, 2, 3 instances -----------------------------------------------------
say "throughput: redis-benchmark --tls -c 50 -n $REQUESTS -t set,get, keep-alive, $(nproc) cores"
declare -A RPS
for n in 1 2 3; do
  for i in "${APPS[@]}"; do
    if [ "$i" -le "$n" ]; then hap "set server apps/app$i state ready" >/dev/null
    else hap "set server apps/app$i state maint" >/dev/null; fi
  done
  declare -A before=()
  for ns in "$NS_CLIENT" "$NS_LB" "$NS_REDIS" "${APPS[@]/#/${P}-app}"; do before[$ns]=$(cpu_ticks "$ns"); done
  bytes_before=(); for i in "${APPS[@]}"; do bytes_before[$i]=$(metric "$i" tlsvisor_proxy_bytes_client_to_upstream_total); done
  RPS[$n]=$(bench)
  cpu=""
  for ns in "$NS_CLIENT" "$NS_LB" "$NS_REDIS" "${APPS[@]/#/${P}-app}"; do
    cpu+=" ${ns#"${P}-"}=$(( $(cpu_ticks "$ns") - before[$ns] ))"
  done
  spread=""
  for i in "${APPS[@]}"; do
    spread+=" app$i=$(( $(metric "$i" tlsvisor_proxy_bytes_client_to_upstream_total) - bytes_before[$i] ))"
  done
  printf '%d instance(s): %s requests/s   cpu ticks (1/100 s):%s   bytes to redis:%s\n' \
    "$n" "${RPS[$n]}" "$cpu" "$spread"
  if [ "$n" = 3 ]; then
    for i in "${APPS[@]}"; do
      [ "$(( $(metric "$i" tlsvisor_proxy_bytes_client_to_upstream_total) - bytes_before[$i] ))" -gt 0 ] ||
        fail "app$i got no requests with 3 instances"
    done
  fi
done
for i in "${APPS[@]}"; do hap "set server apps/app$i state ready" >/dev/null; done

# --- rolling restart -----------------------------------------------------------------------
say "rolling restart of every instance under a fresh-connection INCR loop (8 threads)"
load 12 8 rolling >"$WORK/rolling.out" 2>"$WORK/rolling.err" &
LOAD=$!
sleep 1.5
for i in "${APPS[@]}"; do
  hap "set server apps/app$i state drain" >/dev/null
  # haproxy sends it nothing new; wait for what it has to finish.
  for _ in $(seq 100); do [ "$(metric "$i" tlsvisor_connections_active)" = 0 ] && break; sleep 0.05; done
  pid="$(cat "$WORK/app$i.pid")"
  kill -TERM "$pid"
  rc=0; wait "$pid" || rc=$?
  [ "$rc" = 0 ] || fail "app$i exited $rc after SIGTERM"
  start_app "$i"
  wait_app "$i"
  hap "set server apps/app$i state ready" >/dev/null
  sleep 0.7   # one check interval and some traffic on the new instance before the next
done
wait "$LOAD"
rolling="$(cat "$WORK/rolling.out")"
echo "rolling restart: $rolling; redis counted $(key rolling) INCRs"
case "$rolling" in *" failed=0 "*) ;; *) fail "requests failed during the rolling restart"; cat "$WORK/rolling.err" | sort | uniq -c | head ;; esac

# --- in-place upgrade of every instance (SIGUSR2), without the balancer's help -------------
say "SIGUSR2 upgrade of every instance in place (no drain in haproxy) under the same loop"
load 14 8 upgraded >"$WORK/upgrade.out" 2>"$WORK/upgrade.err" &
LOAD=$!
sleep 1.5
for i in "${APPS[@]}"; do
  pid="$(cat "$WORK/app$i.pid")"
  kill -USR2 "$pid"
  # The old process exits 0 once the new one (its child, same socket) is ready and it drained.
  rc=0; wait "$pid" || rc=$?
  [ "$rc" = 0 ] || fail "app$i: the old process exited $rc after SIGUSR2"
  new="$(ip netns pids "${P}-app$i" | head -1)"
  [ -n "$new" ] || fail "app$i: no process after the upgrade"
  echo "${new:-0}" >"$WORK/app$i.pid"
  sleep 0.5
done
wait "$LOAD"
upgraded="$(cat "$WORK/upgrade.out")"
echo "upgrade: $upgraded; redis counted $(key upgraded) INCRs"
case "$upgraded" in *" failed=0 "*) ;; *) fail "requests failed during the upgrades"; sort "$WORK/upgrade.err" | uniq -c | head ;; esac

# --- SIGKILL of one instance ---------------------------------------------------------------
say "SIGKILL of app2 under the same loop"
load 6 8 killed >"$WORK/kill.out" 2>"$WORK/kill.err" &
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

say "result: $([ "$FAILED" = 0 ] && echo ok || echo FAILED)"
exit "$FAILED"
