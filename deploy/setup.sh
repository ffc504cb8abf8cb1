#!/usr/bin/env bash
# Make Redis and PostgreSQL available on loopback for Watchpost, idempotently.
#
# - If REDIS_URL / DATABASE_URL already answer, they are used as they are.
# - Otherwise what is missing is installed with apt-get (needs root) and started:
#   redis-server, postgresql, and the build tools the workspace needs (cmake for Pingora).
# - The development role watchpost/watchpost (LOGIN, CREATEDB) is created through the local
#   `postgres` superuser, so the default DATABASE_URL works whether PostgreSQL uses
#   scram-sha-256 (fresh Debian) or trust auth on 127.0.0.1.
# - Debian's chromium and chromium-driver are installed for the console's browser test.
# - It waits until both answer and says what it did.
set -euo pipefail

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DATABASE_URL="${DATABASE_URL:-postgres://watchpost:watchpost@127.0.0.1:5432/watchpost}"
PG_ROLE="${WATCHPOST_PG_ROLE:-watchpost}"
PG_PASSWORD="${WATCHPOST_PG_PASSWORD:-watchpost}"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
  # Install Debian packages that are missing; apt-get needs root.
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else die "need root to install: ${missing[*]}"; fi
  else
    SUDO=""
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  say "installing: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

wait_for() { # wait_for <what> <seconds> <command...>
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 "$((secs * 5))"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what did not answer within ${secs}s"
}

# --- build tools -------------------------------------------------------------------------
need_tools=()
command -v cmake >/dev/null 2>&1 || need_tools+=(cmake)
command -v cc >/dev/null 2>&1 || need_tools+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_tools+=(pkg-config)
command -v redis-cli >/dev/null 2>&1 || need_tools+=(redis-tools)
command -v psql >/dev/null 2>&1 || need_tools+=(postgresql-client)
command -v npm >/dev/null 2>&1 || need_tools+=(npm)
command -v curl >/dev/null 2>&1 || need_tools+=(curl)
command -v python3 >/dev/null 2>&1 || need_tools+=(python3)
# promtool (checks and unit-tests deploy/prometheus/alerts.yml) comes with Debian's prometheus.
command -v promtool >/dev/null 2>&1 || need_tools+=(prometheus)
if [ ${#need_tools[@]} -gt 0 ]; then apt_install "${need_tools[@]}"; else say "build tools present (cmake, cc, pkg-config, redis-cli, psql, npm, curl, python3, promtool)"; fi
# Debian's prometheus package also enables a Prometheus server on :9090, the proxy's default
# health listener: only its promtool is wanted here, so a server it started is stopped again.
if printf '%s\n' "${need_tools[@]}" | grep -qx prometheus && command -v systemctl >/dev/null 2>&1 \
  && systemctl is-enabled prometheus >/dev/null 2>&1; then
  say "disabling the Prometheus server the package enabled (port 9090 is the proxy's health listener)"
  ${SUDO:-} systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# --- Browser for the operator console's tests ----------------------------------------------
# Debian's chromium and its chromedriver (/usr/bin/chromium, /usr/bin/chromedriver) drive the
# console in admin-api/tests/it/console.rs; the test fails when they are missing.
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  say "chromium and chromedriver present"
else
  apt_install chromium chromium-driver
fi

# --- Redis -------------------------------------------------------------------------------
redis_ok() { redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG; }
if redis_ok; then
  say "Redis answers at $REDIS_URL: using it"
else
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  port=$(printf '%s' "$REDIS_URL" | sed -E 's#^redis://([^@/]*@)?[^:/]*:?([0-9]*).*#\2#')
  port=${port:-6379}
  say "starting redis-server on 127.0.0.1:$port (no persistence)"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/watchpost.log >/dev/null
  wait_for "Redis at $REDIS_URL" 20 redis_ok
  say "Redis is up at $REDIS_URL"
fi

# The Redis Cluster tests start their own masters with deploy/redis-cluster.sh: they need
# redis-server even when REDIS_URL is served from elsewhere, and redis-cli's --cluster.
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
grep -q "create" <<<"$(redis-cli --cluster help 2>&1)" || die "redis-cli lacks --cluster (Redis >= 5 needed)"
say "redis-server and redis-cli --cluster present (deploy/redis-cluster.sh)"

# --- PostgreSQL --------------------------------------------------------------------------
pg_ok() { psql "$DATABASE_URL" -Atqc 'select 1' 2>/dev/null | grep -q 1; }
# The server itself answers (any auth outcome) on 127.0.0.1:5432?
pg_server_up() {
  command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432
}
as_postgres() { # run psql as the local superuser over the Unix socket (peer or trust auth)
  if [ "$(id -un)" = postgres ]; then psql -v ON_ERROR_STOP=1 -Atq "$@";
  elif [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- psql -v ON_ERROR_STOP=1 -Atq "$@";
  else sudo -u postgres psql -v ON_ERROR_STOP=1 -Atq "$@"; fi
}

if pg_ok; then
  say "PostgreSQL answers at the DATABASE_URL: using it"
else
  if ! pg_server_up; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
      apt_install postgresql
    fi
    ver=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "starting PostgreSQL $ver cluster 'main'"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null \
      || pg_ctlcluster "$ver" main start
    wait_for "PostgreSQL on 127.0.0.1:5432" 30 pg_server_up
  fi
  # The server runs but our role cannot log in yet: create or repair it.
  say "creating development role '$PG_ROLE' (LOGIN, CREATEDB) through the postgres superuser"
  as_postgres -d postgres <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE "$PG_ROLE" LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE "$PG_ROLE" LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END
\$\$;
SQL
  dbname=$(printf '%s' "$DATABASE_URL" | sed -E 's#^.*/([^/?]+)(\?.*)?$#\1#')
  if [ -n "$dbname" ] && [ "$(as_postgres -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$dbname'")" != 1 ]; then
    say "creating database '$dbname' owned by '$PG_ROLE'"
    as_postgres -d postgres -c "CREATE DATABASE \"$dbname\" OWNER \"$PG_ROLE\""
  fi
  wait_for "PostgreSQL at the DATABASE_URL" 20 pg_ok
  say "PostgreSQL is up and the DATABASE_URL logs in"
fi

say "ready: REDIS_URL=$REDIS_URL"
say "ready: DATABASE_URL=$(printf "%s" "$DATABASE_URL" | sed -E "s#://([^:@/]*):[^@/]*@#://\\1:***@#")"
