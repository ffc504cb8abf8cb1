#!/usr/bin/env bash
# Access-log delivery across Redis outages, and the cost of exactly-once batches.
#
#   a) outage runs (watchpost-log-writer-bench --mode outage): the proxy's own writer at RATE
#      entries/s; its own redis-server (append-only, fsync before every reply) is killed with
#      SIGKILL for 2 s, then for 30 s, and restarted on the same data. Every request id in the
#      stream is counted: written, duplicated, dropped (counted by the writer), missing, and the
#      largest buffer seen against [access_log] buffer_entries / buffer_bytes (defaults).
#   b) raw A/B (--mode raw): the same batches sent back to back as the plain pipeline the writer
#      used before and as the exactly-once script, ROUNDS rounds each;
#   c) the writer's drain rate (--mode writer), ROUNDS rounds.
#
# Knobs (environment): RATE=5000 ENTRIES=100000 ROUNDS=3 PORT=6399
# REDIS_URL=redis://127.0.0.1:6379 (b and c write scratch keys under bench:log:*, deleted after).
# Takes about a minute plus the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${RATE:-5000}"
ENTRIES="${ENTRIES:-100000}"
ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-6399}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
command -v redis-server >/dev/null || { echo "redis-server is required" >&2; exit 1; }

cargo build --release --locked -p watchpost-benches --bin watchpost-log-writer-bench >&2
BIN="${CARGO_TARGET_DIR:-target}/release/watchpost-log-writer-bench"

for outage in 2 30; do
    "$BIN" --mode outage --redis-port "$PORT" --rate "$RATE" --before-secs 2 \
        --outage-secs "$outage" --after-secs 3
done
"$BIN" --mode raw --redis-url "$REDIS_URL" --key-prefix "bench:log:raw:" \
    --entries "$ENTRIES" --rounds "$ROUNDS"
for r in $(seq 1 "$ROUNDS"); do
    "$BIN" --mode writer --redis-url "$REDIS_URL" --key-prefix "bench:log:writer:$r:" \
        --entries "$ENTRIES"
    redis-cli -u "$REDIS_URL" --scan --pattern "bench:log:writer:$r:*" |
        xargs -r redis-cli -u "$REDIS_URL" del >/dev/null
done
