#!/usr/bin/env bash
# Access-log queries over 1,000,000 entries written through the proxy's own append script
# (index included), on a Redis of the bench's own: GET /api/admin/access-log through a release
# watchpost-admin, unfiltered and with single indexed filters matching 1 in 10 and 1 in 10,000
# entries (and others), p50/p99 of REQUESTS calls each, each also as a ratio to a raw
# `XREVRANGE <stream> + - COUNT 50` timed in the same run; an NDJSON export of the 100,000
# entries of one IP (rate, admin RSS before/at peak); the index's Redis memory and CPU per
# entry, against the same entries written by the same script without postings.
#
# Usage: benches/access-log-query.sh               (1,000,000 entries, 200 requests per query)
#        ENTRIES=200000 REQUESTS=100 PROFILE=debug benches/access-log-query.sh
#        ADMIN_BASE=path/to/other/watchpost-admin benches/access-log-query.sh
#
# ADMIN_BASE: a second watchpost-admin binary (e.g. a release build of the previous revision)
# served on ADMIN_PORT+1 against the same Redis and database; every query alternates one call
# to each (same noise for both), each export runs on both, and every row is printed for both
# ("base" rows) with the ratio this/base. QUERIES_ONLY=1 loads only the indexed stream and
# skips the index-cost table.
#
# Needs redis-server/redis-cli (a scratch server is started on REDIS_PORT, default 16390, no
# persistence, and shut down at the end) and PostgreSQL at DATABASE_URL (default
# postgres://watchpost:watchpost@127.0.0.1:5432/watchpost; the role needs CREATEDB; a scratch
# database is created and dropped).
#
# Loads: `watchpost-access-log-load` (benches/src/bin/access_log_load.rs) writes the entries in
# batches of 512 (the writer's batch_max_entries, which it fills at max load) through
# `watchpost_proxy::access_log::append_batch_with`: index and rollups (prefix `idx:`, the one
# queried), index alone (`idxnr:`), and the same entries through the same script with no
# postings (`raw:`, the stream alone); then batches of 64, stream alone and index alone. Distribution: IP 198.51.100.10 in 1 of 10 entries, 198.51.100.77 in 1 of 10,000, the
# rest among ~100,000 addresses; 7 countries; 1 % rejected bots at risk 0.95 (status 403); 5 %
# 404. Times are curl's time_total per request on loopback, one request at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

ENTRIES="${ENTRIES:-1000000}"
REQUESTS="${REQUESTS:-200}"
REDIS_PORT="${REDIS_PORT:-16390}"
DATABASE_URL="${DATABASE_URL:-postgres://watchpost:watchpost@127.0.0.1:5432/watchpost}"
ADMIN_PORT="${ADMIN_PORT:-18481}"
# Cargo profile of watchpost-admin, and of the load generator (CLIENT_PROFILE=debug reuses a
# debug build of the benches crate, which carries Pingora; Redis's own time and memory do not
# depend on it).
PROFILE="${PROFILE:-release}"
CLIENT_PROFILE="${CLIENT_PROFILE:-$PROFILE}"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
DB_BASE="${DATABASE_URL%/*}"
SCRATCH="wp_bench_access_log_$(date +%s)_$$"

log() { printf '==> %s\n' "$*" >&2; }

for tool in redis-server redis-cli psql curl jq awk; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
psql -XAtq "$DB_BASE/postgres" -c "SELECT 1" >/dev/null || { echo "PostgreSQL is not reachable" >&2; exit 1; }

for knob in PROFILE CLIENT_PROFILE; do
    [[ "${!knob}" == release || "${!knob}" == debug ]] || { echo "$knob must be release or debug" >&2; exit 1; }
done
profile_flag() { [ "$1" = release ] && echo --release || true; }
log "building watchpost-admin ($PROFILE) and watchpost-access-log-load ($CLIENT_PROFILE)"
# shellcheck disable=SC2046 # the flag is one word or nothing
cargo build $(profile_flag "$PROFILE") -p watchpost-admin --bin watchpost-admin >&2
# shellcheck disable=SC2046
cargo build $(profile_flag "$CLIENT_PROFILE") -p watchpost-benches --bin watchpost-access-log-load >&2
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
ADMIN="$TARGET_DIR/$PROFILE/watchpost-admin"
LOAD="$TARGET_DIR/$CLIENT_PROFILE/watchpost-access-log-load"

WORK="$(mktemp -d)"
ADMIN_PID=""
REDIS_PID=""
BASE_PID=""
cleanup() {
    if [ -n "$BASE_PID" ]; then kill "$BASE_PID" 2>/dev/null || true; wait "$BASE_PID" 2>/dev/null || true; fi
    if [ -n "$ADMIN_PID" ]; then kill "$ADMIN_PID" 2>/dev/null || true; wait "$ADMIN_PID" 2>/dev/null || true; fi
    if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
    psql -XAtq "$DB_BASE/postgres" -c "DROP DATABASE IF EXISTS \"$SCRATCH\" WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

log "starting a scratch redis-server on port $REDIS_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
    >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

if [ -z "${QUERIES_ONLY:-}" ]; then
log "loading $ENTRIES entries, stream alone (same script, no postings), batches of 512"
RAW_JSON="$("$LOAD" --redis-url "$REDIS_URL" --key-prefix raw: --entries "$ENTRIES" --no-index)"
log "$RAW_JSON"
log "loading $ENTRIES entries through the writer's script, index without rollups, batches of 512"
IDXNR_JSON="$("$LOAD" --redis-url "$REDIS_URL" --key-prefix idxnr: --entries "$ENTRIES" --no-rollups)"
log "$IDXNR_JSON"
fi
log "loading $ENTRIES entries through the writer's script, index and rollups, batches of 512"
IDX_JSON="$("$LOAD" --redis-url "$REDIS_URL" --key-prefix idx: --entries "$ENTRIES")"
log "$IDX_JSON"
if [ -z "${QUERIES_ONLY:-}" ]; then
log "loading $ENTRIES entries in batches of 64, stream alone and index without rollups"
RAW64_JSON="$("$LOAD" --redis-url "$REDIS_URL" --key-prefix raw64: --entries "$ENTRIES" --batch 64 --no-index)"
log "$RAW64_JSON"
IDX64_JSON="$("$LOAD" --redis-url "$REDIS_URL" --key-prefix idx64: --entries "$ENTRIES" --batch 64 --no-rollups)"
log "$IDX64_JSON"
fi
STREAM_BYTES="$(redis-cli -p "$REDIS_PORT" memory usage idx:access samples 0)"
INDEX_KEYS="$(redis-cli -p "$REDIS_PORT" scard idx:access:ixset)"
# The loads are not needed any more: drop them so that the queries run on the same server size.
for prefix in raw: idxnr: raw64: idx64:; do
    redis-cli -p "$REDIS_PORT" --scan --pattern "$prefix*" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" unlink >/dev/null
done

export DATABASE_URL="$DB_BASE/$SCRATCH"
export REDIS_URL
export WATCHPOST_REDIS_KEY_PREFIX="idx:"
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
if [ -n "${ADMIN_BASE:-}" ]; then
    BASE_PORT=$(( ADMIN_PORT + 1 ))
    WATCHPOST_ADMIN_LISTEN="127.0.0.1:$BASE_PORT" "$ADMIN_BASE" serve >"$WORK/admin-base.log" 2>&1 &
    BASE_PID=$!
    BASE_URL="http://127.0.0.1:$BASE_PORT/api/admin/access-log"
    for _ in $(seq 1 100); do
        curl -fs "http://127.0.0.1:$BASE_PORT/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

printf 'load average at the start: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
RAWQ="$("$LOAD" --mode xrevrange --redis-url "$REDIS_URL" --key-prefix idx: --requests "$REQUESTS")"
RAW_P50="$(jq .p50_ms <<<"$RAWQ")"
RAW_P99="$(jq .p99_ms <<<"$RAWQ")"

DEEP="$(redis-cli -p "$REDIS_PORT" xrevrange idx:access + - COUNT $(( ENTRIES * 9 / 10 )) | awk 'NR%2==1 && /^[0-9]+-[0-9]+$/ {id=$0} END {print id}')"
QUERIES=(
    "unfiltered, top page|limit=50"
    "unfiltered, deep page (before 90 % down)|limit=50&before=$DEEP"
    "ip, 1 in 10|limit=50&ip=198.51.100.10"
    "ip, 1 in 10,000|limit=50&ip=198.51.100.77"
    "country, 1 in 7|limit=50&country=FR"
    "status class 4xx, 1 in 20|limit=50&status=4xx"
    "risk_min=0.9, 1 in 100|limit=50&risk_min=0.9"
    "status=404 exact, 1 in 25|limit=50&status=404"
    "decision=reject, 1 in 100|limit=50&decision=reject"
    "ua_type=bot, 1 in 100|limit=50&ua_type=bot"
    "ip 1 in 10 + status=404 (no entry has both: both indexes are merged to their end)|limit=50&ip=198.51.100.10&status=404"
    "ip 1 in 10,000 in the newest 50 %|limit=50&ip=198.51.100.77&from=\$MID"
    "unindexed only: method=POST + path prefix (budget scan)|limit=50&method=POST&path_prefix=/api/items/7"
)
MID="$(redis-cli -p "$REDIS_PORT" xrevrange idx:access + - COUNT $(( ENTRIES / 2 )) | awk 'NR%2==1 && /^[0-9]+-[0-9]+$/ {id=$0} END {split(id, a, "-"); print a[1]}')"

printf '\n| query | p50 | p99 | p50 / raw | p99 / raw | items per call | next_cursor |\n|---|---|---|---|---|---|---|\n'
printf '| raw `XREVRANGE … COUNT 50` (redis-rs, one connection) | %.2f ms | %.2f ms | 1 | 1 | 50 | |\n' "$RAW_P50" "$RAW_P99"
# p50 and p99 of the times (seconds) in file $1, in ms, as "p50 p99".
percentiles() {
    sort -n "$1" >"$WORK/sorted"
    local n p50 p99
    n=$(wc -l <"$WORK/sorted")
    p50=$(sed -n "$(( (n * 50 + 99) / 100 ))p" "$WORK/sorted")
    p99=$(sed -n "$(( (n * 99 + 99) / 100 ))p" "$WORK/sorted")
    awk -v a="$p50" -v b="$p99" 'BEGIN { printf "%.3f %.3f\n", a * 1000, b * 1000 }'
}
for q in "${QUERIES[@]}"; do
    name="${q%%|*}"
    params="${q#*|}"
    params="${params//\$MID/$MID}"
    sample="$(curl -fs -H "Authorization: Bearer $TOKEN" "$URL?$params")"
    items="$(jq '.items | length' <<<"$sample")"
    cursor="$(jq -r 'if .next_cursor == null then "null" else "set" end' <<<"$sample")"
    : >"$WORK/times"
    : >"$WORK/times-base"
    for _ in $(seq 1 "$REQUESTS"); do
        curl -fs -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $TOKEN" "$URL?$params" >>"$WORK/times"
        if [ -n "$BASE_PID" ]; then
            curl -fs -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $TOKEN" "$BASE_URL?$params" >>"$WORK/times-base"
        fi
    done
    read -r p50 p99 < <(percentiles "$WORK/times")
    awk -v name="$name" -v params="$params" -v p50="$p50" -v p99="$p99" -v r50="$RAW_P50" -v r99="$RAW_P99" \
        -v items="$items" -v cursor="$cursor" 'BEGIN {
        printf "| %s (`%s`) | %.1f ms | %.1f ms | %.1f | %.1f | %s | %s |\n", name, params,
            p50, p99, p50 / r50, p99 / r99, items, cursor }'
    if [ -n "$BASE_PID" ]; then
        read -r b50 b99 < <(percentiles "$WORK/times-base")
        awk -v p50="$b50" -v p99="$b99" -v r50="$RAW_P50" -v r99="$RAW_P99" -v a50="$p50" -v a99="$p99" 'BEGIN {
            printf "| … base | %.1f ms | %.1f ms | %.1f | %.1f | this/base p50 %.2f | p99 %.2f |\n",
                p50, p99, p50 / r50, p99 / r99, a50 / p50, a99 / p99 }'
    fi
done
printf '\n%s requests per query, one at a time; %s entries.\n' "$REQUESTS" "$ENTRIES"

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# export LABEL PID URL PARAMS: one NDJSON export, its rate and the admin's RSS before / at peak.
export_run() {
    local label="$1" pid="$2" url="$3" params="$4" before sampler peak t n lines
    before="$(rss "$pid")"
    ( while kill -0 "$pid" 2>/dev/null; do rss "$pid"; sleep 0.05; done ) >"$WORK/rss" &
    sampler=$!
    t="$(curl -fs -o "$WORK/export.ndjson" -w '%{time_total}' -H "Authorization: Bearer $TOKEN" "$url/export?$params")"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    peak="$(sort -n "$WORK/rss" | tail -n 1)"
    n="$(tail -n 1 "$WORK/export.ndjson" | jq .count)"
    lines="$(( $(wc -l <"$WORK/export.ndjson") - 1 ))"
    awk -v label="$label" -v n="$n" -v l="$lines" -v t="$t" -v b="$before" -v p="$peak" 'BEGIN {
        printf "| %s | %d (%d lines) | %.2f s | %.0f entries/s | %.1f MiB | %.1f MiB |\n",
            label, n, l, t, n / t, b / 1024, p / 1024 }'
}
# The millisecond of the 100,000th newest entry: an unfiltered export of about 100,000 entries.
NEWEST_100K="$(redis-cli -p "$REDIS_PORT" xrevrange idx:access + - COUNT 100000 | awk 'NR%2==1 && /^[0-9]+-[0-9]+$/ {id=$0} END {split(id, a, "-"); print a[1]}')"
log "exports: every entry of 198.51.100.10 (1 in 10), and everything from the 100,000th newest entry; NDJSON"
printf '\n| export | entries | time | rate | admin RSS before | admin RSS peak |\n|---|---|---|---|---|---|\n'
for round in 1 2; do
    export_run "ip 1 in 10 (\`ip=198.51.100.10\`), round $round" "$ADMIN_PID" "$URL" "ip=198.51.100.10"
    if [ -n "$BASE_PID" ]; then export_run "… base, round $round" "$BASE_PID" "$BASE_URL" "ip=198.51.100.10"; fi
    export_run "unfiltered (\`from=$NEWEST_100K\`), round $round" "$ADMIN_PID" "$URL" "from=$NEWEST_100K"
    if [ -n "$BASE_PID" ]; then export_run "… base, round $round" "$BASE_PID" "$BASE_URL" "from=$NEWEST_100K"; fi
done
printf '\nload average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"

if [ -n "${QUERIES_ONLY:-}" ]; then exit 0; fi
printf '\nindex cost (%s postings streams):\n' "$INDEX_KEYS"
jq -rn --argjson raw "$RAW_JSON" --argjson nr "$IDXNR_JSON" --argjson idx "$IDX_JSON" \
    --argjson raw64 "$RAW64_JSON" --argjson idx64 "$IDX64_JSON" --arg stream "$STREAM_BYTES" '
  def mib: . / 1048576 | floor;
  def ratio(a; b): ((a / b * 100) | floor) / 100;
  "| | stream alone | stream + index | ratio | stream + index + rollups | stream alone, batches of 64 | stream + index, batches of 64 | ratio |\n|---|---|---|---|---|---|---|---|\n" +
  "| Redis used_memory growth | \($raw.used_memory_delta | mib) MiB | \($nr.used_memory_delta | mib) MiB | \(ratio($nr.used_memory_delta; $raw.used_memory_delta)) | \($idx.used_memory_delta | mib) MiB | \($raw64.used_memory_delta | mib) MiB | \($idx64.used_memory_delta | mib) MiB | \(ratio($idx64.used_memory_delta; $raw64.used_memory_delta)) |\n" +
  "| script time per entry (commandstats) | \($raw.script_usec_per_entry) µs | \($nr.script_usec_per_entry) µs | | \($idx.script_usec_per_entry) µs | \($raw64.script_usec_per_entry) µs | \($idx64.script_usec_per_entry) µs | |\n" +
  "| Redis CPU per entry (used_cpu_user+sys) | \($raw.redis_cpu_usec_per_entry) µs | \($nr.redis_cpu_usec_per_entry) µs | | \($idx.redis_cpu_usec_per_entry) µs | \($raw64.redis_cpu_usec_per_entry) µs | \($idx64.redis_cpu_usec_per_entry) µs | |\n" +
  "| load time | \($raw.seconds) s | \($nr.seconds) s | | \($idx.seconds) s | \($raw64.seconds) s | \($idx64.seconds) s | |\n" +
  "\n(MEMORY USAGE of the indexed stream key alone: \(($stream | tonumber) | mib) MiB)"'
