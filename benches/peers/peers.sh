#!/usr/bin/env bash
# Benchmark peers for tlsvisor: each one a TLS terminator on 127.0.0.1 in front of a
# plaintext TCP upstream on 127.0.0.1, all with the same certificate and key.
#
#   peers.sh install
#       apt-get installs the peers (quiet; does nothing when they are all there).
#   peers.sh start NAME LISTEN_PORT UPSTREAM_PORT CERT KEY WORKDIR
#       Starts NAME in the background in foreground mode (no daemonizing), prints the pid of
#       its top process on one line, and returns once LISTEN_PORT accepts TCP (10 s at most).
#       Configs, logs and pid files go under WORKDIR; nothing under /etc is read or written.
#       NAME: stunnel | haproxy | hitch | nginx | redis-tls
#       (redis-tls is redis-server speaking TLS itself; UPSTREAM_PORT is ignored.)
#   peers.sh start NAME LISTEN_PORT UPSTREAM_PORT CERT KEY WORKDIR CA
#       The same, for the fronts of issue 18's phases, whose upstream speaks TLS itself:
#       stunnel-reencrypt | haproxy-reencrypt terminate the client's TLS and re-encrypt to
#       the upstream, verifying its certificate against CA for the name "localhost";
#       nginx-preread | haproxy-preread pass the client's TLS through untouched, routed by the
#       SNI of its ClientHello ("localhost" to the upstream). CA is ignored by the others.
#   peers.sh pids PID
#       Prints PID and every descendant pid, one a line. nginx (master + 2 workers) and hitch
#       (parent + 2 workers) do their work in child processes: the CPU time of a peer is the
#       sum over these pids, never the top pid's alone. haproxy, stunnel and redis are one
#       process each (threads are counted in the process's own CPU time).
#   peers.sh stop PID
#       SIGTERM to PID, SIGKILL to it and its descendants if any is left after 5 s.
#
# Settings are what an operator would pick on a 2-core machine: haproxy nbthread 2, nginx
# worker_processes 2, hitch workers = 2, stunnel and redis as they come. TLS 1.2 and 1.3,
# default ciphers, session resumption (TLS 1.3 tickets) left as each server ships it.
# Connection limits aim at 25,000 concurrent clients, but no process can hold more
# descriptors than the hard RLIMIT_NOFILE: the script raises it when it may (root with
# CAP_SYS_RESOURCE) and otherwise sizes the limits from it. A proxied client costs two
# descriptors in its process, so a single-process peer (haproxy, stunnel) holds at most
# about (hard limit)/2 clients, a 2-process one (nginx, hitch) about twice that; redis-tls
# needs one descriptor per client.
# Only errors are printed; a peer that fails to start gets its log's tail on stderr.
set -euo pipefail

readonly TARGET_CONNS=25000
readonly WANT_NOFILE=262144

usage() {
  echo "usage: peers.sh install | start NAME LISTEN_PORT UPSTREAM_PORT CERT KEY WORKDIR [CA] | pids PID | stop PID" >&2
  exit 2
}

die() {
  echo "peers.sh: $*" >&2
  exit 1
}

install_peers() {
  export DEBIAN_FRONTEND=noninteractive
  local pkgs=(openssl stunnel4 haproxy hitch nginx libnginx-mod-stream redis-server redis-tools)
  local need=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # A package install may start the distribution's own service (nginx on port 80, redis
  # on 6379, ...); the benchmark starts its own, so stop the ones this call installed.
  for p in "${need[@]}"; do
    case "$p" in
      stunnel4 | haproxy | hitch | nginx | redis-server)
        service "$p" stop >/dev/null 2>&1 || true
        ;;
    esac
  done
}

# Raise the open-files limit of this shell (and so of the peer) as far as allowed.
raise_nofile() {
  local hard
  hard=$(ulimit -Hn)
  if [ "$hard" != unlimited ] && [ "$hard" -lt "$WANT_NOFILE" ]; then
    ulimit -Hn "$WANT_NOFILE" 2>/dev/null || true
    hard=$(ulimit -Hn)
  fi
  [ "$hard" = unlimited ] && hard=$WANT_NOFILE
  ulimit -Sn "$hard"
}

min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

# True when PID exists and is not a zombie.
alive() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

descendants() {
  local kid
  for kid in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$kid"
    descendants "$kid"
  done
}

pids() {
  local pid=${1:?usage: peers.sh pids PID}
  alive "$pid" || return 0
  echo "$pid"
  descendants "$pid"
}

stop() {
  local pid=${1:?usage: peers.sh stop PID} all p left
  alive "$pid" || return 0
  all=$(pids "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    left=0
    for p in $all; do
      if alive "$p"; then left=1; break; fi
    done
    [ "$left" -eq 0 ] && return 0
    sleep 0.05
  done
  all="$all $(pids "$pid")"
  for p in $all; do
    alive "$p" && kill -KILL "$p" 2>/dev/null || true
  done
  return 0
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Wait until 127.0.0.1:PORT accepts a TCP connection while PID lives, at most 10 s.
wait_port() {
  local port=$1 pid=$2 log=$3 i
  for i in $(seq 1 200); do
    if port_open "$port"; then
      # Something else could have taken the port meanwhile; make sure ours still runs.
      sleep 0.05
      alive "$pid" && return 0
    fi
    if ! alive "$pid"; then
      echo "peers.sh: $NAME exited before listening on 127.0.0.1:$port; $log says:" >&2
      tail -n 20 "$log" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.05
  done
  echo "peers.sh: $NAME does not listen on 127.0.0.1:$port after 10 s; $log says:" >&2
  tail -n 20 "$log" >&2 2>/dev/null || true
  stop "$pid"
  exit 1
}

start() {
  [ $# -eq 6 ] || [ $# -eq 7 ] || usage
  NAME=$1
  local port=$2 up=$3 cert=$4 key=$5 dir=$6 ca=${7:-}
  case "$NAME" in
    *-reencrypt)
      [ -r "$ca" ] || die "$NAME needs the upstream's CA (cannot read '$ca')"
      ca=$(realpath "$ca")
      ;;
  esac
  [ -r "$cert" ] || die "cannot read certificate $cert"
  [ -r "$key" ] || die "cannot read key $key"
  ! port_open "$port" || die "127.0.0.1:$port is already in use"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  cert=$(realpath "$cert")
  key=$(realpath "$key")
  local nofile somaxconn log pid
  raise_nofile
  nofile=$(ulimit -Sn)
  somaxconn=$(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo 4096)
  log="$dir/$NAME.log"
  : >"$log"
  case "$NAME" in
    stunnel)
      # One process, one thread per connection; no connection limit of its own.
      cat >"$dir/stunnel.conf" <<CONF
foreground = yes
pid =
debug = 3
output = $log
[tls]
accept = 127.0.0.1:$port
connect = 127.0.0.1:$up
cert = $cert
key = $key
sslVersionMin = TLSv1.2
CONF
      stunnel4 "$dir/stunnel.conf" >>"$log" 2>&1 &
      pid=$!
      ;;
    haproxy)
      # Two descriptors per proxied connection, plus some for listeners and the like.
      local maxconn
      maxconn=$(min "$TARGET_CONNS" $(((nofile - 100) / 2)))
      cat "$key" "$cert" >"$dir/haproxy.pem"
      chmod 600 "$dir/haproxy.pem"
      cat >"$dir/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn $maxconn
  pidfile $dir/haproxy.pid
defaults
  mode tcp
  maxconn $maxconn
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend tls
  bind 127.0.0.1:$port ssl crt $dir/haproxy.pem ssl-min-ver TLSv1.2
  default_backend upstream
backend upstream
  server up1 127.0.0.1:$up
CONF
      # -db: no daemon and no master process, so the pid is the one working process.
      haproxy -db -f "$dir/haproxy.cfg" >>"$log" 2>&1 &
      pid=$!
      ;;
    hitch)
      # hitch refuses to run as root without user/group; it reads the PEM (key + chain)
      # before dropping privileges. Its default backlog is 100; use the kernel's cap like
      # the others do.
      cat "$key" "$cert" >"$dir/hitch.pem"
      chmod 600 "$dir/hitch.pem"
      cat >"$dir/hitch.conf" <<CONF
frontend = "[127.0.0.1]:$port"
backend = "[127.0.0.1]:$up"
pem-file = "$dir/hitch.pem"
workers = 2
backlog = $somaxconn
daemon = off
user = "nobody"
group = "nogroup"
tls-protos = TLSv1.2 TLSv1.3
syslog = off
log-level = 1
log-filename = "$log"
CONF
      hitch --config="$dir/hitch.conf" >>"$log" 2>&1 &
      pid=$!
      ;;
    nginx)
      # Master + 2 workers; worker_connections counts both sides of a proxied connection.
      local wconn
      wconn=$(min $((TARGET_CONNS * 2)) $((nofile - 100)))
      mkdir -p "$dir/nginx"
      cat >"$dir/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process on;
user nobody nogroup;
worker_processes 2;
worker_rlimit_nofile $nofile;
pid $dir/nginx/nginx.pid;
error_log $log warn;
events {
  worker_connections $wconn;
}
stream {
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    proxy_pass 127.0.0.1:$up;
  }
}
CONF
      nginx -p "$dir/nginx/" -e "$log" -c "$dir/nginx.conf" >>"$log" 2>&1 &
      pid=$!
      ;;
    stunnel-reencrypt)
      # A service is TLS on one side only: the server service hands each client to a
      # `client = yes` service over loopback in the same process, which opens the TLS to the
      # upstream (its sessions to it cached and resumed, as stunnel ships).
      local inner
      inner=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
      cat >"$dir/stunnel.conf" <<CONF
foreground = yes
pid =
debug = 3
output = $log
[front]
accept = 127.0.0.1:$port
connect = 127.0.0.1:$inner
cert = $cert
key = $key
sslVersionMin = TLSv1.2
[reencrypt]
client = yes
accept = 127.0.0.1:$inner
connect = 127.0.0.1:$up
CAfile = $ca
verifyChain = yes
checkHost = localhost
sni = localhost
CONF
      stunnel4 "$dir/stunnel.conf" >>"$log" 2>&1 &
      pid=$!
      ;;
    haproxy-reencrypt | haproxy-preread)
      local maxconn
      maxconn=$(min "$TARGET_CONNS" $(((nofile - 100) / 2)))
      {
        cat <<CONF
global
  nbthread 2
  maxconn $maxconn
  pidfile $dir/haproxy.pid
defaults
  mode tcp
  maxconn $maxconn
  timeout connect 5s
  timeout client 1h
  timeout server 1h
CONF
        if [ "$NAME" = haproxy-reencrypt ]; then
          cat "$key" "$cert" >"$dir/haproxy.pem"
          chmod 600 "$dir/haproxy.pem"
          # The upstream's certificate verified against CA for "localhost"; haproxy keeps
          # and resumes its session to each server by default.
          cat <<CONF
frontend tls
  bind 127.0.0.1:$port ssl crt $dir/haproxy.pem ssl-min-ver TLSv1.2
  default_backend upstream
backend upstream
  server up1 127.0.0.1:$up ssl verify required ca-file $ca sni str(localhost) verifyhost localhost
CONF
        else
          # Wait for the ClientHello, route by its SNI; anything else goes nowhere.
          cat <<CONF
frontend passthrough
  bind 127.0.0.1:$port
  tcp-request inspect-delay 5s
  tcp-request content accept if { req.ssl_hello_type 1 }
  use_backend upstream if { req.ssl_sni -i localhost }
  default_backend nowhere
backend upstream
  server up1 127.0.0.1:$up
backend nowhere
  tcp-request content reject
CONF
        fi
      } >"$dir/haproxy.cfg"
      haproxy -db -f "$dir/haproxy.cfg" >>"$log" 2>&1 &
      pid=$!
      ;;
    nginx-preread)
      # Master + 2 workers, as the terminating nginx; the upstream chosen by a map of the
      # ClientHello's SNI (an unknown name goes nowhere).
      local wconn
      wconn=$(min $((TARGET_CONNS * 2)) $((nofile - 100)))
      mkdir -p "$dir/nginx"
      cat >"$dir/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process on;
user nobody nogroup;
worker_processes 2;
worker_rlimit_nofile $nofile;
pid $dir/nginx/nginx.pid;
error_log $log warn;
events {
  worker_connections $wconn;
}
stream {
  map \$ssl_preread_server_name \$backend {
    localhost 127.0.0.1:$up;
    default 127.0.0.1:1;
  }
  server {
    listen 127.0.0.1:$port;
    ssl_preread on;
    proxy_pass \$backend;
  }
}
CONF
      nginx -p "$dir/nginx/" -e "$log" -c "$dir/nginx.conf" >>"$log" 2>&1 &
      pid=$!
      ;;
    redis-tls)
      # redis caps maxclients at (open-files limit - 32) itself.
      local maxclients
      maxclients=$(min "$TARGET_CONNS" $((nofile - 64)))
      redis-server --bind 127.0.0.1 --port 0 --tls-port "$port" \
        --tls-cert-file "$cert" --tls-key-file "$key" --tls-ca-cert-file "$cert" \
        --tls-auth-clients no --save '' --appendonly no --maxclients "$maxclients" \
        --dir "$dir" --logfile "$log" --daemonize no >>"$log" 2>&1 &
      pid=$!
      ;;
    *)
      die "unknown peer '$NAME' (stunnel, haproxy, hitch, nginx, redis-tls, stunnel-reencrypt, haproxy-reencrypt, nginx-preread or haproxy-preread)"
      ;;
  esac
  wait_port "$port" "$pid" "$log"
  echo "$pid"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
  install) install_peers ;;
  start) start "$@" ;;
  pids) pids "$@" ;;
  stop) stop "$@" ;;
  *) usage ;;
esac
