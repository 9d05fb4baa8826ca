#!/usr/bin/env bash
# Starts the peers tlsvisor is compared with, each a TLS front on 127.0.0.1 in front of a
# plaintext upstream, with the same certificate, in the foreground so the harness owns the pid.
#   peers.sh install
#   peers.sh start NAME LISTEN_PORT UPSTREAM_PORT CERT KEY WORKDIR   -> prints the server's pid
#   peers.sh stop PID
# NAME: stunnel | haproxy | hitch | nginx | redis-tls (redis's own TLS port; UPSTREAM ignored)
# Settings are what an operator would pick on a 2-core machine: 2 threads or processes where
# the server has the knob, room for 9,000+ connections (haproxy needs two descriptors per
# maxconn and the hard open-files limit here is 20,000), TLS 1.2 and 1.3, default ciphers,
# session resumption left on.
set -euo pipefail

cmd=${1:?usage: peers.sh install|start|stop}
shift

install() {
  export DEBIAN_FRONTEND=noninteractive
  local need=()
  for p in stunnel4 haproxy hitch nginx libnginx-mod-stream redis-server redis-tools; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  # Package installs may start the distribution's own services; the harness starts its own.
  for s in haproxy nginx hitch stunnel4; do
    service "$s" stop >/dev/null 2>&1 || true
  done
}

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on $1" >&2
  return 1
}

start() {
  local name=$1 port=$2 up=$3 cert=$4 key=$5 dir=$6
  mkdir -p "$dir"
  ulimit -n "$(ulimit -Hn)"
  local pem="$dir/combined.pem"
  cat "$key" "$cert" > "$pem"
  local pid
  case "$name" in
    stunnel)
      cat > "$dir/stunnel.conf" <<CONF
foreground = yes
pid =
debug = 3
output = $dir/stunnel.log
[tls]
accept = 127.0.0.1:$port
connect = 127.0.0.1:$up
cert = $cert
key = $key
sslVersionMin = TLSv1.2
CONF
      stunnel4 "$dir/stunnel.conf" >/dev/null 2>&1 &
      pid=$!
      ;;
    haproxy)
      cat > "$dir/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn 9700
  log stdout format raw local0 emerg
defaults
  mode tcp
  timeout connect 5s
  timeout client 10m
  timeout server 10m
  maxconn 9700
frontend tls
  bind 127.0.0.1:$port ssl crt $pem
  default_backend up
backend up
  server up1 127.0.0.1:$up
CONF
      haproxy -W -db -f "$dir/haproxy.cfg" >/dev/null 2>&1 &
      pid=$!
      ;;
    hitch)
      cat > "$dir/hitch.conf" <<CONF
frontend = "[127.0.0.1]:$port"
backend = "[127.0.0.1]:$up"
pem-file = "$pem"
workers = 2
daemon = off
user = "nobody"
group = "nogroup"
tls-protos = TLSv1.2 TLSv1.3
CONF
      chmod 644 "$pem"
      hitch --config="$dir/hitch.conf" >/dev/null 2>&1 &
      pid=$!
      ;;
    nginx)
      mkdir -p "$dir/logs"
      local module=/usr/lib/nginx/modules/ngx_stream_module.so
      cat > "$dir/nginx.conf" <<CONF
load_module $module;
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/logs/error.log crit;
events { worker_connections 19000; }
stream {
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:S:10m;
    proxy_pass 127.0.0.1:$up;
  }
}
CONF
      nginx -p "$dir" -c "$dir/nginx.conf" >/dev/null 2>&1 &
      pid=$!
      ;;
    redis-tls)
      redis-server --port 0 --tls-port "$port" --bind 127.0.0.1 \
        --tls-cert-file "$cert" --tls-key-file "$key" --tls-ca-cert-file "$cert" \
        --tls-auth-clients no --save '' --appendonly no --maxclients 60000 \
        >/dev/null 2>&1 &
      pid=$!
      ;;
    *)
      echo "unknown peer $name" >&2
      exit 2
      ;;
  esac
  wait_port "$port"
  echo "$pid"
}

stop() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
  pkill -KILL -P "$pid" 2>/dev/null || true
  kill -KILL "$pid" 2>/dev/null || true
}

case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  *) echo "usage: peers.sh install|start|stop" >&2; exit 2 ;;
esac
