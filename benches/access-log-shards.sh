#!/usr/bin/env bash
# The access log sharded over a 3-master Redis Cluster against one stream on one Redis node,
# side by side in one run:
#
# 1. Redis CPU per entry (`used_cpu_user + used_cpu_sys` from `INFO`, before and after) of
#    every server while `watchpost-access-log-load` writes ENTRIES entries in batches of 512
#    through the proxy's own append script (index and rollups included): one node with one
#    stream, then the cluster with `[access_log] shards` at its default (16), ROUNDS rounds
#    alternating. On two cores throughput cannot show what N masters add; the CPU each master
#    spends per entry can.
# 2. Query latency through `watchpost-admin`, `limit=50`, REQUESTS sequential calls per query
#    and per set-up, interleaved call by call: one stream on one node, 16 shards on the same
#    node (what merging costs), 16 shards on the cluster (what the cluster adds), each holding
#    QUERY_ENTRIES entries.
#
# Usage: benches/access-log-shards.sh
#        ENTRIES=200000 QUERY_ENTRIES=300000 ROUNDS=3 REQUESTS=200 benches/access-log-shards.sh
#
# Starts its own redis-server (NODE_PORT, default 16420) and 3-master cluster
# (deploy/redis-cluster.sh on CLUSTER_PORT..+2, default 16430), no persistence, both shut down
# at the end; needs PostgreSQL at DATABASE_URL (a scratch database is created and dropped).
set -euo pipefail
cd "$(dirname "$0")/.."

ENTRIES="${ENTRIES:-200000}"
QUERY_ENTRIES="${QUERY_ENTRIES:-300000}"
ROUNDS="${ROUNDS:-3}"
REQUESTS="${REQUESTS:-200}"
NODE_PORT="${NODE_PORT:-16420}"
CLUSTER_PORT="${CLUSTER_PORT:-16430}"
ADMIN_PORT="${ADMIN_PORT:-18520}"
DATABASE_URL="${DATABASE_URL:-postgres://watchpost:watchpost@127.0.0.1:5432/watchpost}"
DB_BASE="${DATABASE_URL%/*}"
SCRATCH="wp_bench_shards_$(date +%s)_$$"
NODE="redis://127.0.0.1:$NODE_PORT"
CLUSTER_LIST="redis://127.0.0.1:$CLUSTER_PORT,redis://127.0.0.1:$((CLUSTER_PORT + 1)),redis://127.0.0.1:$((CLUSTER_PORT + 2))"
CLUSTER_TOML="[\"redis://127.0.0.1:$CLUSTER_PORT\",\"redis://127.0.0.1:$((CLUSTER_PORT + 1))\",\"redis://127.0.0.1:$((CLUSTER_PORT + 2))\"]"

log() { printf '==> %s\n' "$*" >&2; }
for tool in redis-server redis-cli psql curl jq awk; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
psql -XAtq "$DB_BASE/postgres" -c "SELECT 1" >/dev/null || { echo "PostgreSQL is not reachable" >&2; exit 1; }

log "building watchpost-admin and watchpost-access-log-load (release)"
cargo build --release -p watchpost-admin --bin watchpost-admin >&2
cargo build --release -p watchpost-benches --bin watchpost-access-log-load >&2
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
ADMIN="$TARGET_DIR/release/watchpost-admin"
LOAD="$TARGET_DIR/release/watchpost-access-log-load"

WORK="$(mktemp -d)"
PIDS=()
NODE_PID=""
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    if [ -n "$NODE_PID" ]; then kill "$NODE_PID" 2>/dev/null || true; wait "$NODE_PID" 2>/dev/null || true; fi
    deploy/redis-cluster.sh stop "$CLUSTER_PORT" "$WORK/cluster" >/dev/null 2>&1 || true
    psql -XAtq "$DB_BASE/postgres" -c "DROP DATABASE IF EXISTS \"$SCRATCH\" WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

redis-server --port "$NODE_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
    >"$WORK/node.log" 2>&1 &
NODE_PID=$!
for _ in $(seq 1 100); do redis-cli -p "$NODE_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
deploy/redis-cluster.sh start "$CLUSTER_PORT" "$WORK/cluster" >&2

printf 'load average at the start: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '\n## Redis CPU per entry (µs), %s entries per load, index and rollups included\n\n' "$ENTRIES"
printf '| round | one node, one stream | cluster, 16 shards: sum of the masters | master %s | master %s | master %s |\n|---:|---:|---:|---:|---:|---:|\n' \
    "$CLUSTER_PORT" "$((CLUSTER_PORT + 1))" "$((CLUSTER_PORT + 2))"
: >"$WORK/node-cpu"
: >"$WORK/cluster-cpu"
for r in $(seq 1 "$ROUNDS"); do
    n="$("$LOAD" --redis-url "$NODE" --key-prefix "n$r:" --entries "$ENTRIES")"
    c="$("$LOAD" --cluster-nodes "$CLUSTER_LIST" --key-prefix "c$r:" --entries "$ENTRIES")"
    jq -r .redis_cpu_usec_per_entry <<<"$n" >>"$WORK/node-cpu"
    jq -r .redis_cpu_usec_per_entry <<<"$c" >>"$WORK/cluster-cpu"
    jq -rn --argjson n "$n" --argjson c "$c" --arg r "$r" \
        '"| \($r) | \($n.redis_cpu_usec_per_entry) | \($c.redis_cpu_usec_per_entry) | \($c.redis_cpu_usec_per_entry_by_node | map(tostring) | join(" | ")) |"'
    # Only what the round measured stays: the next round starts from the same sizes.
    redis-cli -p "$NODE_PORT" flushall >/dev/null
    for p in "$CLUSTER_PORT" "$((CLUSTER_PORT + 1))" "$((CLUSTER_PORT + 2))"; do
        redis-cli -p "$p" flushall >/dev/null
    done
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
printf '\nmedian: one node %s µs per entry; the cluster %s µs per entry in all (each master carries about a third)\n' \
    "$(median "$WORK/node-cpu")" "$(median "$WORK/cluster-cpu")"
printf 'shards per master (slot owners of {0}..{15}): '
for p in "$CLUSTER_PORT" "$((CLUSTER_PORT + 1))" "$((CLUSTER_PORT + 2))"; do
    count=0
    for s in $(seq 0 15); do
        slot="$(redis-cli -p "$p" cluster keyslot "{$s}")"
        owner="$(redis-cli -p "$p" cluster nodes | awk -v slot="$slot" '
            $3 ~ /master/ { for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1];
                if (slot >= r[1] && slot <= r[2]) { split($2, a, "@"); print a[1] } } }')"
        [ "$owner" = "127.0.0.1:$p" ] && count=$((count + 1))
    done
    printf '%s: %s  ' "$p" "$count"
done
printf '\n'

log "loading $QUERY_ENTRIES entries: one stream on the node, 16 shards on the node, 16 shards on the cluster"
"$LOAD" --redis-url "$NODE" --key-prefix q1: --entries "$QUERY_ENTRIES" --shards 1 >/dev/null
"$LOAD" --redis-url "$NODE" --key-prefix q16: --entries "$QUERY_ENTRIES" --shards 16 >/dev/null
"$LOAD" --cluster-nodes "$CLUSTER_LIST" --key-prefix qc: --entries "$QUERY_ENTRIES" >/dev/null

psql -XAtq "$DB_BASE/postgres" -c "CREATE DATABASE \"$SCRATCH\"" >/dev/null
export DATABASE_URL="$DB_BASE/$SCRATCH"
export WATCHPOST_ADMIN_RATE_LIMIT_PER_MINUTE=100000000
export WATCHPOST_ADMIN_RATE_LIMIT_PER_HOUR=100000000
WATCHPOST_REDIS_URL="$NODE" "$ADMIN" migrate >/dev/null 2>&1
TOKEN="$(WATCHPOST_REDIS_URL="$NODE" "$ADMIN" create-admin --email "bench-$$@example.com" 2>/dev/null)"
# serve NAME PORT ENV...: one admin with the given settings.
serve() {
    local name=$1 port=$2
    shift 2
    env "$@" WATCHPOST_ADMIN_LISTEN="127.0.0.1:$port" "$ADMIN" serve >"$WORK/admin-$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "admin $name did not start" >&2
    cat "$WORK/admin-$name.log" >&2
    exit 1
}
serve one "$ADMIN_PORT" WATCHPOST_REDIS_URL="$NODE" WATCHPOST_REDIS_KEY_PREFIX=q1: WATCHPOST_ACCESS_LOG_SHARDS=1
serve node16 "$((ADMIN_PORT + 1))" WATCHPOST_REDIS_URL="$NODE" WATCHPOST_REDIS_KEY_PREFIX=q16: WATCHPOST_ACCESS_LOG_SHARDS=16
serve cluster16 "$((ADMIN_PORT + 2))" WATCHPOST_REDIS_CLUSTER_NODES="$CLUSTER_TOML" WATCHPOST_REDIS_KEY_PREFIX=qc:

QUERIES=(
    "unfiltered, top page|limit=50"
    "ip, 1 in 10|limit=50&ip=198.51.100.10"
    "ip, 1 in 10,000|limit=50&ip=198.51.100.77"
    "country, 1 in 7|limit=50&country=FR"
    "decision=reject, 1 in 100|limit=50&decision=reject"
)
pct() { sort -n "$1" | awk -v p="$2" '{a[NR]=$1} END {i=int((NR*p+99)/100); if (i<1) i=1; printf "%.1f", a[i]*1000}'; }
printf '\n## Query latency, %s entries, `limit=50`, %s calls per query and set-up, interleaved\n\n' "$QUERY_ENTRIES" "$REQUESTS"
printf '| query | one stream p50 / p99 | 16 shards, one node p50 / p99 | 16 shards, cluster p50 / p99 | items (each) |\n|---|---|---|---|---|\n'
for q in "${QUERIES[@]}"; do
    name="${q%%|*}"
    params="${q#*|}"
    items=""
    for i in 0 1 2; do
        : >"$WORK/t$i"
        items+="$(curl -fs -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$((ADMIN_PORT + i))/api/admin/access-log?$params" | jq '.items | length') "
    done
    for _ in $(seq 1 "$REQUESTS"); do
        for i in 0 1 2; do
            curl -fs -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $TOKEN" \
                "http://127.0.0.1:$((ADMIN_PORT + i))/api/admin/access-log?$params" >>"$WORK/t$i"
        done
    done
    printf '| %s (`%s`) | %s / %s ms | %s / %s ms | %s / %s ms | %s|\n' "$name" "$params" \
        "$(pct "$WORK/t0" 50)" "$(pct "$WORK/t0" 99)" "$(pct "$WORK/t1" 50)" "$(pct "$WORK/t1" 99)" \
        "$(pct "$WORK/t2" 50)" "$(pct "$WORK/t2" 99)" "$items"
done
printf '\nload average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
