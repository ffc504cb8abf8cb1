#!/usr/bin/env bash
# Run the whole Watchpost system on loopback:
#   Redis and PostgreSQL (installed and started when missing), a release build, migrations,
#   a platform-admin API key (printed once), a demo upstream on :3000, watchpost-proxy on :8080
#   (health and metrics on :9090) and watchpost-admin on :8081 with the operator console at
#   http://127.0.0.1:8081/console/. Ctrl-C stops what it started.
#
# Environment: REDIS_URL, DATABASE_URL (see README), WATCHPOST_CONFIG (default: the example
# config), ADMIN_EMAIL (default admin@watchpost.local).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG="${WATCHPOST_CONFIG:-deploy/watchpost.example.toml}"
ADMIN_EMAIL="${ADMIN_EMAIL:-admin@watchpost.local}"
STATE=.cache/quickstart
BIN=target/release

say() { printf '\n\033[1m[watchpost]\033[0m %s\n' "$*"; }
die() { printf '[watchpost] error: %s\n' "$*" >&2; exit 1; }

bash deploy/setup.sh

mkdir -p "$STATE"
# A stable secret key for stored secrets (the SMTP password), generated once.
if [ -z "${WATCHPOST_SECRET_KEY:-}" ]; then
  [ -s "$STATE/secret.key" ] || head -c 32 /dev/urandom | base64 > "$STATE/secret.key"
  WATCHPOST_SECRET_KEY=$(cat "$STATE/secret.key")
fi
export WATCHPOST_SECRET_KEY

# GeoIP: use the public test database when it can be fetched; run without GeoIP otherwise.
if bash deploy/fetch-geo-db.sh >/dev/null 2>&1 && [ -f .cache/geo/geo-whois-asn-country.mmdb ]; then
  export WATCHPOST_GEO_MMDB_PATH="$PWD/.cache/geo/geo-whois-asn-country.mmdb"
  say "GeoIP: using the public ip-location-db country database"
else
  say "GeoIP: database not available, countries will be empty"
fi

for port in 3000 8080 8081 9090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is already in use (is another quickstart running?)"
  fi
done

say "building (release; the first build takes a few minutes)"
cargo build --release --locked -p watchpost-proxy -p watchpost-admin --bins

say "migrating the database"
"$BIN/watchpost-admin" --config "$CONFIG" migrate

say "creating a platform-admin API key for $ADMIN_EMAIL"
KEY=$("$BIN/watchpost-admin" --config "$CONFIG" create-admin --email "$ADMIN_EMAIL" --name "Quickstart admin" \
  2>"$STATE/create-admin.log" | tail -n 1)
cat "$STATE/create-admin.log" >&2
ADMIN_ID=$(grep -o 'usr_[0-9A-Z]*' "$STATE/create-admin.log" | head -n 1 || true)
echo "$KEY" > "$STATE/admin.key"
chmod 600 "$STATE/admin.key"
# A password for the console's email sign-in, generated once and kept beside the key.
[ -s "$STATE/admin.password" ] || head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$STATE/admin.password"
chmod 600 "$STATE/admin.password"
ADMIN_PASSWORD=$(cat "$STATE/admin.password")

pids=()
cleanup() {
  trap - INT TERM EXIT
  say "stopping"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

"$BIN/watchpost-demo-upstream" --listen 127.0.0.1:3000 & pids+=($!)
"$BIN/watchpost-proxy" --config "$CONFIG" & pids+=($!)
"$BIN/watchpost-admin" --config "$CONFIG" serve & pids+=($!)

wait_http() { # wait_http <url> <what>
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  die "$2 did not come up ($1)"
}
wait_http http://127.0.0.1:9090/healthz "watchpost-proxy"
wait_http http://127.0.0.1:8081/healthz "watchpost-admin"

SIGN_IN="$ADMIN_EMAIL with password $ADMIN_PASSWORD (saved in $STATE/admin.password)"
if [ -z "$ADMIN_ID" ] || ! curl -fsS -o /dev/null -X PUT -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -d "{\"password\":\"$ADMIN_PASSWORD\"}" \
    "http://127.0.0.1:8081/api/admin/users/$ADMIN_ID/password"; then
  SIGN_IN="not set up (use the API key)"
fi

PREFIX=$(awk -F'"' '/^key_prefix/ {print $2; exit}' "$CONFIG")
cat <<MSG

Watchpost is running:
  demo upstream     http://127.0.0.1:3000
  watchpost-proxy   http://127.0.0.1:8080   (health: http://127.0.0.1:9090/healthz, metrics: /metrics)
  watchpost-admin   http://127.0.0.1:8081   (OpenAPI: http://127.0.0.1:8081/api/admin/openapi.json)

Your platform-admin API key (shown once; also saved in $STATE/admin.key):
  $KEY

Operator console (live access log, overview, gateway threshold, users and organizations):
  http://127.0.0.1:8081/console/
  Email sign-in: $SIGN_IN
  API-key sign-in: the key above, under "API key".
  The console keeps its token in the tab's memory only: a reload signs out.

Try:
  # an ordinary browser-like request is forwarded (see the X-Client-* headers the app got)
  curl -s -H 'User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0' \\
       -H 'Accept: text/html' -H 'Accept-Language: en' http://127.0.0.1:8080/hello

  # a scanner probing for secrets is rejected with 403
  curl -s -i http://127.0.0.1:8080/.env

  # read the access log back through the admin API, newest first
  curl -s -H "Authorization: Bearer $KEY" 'http://127.0.0.1:8081/api/admin/access-log?limit=5'

  # ... or straight from the Redis Stream
  redis-cli XREVRANGE ${PREFIX}access + - COUNT 2

  # lower the reject threshold live; within a second curl itself gets rejected
  curl -s -X PUT -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
       -d '{"ip_mode":"direct","trusted_cidrs":[],"risk_reject_threshold":0.3}' \\
       http://127.0.0.1:8081/api/admin/gateway/config
  curl -s -i http://127.0.0.1:8080/hello

  # list users
  curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:8081/api/admin/users

Press Ctrl-C to stop everything started here.
MSG

wait
