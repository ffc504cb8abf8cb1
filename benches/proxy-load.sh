#!/usr/bin/env bash
# Load test of watchpost-proxy: drives HTTP load at the demo upstream directly and through the
# proxy, and reports requests/s, p50/p99 latency and access-log stream completeness
# (stream entries added ÷ requests served).
#
# Usage: benches/proxy-load.sh            (10 s per run, 32 connections)
#        DURATION=30 CONNECTIONS=64 benches/proxy-load.sh
#
# Needs a running Redis at REDIS_URL (default redis://127.0.0.1:6379; deploy/setup.sh starts
# one). Installs wrk (Debian package) when missing. Ports can be moved with UPSTREAM_PORT,
# PROXY_PORT and HEALTH_PORT. All Redis keys it writes live under a unique prefix and are
# deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18300}"
PROXY_PORT="${PROXY_PORT:-18380}"
HEALTH_PORT="${HEALTH_PORT:-18390}"
PREFIX="bench:$(date +%s):$$:"

log() { printf '==> %s\n' "$*" >&2; }

if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    if [ "$(id -u)" -eq 0 ]; then
        apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    else
        sudo apt-get install -y wrk >/dev/null
    fi
fi

if ! redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
    echo "Redis is not reachable at $REDIS_URL (start it with deploy/setup.sh)" >&2
    exit 1
fi

log "building release binaries"
cargo build --release -p watchpost-proxy --bins >&2
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
BIN="$TARGET_DIR/release"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    redis-cli -u "$REDIS_URL" --scan --pattern "${PREFIX}*" | while read -r k; do
        redis-cli -u "$REDIS_URL" del "$k" >/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/proxy.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PROXY_PORT"
upstreams = ["127.0.0.1:$UPSTREAM_PORT"]
health_listen = "127.0.0.1:$HEALTH_PORT"
proxy_id = "bench"
threads = 2
[redis]
url = "$REDIS_URL"
key_prefix = "$PREFIX"
[risk]
# One load generator is one client IP: keep the rate signal from rejecting the benchmark.
rate_limit = 1000000000.0
EOF

"$BIN/watchpost-demo-upstream" --listen "127.0.0.1:$UPSTREAM_PORT" 2>"$WORK/upstream.log" &
PIDS+=($!)
RUST_LOG=warn "$BIN/watchpost-proxy" --config "$WORK/proxy.toml" 2>"$WORK/proxy.log" &
PIDS+=($!)

for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$HEALTH_PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$HEALTH_PORT/healthz" >/dev/null || { cat "$WORK/proxy.log" >&2; exit 1; }

HEADERS=(-H "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
         -H "Accept: text/html" -H "Accept-Language: en")

run_wrk() { # url outfile
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "${HEADERS[@]}" "$1" >"$2"
}
field() { # file pattern -> value
    awk -v p="$2" '$1 == p { print $2; exit }' "$1"
}
requests() { # file -> completed requests
    awk '/requests in/ { print $1; exit }' "$1"
}
non2xx() {
    awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$1"
}

STREAM="${PREFIX}access"
log "direct: ${DURATION}s, $CONNECTIONS connections"
run_wrk "http://127.0.0.1:$UPSTREAM_PORT/" "$WORK/direct.txt"
XLEN_BEFORE="$(redis-cli -u "$REDIS_URL" xlen "$STREAM")"
log "through the proxy: ${DURATION}s, $CONNECTIONS connections"
run_wrk "http://127.0.0.1:$PROXY_PORT/" "$WORK/proxy.txt"

# Let the writer drain what is buffered before counting.
for _ in $(seq 1 100); do
    depth="$(curl -fsS "http://127.0.0.1:$HEALTH_PORT/healthz" | sed -n 's/.*"buffer_depth":\([0-9]*\).*/\1/p')"
    [ "${depth:-1}" = "0" ] && break
    sleep 0.1
done
XLEN_AFTER="$(redis-cli -u "$REDIS_URL" xlen "$STREAM")"
HEALTH="$(curl -fsS "http://127.0.0.1:$HEALTH_PORT/healthz")"

SERVED="$(requests "$WORK/proxy.txt")"
ADDED=$((XLEN_AFTER - XLEN_BEFORE))
COMPLETENESS="$(awk -v a="$ADDED" -v s="$SERVED" 'BEGIN { if (s > 0) printf "%.4f", a / s; else print "n/a" }')"

echo
echo "watchpost-proxy load test: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-10s %12s %10s %10s %10s %10s\n' "target" "requests/s" "p50" "p99" "requests" "non-2xx"
printf '%-10s %12s %10s %10s %10s %10s\n' "direct" "$(field "$WORK/direct.txt" Requests/sec:)" \
    "$(field "$WORK/direct.txt" 50%)" "$(field "$WORK/direct.txt" 99%)" "$(requests "$WORK/direct.txt")" "$(non2xx "$WORK/direct.txt")"
printf '%-10s %12s %10s %10s %10s %10s\n' "proxy" "$(field "$WORK/proxy.txt" Requests/sec:)" \
    "$(field "$WORK/proxy.txt" 50%)" "$(field "$WORK/proxy.txt" 99%)" "$SERVED" "$(non2xx "$WORK/proxy.txt")"
echo "stream completeness: $ADDED entries / $SERVED requests served = $COMPLETENESS"
echo "proxy health: $HEALTH"
