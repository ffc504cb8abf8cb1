#!/usr/bin/env bash
# List-users latency at 1,000,000 users: the keyset query behind GET /api/admin/users (first
# page and a deep page) side by side with an OFFSET query at the same depth.
#
# Usage: benches/list-users.sh                 (1,000,000 users, depth 900,000, 11 runs each)
#        USERS=200000 DEPTH=150000 REPS=21 benches/list-users.sh
#
# Needs PostgreSQL at DATABASE_URL (default postgres://watchpost:watchpost@127.0.0.1:5432/watchpost;
# the role needs CREATEDB). Creates a scratch database, applies the schema from
# admin-api/migrations/V1__initial.sql, seeds the users with generate_series (three users share
# each created_at, so the id tie-break is exercised), and drops the database at the end.
#
# Each query is timed server-side with EXPLAIN (ANALYZE): planning + execution time, the
# median (and min/max) of REPS runs after one warm-up run. The keyset query text is the one
# the handler sends (with no filters), the parameters inlined as the server sees them for a
# custom plan. The deep keyset page is checked to return exactly the rows of the OFFSET page.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS="${USERS:-1000000}"
DEPTH="${DEPTH:-900000}"
REPS="${REPS:-11}"
LIMIT=20
DATABASE_URL="${DATABASE_URL:-postgres://watchpost:watchpost@127.0.0.1:5432/watchpost}"
BASE="${DATABASE_URL%/*}"
SCRATCH="wp_bench_list_users_$(date +%s)_$$"
MAINT="$BASE/postgres"
URL="$BASE/$SCRATCH"

log() { printf '==> %s\n' "$*" >&2; }

command -v jq >/dev/null || { echo "jq is required" >&2; exit 1; }
psql -XAtq "$MAINT" -c "SELECT 1" >/dev/null || {
    echo "PostgreSQL is not reachable at $MAINT" >&2
    exit 1
}

cleanup() { psql -XAtq "$MAINT" -c "DROP DATABASE IF EXISTS \"$SCRATCH\" WITH (FORCE)" >/dev/null || true; }
trap cleanup EXIT

log "creating scratch database $SCRATCH"
psql -XAtq "$MAINT" -c "CREATE DATABASE \"$SCRATCH\"" >/dev/null
psql -XAtq "$URL" -v ON_ERROR_STOP=1 -f admin-api/migrations/V1__initial.sql >/dev/null

log "seeding $USERS users"
start=$(date +%s)
psql -XAtq "$URL" -v ON_ERROR_STOP=1 <<SQL >/dev/null
INSERT INTO users (id, email, username, name, status, created_at, updated_at)
SELECT 'usr_' || lpad(i::text, 26, '0'),
       'user' || i || '@example.com',
       'user' || i,
       'User ' || i,
       CASE WHEN i % 50 = 0 THEN 'disabled' ELSE 'active' END,
       timestamptz '2025-01-01 00:00:00+00' + (i / 3) * interval '1 second',
       now()
FROM generate_series(1, $USERS) AS i;
VACUUM ANALYZE users;
SQL
log "seeded in $(( $(date +%s) - start )) s"

COLS="id, email, username, name, role, status, email_verified, mfa_enrolled, locale, timezone, created_at, updated_at, last_active_at"

# The handler's query (routes/users.rs, list_users) with its parameters inlined.
keyset() { # $1 = cursor time literal or NULL, $2 = cursor id literal or NULL
    cat <<SQL
SELECT $COLS FROM users u
WHERE (NULL::text IS NULL OR u.username ILIKE NULL OR u.email ILIKE NULL OR u.name ILIKE NULL)
  AND (NULL::text IS NULL OR u.status = NULL)
  AND (NULL::text IS NULL OR EXISTS (SELECT 1 FROM memberships m
       WHERE m.user_id = u.id AND m.organization_id = NULL))
  AND ($1::timestamptz IS NULL OR (u.created_at, u.id) < ($1, $2::text))
ORDER BY u.created_at DESC, u.id DESC LIMIT $((LIMIT + 1))
SQL
}

offset() { # $1 = offset
    cat <<SQL
SELECT $COLS FROM users u
ORDER BY u.created_at DESC, u.id DESC LIMIT $((LIMIT + 1)) OFFSET $1
SQL
}

# The cursor a client holds after reading DEPTH rows: the DEPTH-th row's (created_at, id).
read -r CUR_TIME CUR_ID < <(psql -XAtq -F ' ' "$URL" -c \
    "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), id
     FROM users ORDER BY created_at DESC, id DESC OFFSET $((DEPTH - 1)) LIMIT 1")

# Correctness: the deep keyset page is exactly the OFFSET page.
k_ids=$(psql -XAtq "$URL" -c "SELECT string_agg(id, ',') FROM ($(keyset "'$CUR_TIME'" "'$CUR_ID'")) p")
o_ids=$(psql -XAtq "$URL" -c "SELECT string_agg(id, ',') FROM ($(offset "$DEPTH")) p")
if [ "$k_ids" != "$o_ids" ]; then
    echo "keyset and OFFSET pages differ at depth $DEPTH" >&2
    exit 1
fi

# Prints "median min max" in ms of planning + execution time over REPS runs.
measure() {
    local sql="$1" times=() i
    psql -XAtq "$URL" -c "EXPLAIN (ANALYZE) $sql" >/dev/null # warm-up
    for ((i = 0; i < REPS; i++)); do
        times+=("$(psql -XAtq "$URL" -c "EXPLAIN (ANALYZE, FORMAT JSON) $sql" |
            jq '.[0]["Planning Time"] + .[0]["Execution Time"]')")
    done
    printf '%s\n' "${times[@]}" | sort -g | awk '
        { v[NR] = $1 }
        END { printf "%.3f %.3f %.3f\n", v[int((NR + 1) / 2)], v[1], v[NR] }'
}

plan_of() {
    psql -XAtq "$URL" -c "EXPLAIN (COSTS OFF) $1" | grep -vE '^ *(Index Cond|Filter|Sort Key):' |
        head -2 | sed 's/^ *//' | paste -sd ' '
}

log "timing ($REPS runs each)"
names=("keyset first page" "OFFSET first page" "keyset deep page" "OFFSET deep page")
depths=(0 0 "$DEPTH" "$DEPTH")
sqls=("$(keyset NULL NULL)" "$(offset 0)" "$(keyset "'$CUR_TIME'" "'$CUR_ID'")" "$(offset "$DEPTH")")
printf '\nList users, %s users, page size %s, PostgreSQL %s\n\n' "$USERS" "$LIMIT" \
    "$(psql -XAtq "$URL" -c 'SHOW server_version')"
printf '| %-17s | %12s | %9s | %9s | %9s | %s |\n' query "rows skipped" "median ms" "min ms" "max ms" "plan (top nodes)"
printf '|---|---:|---:|---:|---:|---|\n'
for i in "${!names[@]}"; do
    read -r median min max < <(measure "${sqls[$i]}")
    printf '| %-17s | %12s | %9s | %9s | %9s | %s |\n' "${names[$i]}" "${depths[$i]}" "$median" "$min" "$max" \
        "$(plan_of "${sqls[$i]}")"
done
