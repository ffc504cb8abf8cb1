#!/usr/bin/env bash
# Fuzz every operation of watchpost-admin with schemathesis, from the API's own OpenAPI
# document (GET /api/admin/openapi.json, which also lists the public routes).
#
# - Builds the debug binary (cargo build -p watchpost-admin --locked) and starts it on a free
#   loopback port with its own PostgreSQL database and Redis key prefix; both are removed and
#   the server stopped when the script ends, whatever the outcome.
# - Seeds a platform admin (API key) and a plain user (session token).
# - Run 1, as the plain user, on every /api/admin operation: every answer must be 401 or 403.
# - Run 2, as the admin, on every operation: no 5xx, answers and statuses as the document
#   says, and data valid under the document accepted (checks not_a_server_error,
#   status_code_conformance, response_schema_conformance, positive_data_acceptance).
#   Configs: admin-api/fuzz/user.toml and admin.toml; hooks: admin-api/fuzz/hooks.py.
# - Each run must have reached every operation it covers (read from its JUnit report).
# - schemathesis runs in a temporary directory (its .schemathesis state goes there).
# - Bounded time: each run has a time budget (WATCHPOST_FUZZ_USER_SECS, WATCHPOST_FUZZ_ADMIN_SECS).
#
# schemathesis is pinned in admin-api/fuzz/requirements.txt and installed in a virtualenv
# under the cargo target directory (python3 with venv; python3-venv is installed with apt-get
# when missing). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DATABASE_URL="${DATABASE_URL:-postgres://watchpost:watchpost@127.0.0.1:5432/watchpost}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
VENV="${WATCHPOST_FUZZ_VENV:-$TARGET_DIR/fuzz-venv}"
USER_SECS="${WATCHPOST_FUZZ_USER_SECS:-40}"
ADMIN_SECS="${WATCHPOST_FUZZ_ADMIN_SECS:-150}"
SEED="${WATCHPOST_FUZZ_SEED:-}"

say() { printf '[fuzz] %s\n' "$*"; }
die() { printf '[fuzz] error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ schemathesis ----------
want_version="$(sed -n 's/^schemathesis==//p' admin-api/fuzz/requirements.txt)"
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "version $want_version\$"; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    say "installing python3-venv"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq python3-venv
  fi
  say "creating $VENV with schemathesis $want_version"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r admin-api/fuzz/requirements.txt
fi
ST="$(cd "$VENV/bin" && pwd)/schemathesis"
FUZZ_DIR="$PWD/admin-api/fuzz"

# ------------------------------------------------------------------ the server ------------
say "building watchpost-admin"
cargo build -p watchpost-admin --locked --quiet
BIN="$TARGET_DIR/debug/watchpost-admin"

suffix="$(date +%s)_$$"
DB_NAME="wp_fuzz_$suffix"
KEY_PREFIX="wpfuzz_$suffix:"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
WORK="$(mktemp -d)"
# Same role and host as DATABASE_URL, another database.
DB_URL="$(python3 - "$DATABASE_URL" "$DB_NAME" <<'EOF'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit((p.scheme, p.netloc, "/" + sys.argv[2], p.query, "")))
EOF
)"
MAINT_URL="${DB_URL%/*}/postgres"
SERVER_PID=""

cleanup() {
  local rc=$?
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  psql -q "$MAINT_URL" -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "${KEY_PREFIX}*" 2>/dev/null \
    | xargs -r -n 500 redis-cli -u "$REDIS_URL" DEL >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ] && [ -f "$WORK/server.log" ]; then
    say "server log (last 40 lines):"
    tail -n 40 "$WORK/server.log" >&2 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT INT TERM

cat >"$WORK/fuzz.toml" <<EOF
[admin]
listen = "127.0.0.1:$PORT"
# Fuzzing sends thousands of requests a minute as one admin.
rate_limit_per_minute = 1000000
rate_limit_per_hour = 10000000

[redis]
url = "$REDIS_URL"
key_prefix = "$KEY_PREFIX"

[postgres]
url = "$DB_URL"
EOF

run_admin() { env -u DATABASE_URL -u REDIS_URL "$BIN" --config "$WORK/fuzz.toml" "$@"; }

say "database $DB_NAME, Redis prefix $KEY_PREFIX, $BASE"
ADMIN_KEY="$(run_admin create-admin --email fuzz-admin@example.com --name 'Fuzz Admin' 2>/dev/null)"
[ -n "$ADMIN_KEY" ] || die "create-admin printed no key"
# Started directly, not through run_admin: a backgrounded function runs in a subshell, and
# $! would name that subshell, leaving the server running after cleanup's kill.
env -u DATABASE_URL -u REDIS_URL "$BIN" --config "$WORK/fuzz.toml" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do
  curl -fsS "$BASE/healthz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || die "watchpost-admin exited at start"
  sleep 0.1
done
curl -fsS "$BASE/healthz" >/dev/null || die "watchpost-admin did not become healthy"

USER_TOKEN="$(curl -fsS "$BASE/api/auth/register" -H 'content-type: application/json' \
  -d '{"email":"fuzz-user@example.com","username":"fuzz-user","password":"correct horse battery staple"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
[ -n "$USER_TOKEN" ] || die "could not register the plain user"
curl -fsS "$BASE/api/admin/openapi.json" -o "$WORK/openapi.json"

# ------------------------------------------------------------------ the runs --------------
# Checks every operation selected by a path regex appears in the JUnit report.
check_reached() {
  local report="$1" regex="$2" label="$3"
  python3 - "$WORK/openapi.json" "$report" "$regex" "$label" <<'EOF'
import json, re, sys
import xml.etree.ElementTree as ET
doc, report, regex, label = sys.argv[1:]
methods = {"get", "put", "post", "delete", "patch", "head", "options"}
want = {f"{m.upper()} {p}" for p, item in json.load(open(doc))["paths"].items()
        if re.search(regex, p) for m in item if m in methods}
tested, skipped = set(), set()
for case in ET.parse(report).getroot().iter("testcase"):
    name = case.get("name", "")
    (skipped if case.find("skipped") is not None else tested).add(name)
missing = sorted(want - tested)
print(f"[fuzz] {label}: {len(want & tested)} of {len(want)} operations reached")
if missing:
    print(f"[fuzz] {label}: not reached: {', '.join(missing)}", file=sys.stderr)
    sys.exit(1)
EOF
}

seed_args=()
[ -n "$SEED" ] && seed_args=(--seed "$SEED")

say "run 1: a plain user's session on every admin operation (only 401/403 expected)"
(cd "$WORK" && "$ST" --config-file "$FUZZ_DIR/user.toml" run "$BASE/api/admin/openapi.json" \
  --url "$BASE" \
  -H "Authorization: Bearer $USER_TOKEN" \
  --include-path-regex '^/api/admin/' --exclude-path '/api/admin/openapi.json' \
  --workers 1 --max-examples 5 --max-time "$USER_SECS" --phases examples,coverage,fuzzing \
  --generation-database none --no-color "${seed_args[@]}" \
  --report junit --report-junit-path "$WORK/user.xml") \
  || die "run 1 failed: an admin operation answered a plain user with something else than 401/403"
check_reached "$WORK/user.xml" '^/api/admin/(?!openapi\.json$)' "run 1"

say "run 2: the admin key on every operation"
(cd "$WORK" && PYTHONPATH="$FUZZ_DIR${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=hooks \
"$ST" --config-file "$FUZZ_DIR/admin.toml" run "$BASE/api/admin/openapi.json" \
  --url "$BASE" \
  -H "Authorization: Bearer $ADMIN_KEY" \
  --workers 1 --max-examples 25 --max-time "$ADMIN_SECS" --phases examples,coverage,fuzzing \
  --generation-database none --no-color "${seed_args[@]}" \
  --report junit --report-junit-path "$WORK/admin.xml") \
  || die "run 2 failed: see the failures above"
check_reached "$WORK/admin.xml" '.' "run 2"
say "all operations fuzzed without failures"
