#!/usr/bin/env bash
# A local Redis Cluster of three masters on loopback, for the cluster tests and for trying
# `[redis] cluster_nodes` by hand:
#
#   deploy/redis-cluster.sh start <base-port> [dir]   # masters on base, base+1, base+2
#   deploy/redis-cluster.sh stop  <base-port> [dir]
#   deploy/redis-cluster.sh nodes <base-port>         # prints the cluster_nodes TOML value
#
# Data lives in [dir] (default: a directory named after the base port under $TMPDIR); nothing
# is saved to disk (`--save ''`, no AOF) unless WATCHPOST_CLUSTER_AOF=1 (append-only file,
# fsync on every write: a master killed and restarted keeps every acknowledged write). Each node
# keeps its nodes.conf there so that a killed master restarted on the same port rejoins the
# cluster. `start` is idempotent: a
# running node is kept, a cluster already formed is not formed again, and it returns once
# every master reports cluster_state:ok. Needs redis-server and redis-cli (Debian's
# redis-server and redis-tools, which deploy/setup.sh installs).
set -euo pipefail

cmd=${1:-}
base=${2:-}
[ -n "$cmd" ] && [ -n "$base" ] || { echo "usage: $0 start|stop|nodes <base-port> [dir]" >&2; exit 2; }
dir=${3:-"${TMPDIR:-/tmp}/watchpost-redis-cluster-$base"}
ports=("$base" "$((base + 1))" "$((base + 2))")

say() { printf '[redis-cluster] %s\n' "$*"; }
die() { printf '[redis-cluster] error: %s\n' "$*" >&2; exit 1; }
cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }
up() { cli "$1" ping >/dev/null 2>&1; }

start_node() {
  local port=$1 d="$dir/$1"
  mkdir -p "$d"
  if up "$port"; then return 0; fi
  local aof=(--appendonly no)
  [ "${WATCHPOST_CLUSTER_AOF:-0}" = 1 ] && aof=(--appendonly yes --appendfsync always)
  redis-server --port "$port" --bind 127.0.0.1 --dir "$d" --daemonize yes \
    --pidfile "$d/redis.pid" --logfile "$d/redis.log" \
    --cluster-enabled yes --cluster-config-file "$d/nodes.conf" --cluster-node-timeout 2000 \
    --save '' "${aof[@]}" --maxmemory-policy noeviction >/dev/null
  for _ in $(seq 1 50); do up "$port" && return 0; sleep 0.1; done
  die "redis-server on port $port did not answer (see $d/redis.log)"
}

cluster_ok() {
  local p
  for p in "${ports[@]}"; do
    cli "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

case "$cmd" in
  start)
    command -v redis-server >/dev/null || die "redis-server is not installed (deploy/setup.sh)"
    for p in "${ports[@]}"; do start_node "$p"; done
    # A node that knows only itself has never joined: form the cluster once.
    if [ "$(cli "$base" cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')" = 1 ]; then
      say "forming the cluster on ports ${ports[*]}"
      redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
    fi
    for _ in $(seq 1 100); do
      if cluster_ok; then say "cluster_state:ok on ports ${ports[*]}"; exit 0; fi
      sleep 0.1
    done
    die "the cluster on ports ${ports[*]} is not ok after 10 s"
    ;;
  stop)
    for p in "${ports[@]}"; do
      if up "$p"; then cli "$p" shutdown nosave >/dev/null 2>&1 || true; fi
    done
    rm -rf "$dir"
    say "stopped ports ${ports[*]}"
    ;;
  nodes)
    printf '[%s]\n' "$(printf '"redis://127.0.0.1:%s", ' "${ports[@]}" | sed 's/, $//')"
    ;;
  *) die "unknown command $cmd (start|stop|nodes)" ;;
esac
