#!/usr/bin/env bash
# A/B of watchpost-proxy against an earlier revision of itself: both release builds run side by
# side against one demo upstream and are loaded in interleaved rounds (base, new, base, new, …)
# with wrk, so that a change to the request path is measured against what it replaced in the
# same run, on the same machine state. Reports requests/s, p50/p99 and the CPU time per
# request of the proxy process and of Redis (which the access log makes work too), the median
# of the rounds, and the ratios new ÷ base.
#
# Usage: benches/proxy-ab.sh <base-revision>        e.g. benches/proxy-ab.sh 3a3b834
#        ROUNDS=7 DURATION=10 benches/proxy-ab.sh HEAD~3
#
# Knobs: ROUNDS=5, DURATION=8 (seconds per round), CONNECTIONS=32, THREADS=2 (wrk -t),
# PROXY_THREADS=2 ([proxy] threads of both builds), GEO=1 (GeoIP on with the database in
# .cache/geo/ when it is there, and the load sends `X-Forwarded-For: CLIENT_IP`, default
# 193.0.6.139, from a trusted 127.0.0.0/8 peer, as in benches/cpu-per-request.sh),
# REDIS_URL (default redis://127.0.0.1:6379, keys under a unique prefix, deleted at the end),
# CALLGRIND=N (after the rounds, run each build once more under valgrind's callgrind and count
# the instructions and allocator calls per request over N requests, default 0: off; see below),
# ports BASE_PORT=18700 NEW_PORT=18710 UPSTREAM_PORT=18720 (health listeners at port + 1).
# "new" is the working tree. The base revision is checked out as a git worktree under
# .cache/ab/ and built there (its own target directory, kept for the next run); BASE_BIN=<path>
# uses an already built binary of that revision instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

BASE_REV="${1:?usage: benches/proxy-ab.sh <base-revision>}"
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-8}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
PROXY_THREADS="${PROXY_THREADS:-2}"
GEO="${GEO:-1}"
CLIENT_IP="${CLIENT_IP:-193.0.6.139}"
MMDB="$ROOT/.cache/geo/geo-whois-asn-country.mmdb"
[ -s "$MMDB" ] || GEO=0
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
BASE_PORT="${BASE_PORT:-18700}"
NEW_PORT="${NEW_PORT:-18710}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18720}"
PREFIX="ab:$(date +%s):$$:"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'proxy-ab: %s\n' "$*" >&2; exit 1; }

if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    else sudo apt-get install -y wrk >/dev/null; fi
fi
redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 || die "Redis is not reachable at $REDIS_URL (start it with deploy/setup.sh)"

BASE_SHA="$(git rev-parse --verify "$BASE_REV^{commit}")" || die "unknown revision $BASE_REV"
AB="$ROOT/.cache/ab"
if [ -z "${BASE_BIN:-}" ]; then
    WT="$AB/$BASE_SHA"
    mkdir -p "$AB"
    if [ ! -d "$WT" ]; then
        log "checking out $BASE_REV ($BASE_SHA) into .cache/ab/"
        git worktree add --detach "$WT" "$BASE_SHA" >&2
    fi
    log "building the base revision (release)"
    (cd "$WT" && CARGO_TARGET_DIR="$AB/target" cargo build --release --locked -p watchpost-proxy --bins >&2)
    BASE_BIN="$AB/target/release/watchpost-proxy"
fi
[ -x "$BASE_BIN" ] || die "no base binary at $BASE_BIN"
log "building the working tree (release)"
cargo build --release --locked -p watchpost-proxy --bins >&2
NEW_TARGET="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
NEW_BIN="$NEW_TARGET/release/watchpost-proxy"

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

config() { # port name -> config file path (keys every revision knows)
    cat >"$WORK/$2.toml" <<EOF
[proxy]
listen = "127.0.0.1:$1"
upstreams = ["127.0.0.1:$UPSTREAM_PORT"]
health_listen = "127.0.0.1:$(($1 + 1))"
proxy_id = "ab-$2"
threads = $PROXY_THREADS
[redis]
url = "$REDIS_URL"
key_prefix = "${PREFIX}$2:"
[risk]
# One load generator is one client: keep the rate signal from rejecting the benchmark.
rate_limit = 1000000000.0
EOF
    if [ "$GEO" = 1 ]; then
        printf '[geo]\nmmdb_path = "%s"\n[gateway]\nip_mode = "proxy"\ntrusted_cidrs = ["127.0.0.0/8"]\n' \
            "$MMDB" >>"$WORK/$2.toml"
    fi
    echo "$WORK/$2.toml"
}

"$NEW_TARGET/release/watchpost-demo-upstream" --listen "127.0.0.1:$UPSTREAM_PORT" 2>"$WORK/upstream.log" &
PIDS+=($!)
RUST_LOG=warn "$BASE_BIN" --config "$(config "$BASE_PORT" base)" 2>"$WORK/base.log" &
BASE_PID=$!
PIDS+=("$BASE_PID")
RUST_LOG=warn "$NEW_BIN" --config "$(config "$NEW_PORT" new)" 2>"$WORK/new.log" &
NEW_PID=$!
PIDS+=("$NEW_PID")
for port in "$BASE_PORT" "$NEW_PORT"; do
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$((port + 1))/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fsS "http://127.0.0.1:$((port + 1))/healthz" >/dev/null || { cat "$WORK"/*.log >&2; die "a proxy did not start"; }
done
REDIS_PID="$(redis-cli -u "$REDIS_URL" info server | sed -n 's/^process_id:\([0-9]*\).*/\1/p' | tr -d '\r')"
[ -r "/proc/$REDIS_PID/stat" ] || REDIS_PID=""

HEADERS=(-H "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
         -H "Accept: text/html" -H "Accept-Language: en")
[ "$GEO" = 1 ] && HEADERS+=(-H "X-Forwarded-For: $CLIENT_IP")
TICK="$(getconf CLK_TCK)"
cpu() { [ -n "$1" ] && awk '{ print $14 + $15 }' "/proc/$1/stat" || echo 0; }
# CPU time is taken with `perf stat -e task-clock -p PID` when perf works here (µs resolution),
# else from /proc/PID/stat (clock ticks).
PERF=0
perf stat -e task-clock -- true >/dev/null 2>&1 && PERF=1
perf_start() { # out pid
    if [ "$PERF" = 1 ] && [ -n "$2" ]; then
        perf stat -x, -e task-clock -p "$2" -o "$1" >/dev/null 2>&1 &
        echo $!
    fi
}
perf_stop() { # perf-pid out -> clock ticks of CPU (fractional)
    [ -n "$1" ] || return 0
    kill -INT "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    # Not this shell's child (started in a command substitution): poll until it has exited.
    for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
    awk -F, -v t="$TICK" '$3 ~ /^task-clock/ { printf "%.6f", $1 / 1000 * t; exit }' "$2"
}

round() { # name pid port -> "rps p50 p99 proxy_us redis_us non2xx"
    local p0 r0 p1 r1 out req pp rp ticks
    p0="$(cpu "$2")"; r0="$(cpu "$REDIS_PID")"
    pp="$(perf_start "$WORK/perf-proxy.csv" "$2")"; rp="$(perf_start "$WORK/perf-redis.csv" "$REDIS_PID")"
    [ -z "$pp" ] || sleep 0.2
    out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "${HEADERS[@]}" "http://127.0.0.1:$3/")"
    p1="$(cpu "$2")"; r1="$(cpu "$REDIS_PID")"
    ticks="$(perf_stop "$pp" "$WORK/perf-proxy.csv")"; [ -z "$ticks" ] || { p0=0; p1="$ticks"; }
    ticks="$(perf_stop "$rp" "$WORK/perf-redis.csv")"; [ -z "$ticks" ] || { r0=0; r1="$ticks"; }
    echo "$out" >"$WORK/$1.$(date +%s%N).txt"
    req="$(echo "$out" | awk '/requests in/ { print $1; exit }')"
    echo "$out" | awk -v req="$req" -v dp="$(awk -v a="$p1" -v b="$p0" 'BEGIN { print a - b }')" -v dr="$(awk -v a="$r1" -v b="$r0" 'BEGIN { print a - b }')" -v t="$TICK" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /Requests\/sec:/ { rps = $2 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { bad = $NF }
        END { printf "%.0f %.3f %.3f %.1f %.1f %d\n", rps, p50, p99, dp / t * 1e6 / req, dr / t * 1e6 / req, bad + 0 }'
}

log "warm-up"
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "${HEADERS[@]}" "http://127.0.0.1:$BASE_PORT/" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "${HEADERS[@]}" "http://127.0.0.1:$NEW_PORT/" >/dev/null
: >"$WORK/base.rounds"; : >"$WORK/new.rounds"
for i in $(seq 1 "$ROUNDS"); do
    log "round $i/$ROUNDS"
    round base "$BASE_PID" "$BASE_PORT" >>"$WORK/base.rounds"
    round new "$NEW_PID" "$NEW_PORT" >>"$WORK/new.rounds"
done

# Instructions per request, which the machine's load does not change: each build runs alone
# under `valgrind --tool=callgrind` with instrumentation off while it starts and is warmed up,
# on for exactly the load of wrk -t1 -c$CONNECTIONS stopped after CALLGRIND requests (a wrk
# script), then off again once the access-log writer has drained. Per request = collected
# instructions (every thread: request path, writer, timers) ÷ the entries the build added to
# its stream meanwhile (each request writes one). Allocator calls per request count the calls
# of mimalloc's entry points that Rust's global allocator calls (mi_malloc_aligned,
# mi_zalloc_aligned, mi_realloc_aligned), as the PROFILE=1 uprobes of cpu-per-request.sh do.
CALLGRIND="${CALLGRIND:-0}"
cg_run() { # name bin port -> "instructions_per_request allocs_per_request entries"
    local name="$1" bin="$2" port="$3" pid out e0 e1 stream
    out="$WORK/callgrind.$name.out"
    stream="${PREFIX}cg-$name:access"
    kill "$( [ "$name" = base ] && echo "$BASE_PID" || echo "$NEW_PID")" 2>/dev/null || true
    sleep 0.5
    RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        "$bin" --config "$(config "$port" "cg-$name")" 2>"$WORK/cg-$name.log" &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 600); do
        curl -fsS "http://127.0.0.1:$((port + 1))/healthz" >/dev/null 2>&1 && break
        sleep 0.2
    done
    wrk -t1 -c"$CONNECTIONS" -d3s "${HEADERS[@]}" "http://127.0.0.1:$port/" >/dev/null
    sleep 2
    e0="$(redis-cli -u "$REDIS_URL" xinfo stream "$stream" 2>/dev/null | awk 'prev == "entries-added" { print; exit } { prev = $0 }')"
    callgrind_control -i on "$pid" >/dev/null
    printf 'local n = 0\nresponse = function() n = n + 1; if n >= %d then wrk.thread:stop() end end\n' \
        "$CALLGRIND" >"$WORK/stop.lua"
    wrk -t1 -c"$CONNECTIONS" -d600s -s "$WORK/stop.lua" "${HEADERS[@]}" "http://127.0.0.1:$port/" >/dev/null
    sleep 3
    callgrind_control -i off "$pid" >/dev/null
    e1="$(redis-cli -u "$REDIS_URL" xinfo stream "$stream" 2>/dev/null | awk 'prev == "entries-added" { print; exit } { prev = $0 }')"
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    awk -v n="$((e1 - e0))" '
        /^fn=\(/ || /^cfn=\(/ {
            id = $1; sub(/^c?fn=/, "", id)
            if (NF > 1) { name[id] = $2 }
            if ($1 ~ /^cfn/) { callee = name[id] }
        }
        /^calls=/ { split($1, c, "="); if (callee ~ /^mi_(malloc|zalloc|realloc)_aligned$/) allocs += c[2] }
        /^totals:/ { ir = $2 }
        /^summary:/ { if (ir == "") ir = $2 }
        END { printf "%.0f %.1f %d\n", ir / n, allocs / n, n }' "$out"
}
if [ "$CALLGRIND" -gt 0 ] 2>/dev/null; then
    command -v valgrind >/dev/null || die "CALLGRIND needs valgrind"
    log "callgrind: $CALLGRIND requests per build"
    cg_run base "$BASE_BIN" "$BASE_PORT" >"$WORK/cg.base"
    cg_run new "$NEW_BIN" "$NEW_PORT" >"$WORK/cg.new"
    CG_BASE="$(cat "$WORK/cg.base")"
    CG_NEW="$(cat "$WORK/cg.new")"
fi

median() { # file column
    sort -g -k"$2","$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { print v[int((NR + 1) / 2)] }'
}
echo
echo "watchpost-proxy A/B: base $BASE_REV ($(git rev-parse --short "$BASE_SHA")) vs working tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- || echo '+changes')), $ROUNDS interleaved rounds of wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, proxy threads $PROXY_THREADS, GeoIP $([ "$GEO" = 1 ] && echo "on (X-Forwarded-For $CLIENT_IP)" || echo off), CPU from $([ "$PERF" = 1 ] && echo "perf stat task-clock" || echo "/proc stat"), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| build | requests/s | p50 ms | p99 ms | proxy CPU µs/request | Redis CPU µs/request | non-2xx |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for b in base new; do
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$b" "$(median "$WORK/$b.rounds" 1)" "$(median "$WORK/$b.rounds" 2)" \
        "$(median "$WORK/$b.rounds" 3)" "$(median "$WORK/$b.rounds" 4)" "$(median "$WORK/$b.rounds" 5)" "$(median "$WORK/$b.rounds" 6)"
done
awk -v a="$(median "$WORK/new.rounds" 1)" -v b="$(median "$WORK/base.rounds" 1)" \
    -v c="$(median "$WORK/new.rounds" 4)" -v d="$(median "$WORK/base.rounds" 4)" \
    'BEGIN { printf "\nnew ÷ base: throughput %.2f×, proxy CPU per request %.2f×\n", a / b, c / d }'
echo
if [ -n "${CG_BASE:-}" ]; then
    echo
    echo "Under callgrind, wrk -t1 -c$CONNECTIONS stopped after $CALLGRIND requests:"
    echo
    echo "| build | instructions/request | allocator calls/request | requests logged |"
    echo "|---|---:|---:|---:|"
    printf '| base | %s | %s | %s |\n' $CG_BASE
    printf '| new | %s | %s | %s |\n' $CG_NEW
    awk -v a="${CG_NEW%% *}" -v b="${CG_BASE%% *}" 'BEGIN { printf "\nnew ÷ base: instructions per request %.3f×\n", a / b }'
fi
echo
echo "rounds (rps p50 p99 proxy_us redis_us non2xx):"
paste -d'|' "$WORK/base.rounds" "$WORK/new.rounds" | sed 's/^/  base: /; s/|/   new: /'
