#!/usr/bin/env bash
# Admin GET latency (p50/p99) idle and during a 48-client anonymous sign-in flood
# (watchpost-admin-flood-bench), in two set-ups of one watchpost-admin:
#
#   throttled    the default [admin] sign-in throttles: the flood comes from one address, so
#                after sign_in_per_ip_per_minute attempts it is answered 429 from Redis;
#   unthrottled  the throttles raised out of reach: every attempt reaches argon2, so this
#                measures the hashing semaphore and the pooled connection released while
#                hashing, the defence left against a flood from many addresses.
#
# Usage: benches/admin-flood.sh
#        SECONDS_PER_PHASE=20 FLOOD_CLIENTS=48 GET_RATE=20 PROFILE=release benches/admin-flood.sh
#
# PROFILE is the cargo profile of watchpost-admin; CLIENT_PROFILE (default: PROFILE) that of the
# load generator, which sits in the benches crate with Pingora: CLIENT_PROFILE=debug reuses a
# debug build instead of compiling Pingora in release.
#
# Needs PostgreSQL at DATABASE_URL (default postgres://watchpost:watchpost@127.0.0.1:5432/watchpost,
# a role with CREATEDB) and Redis at REDIS_URL (default redis://127.0.0.1:6379). Uses a scratch
# database and a scratch key prefix, both removed at the end (keys by SCAN on the prefix only).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_PHASE="${SECONDS_PER_PHASE:-20}"
FLOOD_CLIENTS="${FLOOD_CLIENTS:-48}"
GET_RATE="${GET_RATE:-20}"
PROFILE="${PROFILE:-release}"
CLIENT_PROFILE="${CLIENT_PROFILE:-$PROFILE}"
ADMIN_PORT="${ADMIN_PORT:-18710}"
DATABASE_URL="${DATABASE_URL:-postgres://watchpost:watchpost@127.0.0.1:5432/watchpost}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
BASE="${DATABASE_URL%/*}"
SCRATCH="wp_bench_flood_$(date +%s)_$$"
PREFIX="bench:flood:$$:"
COMMAND_LINE="SECONDS_PER_PHASE=$SECONDS_PER_PHASE FLOOD_CLIENTS=$FLOOD_CLIENTS GET_RATE=$GET_RATE PROFILE=$PROFILE CLIENT_PROFILE=$CLIENT_PROFILE benches/admin-flood.sh"

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'admin-flood: %s\n' "$*" >&2
    exit 1
}
for knob in SECONDS_PER_PHASE FLOOD_CLIENTS GET_RATE ADMIN_PORT; do
    [[ "${!knob}" =~ ^[1-9][0-9]*$ ]] || die "$knob must be a positive integer (got '${!knob}')"
done
for knob in PROFILE CLIENT_PROFILE; do
    [[ "${!knob}" == release || "${!knob}" == debug ]] || die "$knob must be release or debug"
done
command -v jq >/dev/null || die "jq is required"
command -v redis-cli >/dev/null || die "redis-cli is required (package redis-tools)"
command -v psql >/dev/null || die "psql is required (package postgresql-client)"

profile_flag() { [ "$1" = release ] && echo --release || true; }
log "building watchpost-admin ($PROFILE) and watchpost-admin-flood-bench ($CLIENT_PROFILE)"
# shellcheck disable=SC2046 # the flag is one word or nothing
cargo build $(profile_flag "$PROFILE") --locked -p watchpost-admin --bin watchpost-admin >&2 ||
    die "cargo build failed"
# shellcheck disable=SC2046
cargo build $(profile_flag "$CLIENT_PROFILE") --locked -p watchpost-benches \
    --bin watchpost-admin-flood-bench >&2 || die "cargo build failed"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
ADMIN="$TARGET_DIR/$PROFILE/watchpost-admin"
BENCH="$TARGET_DIR/$CLIENT_PROFILE/watchpost-admin-flood-bench"

WORK="$(mktemp -d)"
ADMIN_PID=""
stop_admin() {
    if [ -n "$ADMIN_PID" ]; then
        kill "$ADMIN_PID" 2>/dev/null || true
        wait "$ADMIN_PID" 2>/dev/null || true
        ADMIN_PID=""
    fi
}
cleanup() {
    stop_admin
    psql -XAtq "$BASE/postgres" -c "DROP DATABASE IF EXISTS \"$SCRATCH\" WITH (FORCE)" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" --scan --pattern "${PREFIX}*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

export DATABASE_URL="$BASE/$SCRATCH" REDIS_URL
export WATCHPOST_REDIS_KEY_PREFIX="$PREFIX"
export WATCHPOST_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT"
# The measuring admin must not meet its own per-admin limit.
export WATCHPOST_ADMIN_RATE_LIMIT_PER_MINUTE=1000000 WATCHPOST_ADMIN_RATE_LIMIT_PER_HOUR=1000000

log "creating the admin key in scratch database $SCRATCH"
KEY="$("$ADMIN" create-admin --email bench@example.com 2>/dev/null)"
[[ "$KEY" == wpk_* ]] || die "create-admin printed no key"

# Seed a few hundred users so the measured GET reads a real page.
psql -XAtq "$DATABASE_URL" -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
INSERT INTO users (id, email, username)
SELECT 'usr_' || lpad(i::text, 26, '0'), 'seed' || i || '@example.com', 'seed' || i
FROM generate_series(1, 500) AS i;
SQL

start_admin() { # extra env assignments
    env "$@" "$ADMIN" serve >"$WORK/admin.log" 2>&1 &
    ADMIN_PID=$!
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null 2>&1 && return 0
        kill -0 "$ADMIN_PID" 2>/dev/null || { tail -n 20 "$WORK/admin.log" >&2; die "watchpost-admin exited"; }
        sleep 0.1
    done
    die "watchpost-admin did not answer /healthz"
}

run_bench() { # name
    "$BENCH" --base-url "http://127.0.0.1:$ADMIN_PORT" --admin-key "$KEY" \
        --seconds "$SECONDS_PER_PHASE" --flood-clients "$FLOOD_CLIENTS" --get-rate "$GET_RATE" \
        >"$WORK/$1.json" || die "bench failed ($1)"
}

log "throttled: default sign-in throttles"
start_admin
run_bench throttled
stop_admin

log "unthrottled: sign-in throttles raised"
start_admin WATCHPOST_ADMIN_SIGN_IN_PER_IP_PER_MINUTE=100000000 \
    WATCHPOST_ADMIN_SIGN_IN_PER_ACCOUNT_IP_PER_MINUTE=100000000
run_bench unthrottled
stop_admin

printf '\nAdmin GET %s at %s/s, idle vs %s flooding sign-in clients, %s s per phase, %s cores, %s build (load generator: %s)\n\n' \
    "/api/admin/users?limit=20" "$GET_RATE" "$FLOOD_CLIENTS" "$SECONDS_PER_PHASE" "$(nproc)" "$PROFILE" "$CLIENT_PROFILE"
printf '| set-up | idle p50 ms | idle p99 ms | flood p50 ms | flood p99 ms | p99 flood/idle | sign-in answers/s | sign-in statuses |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---|\n'
for name in throttled unthrottled; do
    jq -r --arg name "$name" '"| \($name) | \(.idle.p50_ms) | \(.idle.p99_ms) | \(.flood.p50_ms) | \(.flood.p99_ms) | \(.p99_ratio) | \(.sign_ins_per_sec) | \(.sign_in_statuses | to_entries | map("\(.key): \(.value)") | join(", ")) |"' \
        "$WORK/$name.json"
done
printf '\n`%s`\n' "$COMMAND_LINE"
