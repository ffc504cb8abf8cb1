#!/usr/bin/env bash
# Run every check and test of the workspace, the way CI does:
# services up (deploy/setup.sh), the public GeoIP test database and axe-core fetched, formatting, lints,
# the Prometheus alert rules checked and unit-tested with promtool, the Grafana dashboard parsed,
# then all tests against real Redis and PostgreSQL, then the admin API fuzzed with schemathesis.
# The Redis Cluster tests start (and stop) their own 3-master clusters on free loopback ports
# through deploy/redis-cluster.sh; setup.sh makes sure redis-server and redis-cli are there.
set -euo pipefail
cd "$(dirname "$0")/.."

export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export DATABASE_URL="${DATABASE_URL:-postgres://watchpost:watchpost@127.0.0.1:5432/watchpost}"

step() { printf '\n==> %s\n' "$*"; }

step "services"
bash deploy/setup.sh

step "public GeoIP test database"
if [ "${WATCHPOST_SKIP_REAL_GEO:-0}" = 1 ]; then
  echo "WATCHPOST_SKIP_REAL_GEO=1: skipping the fetch (the real-database test will say it skipped)"
else
  bash deploy/fetch-geo-db.sh
fi

step "axe-core for the console's accessibility check"
bash deploy/fetch-axe.sh

step "Prometheus alert rules and Grafana dashboard"
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts.test.yml)
python3 -m json.tool deploy/grafana/watchpost.json >/dev/null
echo "deploy/grafana/watchpost.json parses (its metric names are checked against live exports by the admin API's metrics tests)"

step "Redis Cluster tooling (the cluster tests start their own clusters)"
bash -n deploy/redis-cluster.sh
command -v redis-server >/dev/null && grep -q create <<<"$(redis-cli --cluster help 2>&1)"
echo "redis-server and redis-cli --cluster present"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked --no-fail-fast

step "schemathesis against watchpost-admin"
bash deploy/schemathesis.sh
