#!/usr/bin/env bash
# Access-log query latency over a 1,000,000-entry stream: GET /api/admin/access-log through a
# release watchpost-admin, unfiltered (top page and a deep page via `before`) side by side with
# selective filters (one IP among ~100,000, risk_min=0.9), p50/p99 of REQUESTS calls each.
#
# Usage: benches/access-log-query.sh               (1,000,000 entries, 200 requests per query)
#        ENTRIES=200000 REQUESTS=100 benches/access-log-query.sh
#
# Needs Redis at REDIS_URL (default redis://127.0.0.1:6379) and PostgreSQL at DATABASE_URL
# (default postgres://watchpost:watchpost@127.0.0.1:5432/watchpost; the role needs CREATEDB).
# The entries go to a scratch key prefix through one pipelined `redis-cli --pipe` of XADDs
# with explicit ids (entry i is `<base + i>-0`), in the proxy's field order. Distribution:
# ~100,000 client IPs, one of them (198.51.100.77) in 1 of every 1000 entries; 1 % of entries
# score 0.95 (bots, rejected), the rest at most 0.36. The admin API runs on a scratch database
# with a fresh admin key; the stream key, the database and the server are removed at the end.
#
# Times are curl's time_total per request (connect + response) on loopback, one request at a
# time. A filtered call examines at most `[admin] access_log_scan_budget` entries (5000 by
# default) and may return a short page; the table says how many items one call returned.
set -euo pipefail
cd "$(dirname "$0")/.."

ENTRIES="${ENTRIES:-1000000}"
REQUESTS="${REQUESTS:-200}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DATABASE_URL="${DATABASE_URL:-postgres://watchpost:watchpost@127.0.0.1:5432/watchpost}"
ADMIN_PORT="${ADMIN_PORT:-18481}"
PREFIX="bench:alq:$(date +%s):$$:"
KEY="${PREFIX}access"
DB_BASE="${DATABASE_URL%/*}"
SCRATCH="wp_bench_access_log_$(date +%s)_$$"

log() { printf '==> %s\n' "$*" >&2; }

for tool in redis-cli psql curl jq awk; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 || { echo "Redis is not reachable at $REDIS_URL" >&2; exit 1; }
psql -XAtq "$DB_BASE/postgres" -c "SELECT 1" >/dev/null || { echo "PostgreSQL is not reachable" >&2; exit 1; }

log "building watchpost-admin (release)"
cargo build --release -p watchpost-admin --bin watchpost-admin >&2
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
ADMIN="$TARGET_DIR/release/watchpost-admin"

WORK="$(mktemp -d)"
ADMIN_PID=""
cleanup() {
    if [ -n "$ADMIN_PID" ]; then kill "$ADMIN_PID" 2>/dev/null || true; wait "$ADMIN_PID" 2>/dev/null || true; fi
    redis-cli -u "$REDIS_URL" del "$KEY" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" --scan --pattern "${PREFIX}*" | while read -r k; do
        redis-cli -u "$REDIS_URL" del "$k" >/dev/null
    done
    psql -XAtq "$DB_BASE/postgres" -c "DROP DATABASE IF EXISTS \"$SCRATCH\" WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

BASE_MS=$(( $(date +%s) * 1000 - ENTRIES ))
log "loading $ENTRIES entries into $KEY"
start=$(date +%s)
LC_ALL=C awk -v n="$ENTRIES" -v base="$BASE_MS" -v key="$KEY" '
function arg(s) { printf "$%d\r\n%s\r\n", length(s), s }
BEGIN {
    split("DE US FR JP BR IN GB", cc, " ")
    for (i = 0; i < n; i++) {
        rare = (i % 100 == 0)
        h = (i * 7919) % 100000
        if (i % 1000 == 123) ip = "198.51.100.77"
        else ip = sprintf("10.%d.%d.%d", int(h / 65536), int(h / 256) % 256, h % 256)
        risk = rare ? "0.950" : sprintf("%.3f", (i % 37) / 100)
        printf "*43\r\n"
        arg("XADD"); arg(key); arg((base + i) "-0")
        arg("ts"); arg(base + i)
        arg("method"); arg(i % 5 == 0 ? "POST" : "GET")
        arg("host"); arg("app.example")
        arg("path"); arg("/api/items/" (i % 500))
        arg("query"); arg("")
        arg("status"); arg(rare ? "403" : (i % 20 == 0 ? "404" : "200"))
        arg("ip"); arg(ip)
        arg("ip_source"); arg("peer")
        arg("peer"); arg(ip)
        arg("country"); arg(cc[(i % 7) + 1])
        arg("risk"); arg(risk)
        arg("reasons"); arg(rare ? "ua_bot,rate" : "")
        arg("ua"); arg(rare ? "Mozilla/5.0 (compatible; Googlebot/2.1)" : "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0")
        arg("ua_type"); arg(rare ? "bot" : "browser")
        arg("decision"); arg(rare ? "reject" : "allow")
        arg("latency_us"); arg(200 + i % 900)
        arg("bytes_out"); arg(rare ? 90 : 1500 + i % 300)
        arg("upstream"); arg(rare ? "" : "127.0.0.1:3000")
        arg("request_id"); arg("req-" i)
        arg("proxy_id"); arg("bench")
    }
}' | redis-cli -u "$REDIS_URL" --pipe >"$WORK/pipe.log"
tail -n 1 "$WORK/pipe.log" >&2
log "loaded in $(( $(date +%s) - start )) s; XLEN $(redis-cli -u "$REDIS_URL" xlen "$KEY"), $(redis-cli -u "$REDIS_URL" memory usage "$KEY" samples 0 | awk '{printf "%.0f MiB", $1 / 1048576}') in Redis"

export DATABASE_URL="$DB_BASE/$SCRATCH"
export REDIS_URL
export WATCHPOST_REDIS_KEY_PREFIX="$PREFIX"
export WATCHPOST_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT"
export WATCHPOST_ADMIN_RATE_LIMIT_PER_MINUTE=100000000
export WATCHPOST_ADMIN_RATE_LIMIT_PER_HOUR=100000000
"$ADMIN" migrate >&2
TOKEN="$("$ADMIN" create-admin --email "bench-$$@example.com" 2>/dev/null)"
"$ADMIN" serve >"$WORK/admin.log" 2>&1 &
ADMIN_PID=$!
URL="http://127.0.0.1:$ADMIN_PORT/api/admin/access-log"
for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

DEEP="$(( BASE_MS + ENTRIES / 10 ))-0"
QUERIES=(
    "unfiltered, top page|limit=50"
    "unfiltered, deep page (before 90 % down)|limit=50&before=$DEEP"
    "one IP among ~100,000|limit=50&ip=198.51.100.77"
    "risk_min=0.9|limit=50&risk_min=0.9"
)

printf '\n| query | p50 | p99 | items per call | next_cursor |\n|---|---|---|---|---|\n'
for q in "${QUERIES[@]}"; do
    name="${q%%|*}"
    params="${q#*|}"
    sample="$(curl -fs -H "Authorization: Bearer $TOKEN" "$URL?$params")"
    items="$(jq '.items | length' <<<"$sample")"
    cursor="$(jq -r 'if .next_cursor == null then "null" else "set" end' <<<"$sample")"
    : >"$WORK/times"
    for _ in $(seq 1 "$REQUESTS"); do
        curl -fs -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $TOKEN" "$URL?$params" >>"$WORK/times"
    done
    sort -n "$WORK/times" >"$WORK/sorted"
    n=$(wc -l <"$WORK/sorted")
    p50=$(sed -n "$(( (n * 50 + 99) / 100 ))p" "$WORK/sorted")
    p99=$(sed -n "$(( (n * 99 + 99) / 100 ))p" "$WORK/sorted")
    printf '| %s (`%s`) | %.1f ms | %.1f ms | %s | %s |\n' "$name" "$params" \
        "$(awk -v t="$p50" 'BEGIN{print t*1000}')" "$(awk -v t="$p99" 'BEGIN{print t*1000}')" "$items" "$cursor"
done
printf '\n%s requests per query, one at a time; %s entries.\n' "$REQUESTS" "$ENTRIES"
