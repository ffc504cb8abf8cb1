#!/usr/bin/env bash
# Gateway comparison: the demo upstream directly, nginx configured as the equivalent gateway,
# and watchpost-proxy, side by side in one run on this machine against one upstream — plus
# watchpost-pingora-floor, a bare Pingora proxy configured like watchpost-proxy but doing none
# of its work, which shows how much of watchpost's cost per request is the framework's.
#
#   a) max throughput (wrk): requests/s, p50/p99, non-2xx, CPU µs per request of each server
#      process (from /proc/<pid>/stat utime+stime before and after), and the ratios;
#   b) fixed rate (oha -q RATE --latency-correction, so the tail is not hidden by coordinated
#      omission): p50/p99/p99.9;
#   c) stream completeness during watchpost's max-throughput rounds: entries added to the
#      Redis Stream ÷ requests the proxy served (its own counter) and ÷ requests wrk counted;
#   d) Redis outage: watchpost's p50/p99 at the fixed rate with its Redis healthy, then
#      stopped; then Redis is restarted and the script checks that writing resumes;
#   e) the access-log writer's drain rate (watchpost-log-writer-bench, the proxy's own
#      pipeline) against raw pipelined XADD from redis-benchmark, same pipeline depth.
#
# CPU µs per request is the CPU time (user + system) the process used during the run divided
# by the requests completed: "gateway" is nginx (master + workers) or watchpost-proxy,
# "upstream" the demo upstream, "redis" the scratch redis-server (watchpost's access log).
#
# Each of a) and b) runs ROUNDS interleaved rounds (direct, nginx, watchpost, direct, …) and
# reports the median round. The summary is one markdown document on stdout (progress goes to
# stderr); raw outputs are written to a scratch work directory, kept with KEEP=1.
#
# Usage: benches/gateway-compare.sh                       (10 s per run, 3 rounds)
#        DURATION=30 ROUNDS=5 RATE=8000 benches/gateway-compare.sh
#        KEEP=1 DURATION=3 ROUNDS=1 benches/gateway-compare.sh      (quick check, keep outputs)
#
# Knobs (environment):
#   DURATION=10        seconds per measured run (wrk -d, oha -z)
#   ROUNDS=3           interleaved rounds per measurement; the median round is reported (an
#                      odd count gives a true median; with an even one the lower middle)
#   CONNECTIONS=64     connections of wrk and oha
#   WRK_THREADS=2      wrk -t
#   RATE=5000          fixed request rate of the oha runs (req/s); keep it well below every
#                      target's max throughput, or the fixed-rate figures measure a queue
#   WARMUP=2           seconds of wrk warm-up per target before the first round
#   PROXY_THREADS=2    watchpost [proxy] threads, and nginx worker_processes
#   CLIENT_IP=193.0.6.139   public IPv4 sent in X-Forwarded-For (the GeoIP database has it)
#   LOG_ENTRIES=200000 entries per log-writer run (and XADDs per redis-benchmark run), rounded
#                      up to a multiple of BATCH
#   BATCH=512          [access_log] batch_max_entries, and redis-benchmark -P
#   STREAM_MAX_LEN=1000000  [access_log] stream_max_len, and XADD MAXLEN ~
#   OHA_VERSION=1.16.0 oha version installed with cargo into .cache/tools
#   UPSTREAM_PORT=18610 NGINX_PORT=18620 PROXY_PORT=18630 HEALTH_PORT=18640 REDIS_PORT=18650
#   FLOOR_PORT=18660
#   KEEP=0             1: keep the work directory (configs, logs, raw wrk/oha/redis outputs)
#
# What it installs when missing (as root, or with sudo): the Debian packages wrk, nginx,
# libnginx-mod-http-geoip2, redis-server, redis-tools, curl, jq (and npm when the GeoIP
# database still has to be fetched); oha with `cargo install --locked` into .cache/tools.
# It fetches the GeoIP database with deploy/fetch-geo-db.sh and builds the release binaries.
#
# It runs its own Redis (no persistence) on REDIS_PORT, so stopping it for the outage run
# touches no shared Redis; its own nginx with a prefix inside the work directory; the demo
# upstream; and watchpost-proxy. Every process it started is stopped on exit, Ctrl-C included.
#
# The two gateways do the same work per request except risk scoring (and watchpost's
# per-minute request counters in Redis): realip / client-IP
# resolution from X-Forwarded-For behind a trusted 127.0.0.1/32 hop, a GeoIP country lookup
# in the same .mmdb, X-Client-IP / X-Client-Country / X-Request-Id / X-Forwarded-For set for
# the upstream, keep-alive to the upstream, and one access-log record per request with the
# stream entry's fields. nginx writes its log to a file with `buffer=64k flush=1s`;
# watchpost batches too (up to BATCH entries per Redis pipeline, flush_interval_ms 2).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
# shellcheck source=benches/lib/nginx-gateway.sh
. benches/lib/nginx-gateway.sh

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
WRK_THREADS="${WRK_THREADS:-2}"
RATE="${RATE:-5000}"
WARMUP="${WARMUP:-2}"
PROXY_THREADS="${PROXY_THREADS:-2}"
CLIENT_IP="${CLIENT_IP:-193.0.6.139}"
LOG_ENTRIES="${LOG_ENTRIES:-200000}"
BATCH="${BATCH:-512}"
STREAM_MAX_LEN="${STREAM_MAX_LEN:-1000000}"
OHA_VERSION="${OHA_VERSION:-1.16.0}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18610}"
NGINX_PORT="${NGINX_PORT:-18620}"
PROXY_PORT="${PROXY_PORT:-18630}"
HEALTH_PORT="${HEALTH_PORT:-18640}"
REDIS_PORT="${REDIS_PORT:-18650}"
FLOOR_PORT="${FLOOR_PORT:-18660}"
KEEP="${KEEP:-0}"
TRUSTED_CIDR="127.0.0.1/32"
KEY_PREFIX="wp:"
STREAM="${KEY_PREFIX}access"
GEOIP2_MODULE=/usr/lib/nginx/modules/ngx_http_geoip2_module.so
MMDB="$ROOT/.cache/geo/geo-whois-asn-country.mmdb"
OHA="$ROOT/.cache/tools/bin/oha"
COMMAND_LINE="DURATION=$DURATION ROUNDS=$ROUNDS CONNECTIONS=$CONNECTIONS WRK_THREADS=$WRK_THREADS RATE=$RATE WARMUP=$WARMUP PROXY_THREADS=$PROXY_THREADS LOG_ENTRIES=$LOG_ENTRIES BATCH=$BATCH STREAM_MAX_LEN=$STREAM_MAX_LEN benches/gateway-compare.sh"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'gateway-compare: %s\n' "$*" >&2
    exit 1
}
# die with the tail of a log file.
die_log() { # file message
    printf 'gateway-compare: %s\n--- last lines of %s ---\n' "$2" "$1" >&2
    tail -n 40 "$1" >&2 2>/dev/null || true
    exit 1
}

for knob in DURATION ROUNDS CONNECTIONS WRK_THREADS RATE WARMUP PROXY_THREADS LOG_ENTRIES BATCH \
    STREAM_MAX_LEN UPSTREAM_PORT NGINX_PORT PROXY_PORT HEALTH_PORT REDIS_PORT FLOOR_PORT; do
    [[ "${!knob}" =~ ^[1-9][0-9]*$ ]] || die "$knob must be a positive integer (got '${!knob}')"
done

# redis-benchmark -P sends whole pipelines, so both writers get a whole number of batches.
LOG_ENTRIES=$(((LOG_ENTRIES + BATCH - 1) / BATCH * BATCH))

# ------------------------------------------------------------------------- tools ------
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
apt_install() {
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y "$@" >/dev/null 2>&1 ||
        { as_root apt-get update >/dev/null && as_root apt-get install -y "$@" >/dev/null; } ||
        die "apt-get install $* failed"
}
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -f "$GEOIP2_MODULE" ] || missing+=(libnginx-mod-http-geoip2)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
if [ ! -s "$MMDB" ] && ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
"$NGINX" -V 2>&1 | grep -q -- '--with-http_realip_module' ||
    die "$NGINX was built without the realip module (nginx -V does not list --with-http_realip_module)"
[ -f "$GEOIP2_MODULE" ] || die "the geoip2 module is not at $GEOIP2_MODULE (package libnginx-mod-http-geoip2)"

if [ ! -x "$OHA" ] || [ "$("$OHA" --version 2>/dev/null)" != "oha $OHA_VERSION" ]; then
    log "installing oha $OHA_VERSION into .cache/tools (cargo install, a few minutes)"
    # Default features: oha does not build without a TLS backend.
    cargo install oha --locked --version "$OHA_VERSION" --root "$ROOT/.cache/tools" >&2 ||
        die "cargo install oha $OHA_VERSION failed"
fi

log "fetching the GeoIP database"
deploy/fetch-geo-db.sh >&2 || die "deploy/fetch-geo-db.sh failed"
[ -s "$MMDB" ] || die "no GeoIP database at $MMDB after deploy/fetch-geo-db.sh"

log "building release binaries"
cargo build --release --locked -p watchpost-proxy -p watchpost-benches --bins >&2 ||
    die "cargo build failed"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
BIN="$TARGET_DIR/release"
for b in watchpost-proxy watchpost-demo-upstream watchpost-log-writer-bench watchpost-pingora-floor; do
    [ -x "$BIN/$b" ] || die "$BIN/$b was not built"
done

for port in "$UPSTREAM_PORT" "$NGINX_PORT" "$PROXY_PORT" "$HEALTH_PORT" "$REDIS_PORT" "$FLOOR_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is already in use (move it with the *_PORT knobs)"
    fi
done

# -------------------------------------------------------------- work dir, cleanup ------
WORK="$(mktemp -d -t watchpost-gateway-compare.XXXXXX)"
# nginx workers drop to an unprivileged user and must reach their temp paths.
chmod 755 "$WORK"
mkdir -p "$WORK/nginx/tmp" "$WORK/redis" "$WORK/raw"
UPSTREAM_PID="" NGINX_PID="" PROXY_PID="" REDIS_PID="" FLOOR_PID=""
stop_pid() { # pid
    [ -n "$1" ] || return 0
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$PROXY_PID"
    stop_pid "$FLOOR_PID"
    stop_pid "$NGINX_PID"
    stop_pid "$UPSTREAM_PID"
    stop_pid "$REDIS_PID"
    if [ "$KEEP" = "1" ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ processes ------
wait_for() { # seconds command...
    local secs="$1"
    shift
    for _ in $(seq 1 $((secs * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}
alive() { kill -0 "$1" 2>/dev/null; }

REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
start_redis() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize no --dir "$WORK/redis" >>"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    wait_for 10 rcli ping || die_log "$WORK/redis.log" "redis-server did not start on port $REDIS_PORT"
}
log "starting redis-server on :$REDIS_PORT, the demo upstream on :$UPSTREAM_PORT"
start_redis
"$BIN/watchpost-demo-upstream" --listen "127.0.0.1:$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 &
UPSTREAM_PID=$!
wait_for 10 curl -fsS "http://127.0.0.1:$UPSTREAM_PORT/" ||
    die_log "$WORK/upstream.log" "the demo upstream did not answer on port $UPSTREAM_PORT"

cat >"$WORK/proxy.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PROXY_PORT"
upstreams = ["127.0.0.1:$UPSTREAM_PORT"]
health_listen = "127.0.0.1:$HEALTH_PORT"
proxy_id = "bench"
threads = $PROXY_THREADS

[redis]
url = "$REDIS_URL"
key_prefix = "$KEY_PREFIX"

[access_log]
stream_max_len = $STREAM_MAX_LEN
batch_max_entries = $BATCH

[geo]
mmdb_path = "$MMDB"

[gateway]
ip_mode = "proxy"
trusted_cidrs = ["$TRUSTED_CIDR"]

[risk]
# One load generator is one client IP: keep the rate signal from rejecting the benchmark.
rate_limit = 1000000000.0
EOF

# The same gateway in nginx (benches/lib/nginx-gateway.sh, shared with cpu-per-request.sh).
nginx_gateway_conf "$WORK/nginx" "$PROXY_THREADS" "$NGINX_PORT" "$UPSTREAM_PORT" "$MMDB" "$TRUSTED_CIDR" \
    "$GEOIP2_MODULE" >"$WORK/nginx/nginx.conf"

log "starting nginx on :$NGINX_PORT and watchpost-proxy on :$PROXY_PORT"
NGINX_ARGS=(-p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" -g 'daemon off;')
"$NGINX" -t "${NGINX_ARGS[@]}" >"$WORK/nginx/test.log" 2>&1 ||
    die_log "$WORK/nginx/test.log" "nginx -t refused the generated config"
"$NGINX" "${NGINX_ARGS[@]}" >"$WORK/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
wait_for 10 curl -fsS "http://127.0.0.1:$NGINX_PORT/" ||
    die_log "$WORK/nginx/error.log" "nginx did not answer on port $NGINX_PORT"

RUST_LOG=warn "$BIN/watchpost-proxy" --config "$WORK/proxy.toml" >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
wait_for 20 curl -fsS "http://127.0.0.1:$HEALTH_PORT/healthz" ||
    die_log "$WORK/proxy.log" "watchpost-proxy did not answer on its health port $HEALTH_PORT"

"$BIN/watchpost-pingora-floor" --listen "127.0.0.1:$FLOOR_PORT" --upstream "127.0.0.1:$UPSTREAM_PORT" \
    --threads "$PROXY_THREADS" >"$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
wait_for 20 curl -fsS "http://127.0.0.1:$FLOOR_PORT/" ||
    die_log "$WORK/floor.log" "watchpost-pingora-floor did not answer on port $FLOOR_PORT"
healthz() { curl -fsS "http://127.0.0.1:$HEALTH_PORT/healthz"; }
health_field() { healthz | jq -r ".$1"; }
[ "$(health_field geo)" = "enabled" ] || die_log "$WORK/proxy.log" "watchpost-proxy has GeoIP disabled"
[ "$(health_field ip_mode)" = "proxy" ] || die_log "$WORK/proxy.log" "watchpost-proxy is not in ip_mode proxy"

# ------------------------------------------------------------------- the load ------
UA="Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
HEADERS=(-H "User-Agent: $UA" -H "Accept: text/html,application/xhtml+xml"
    -H "Accept-Language: en-US,en;q=0.9" -H "X-Forwarded-For: $CLIENT_IP")
TARGETS=(direct nginx pingora-floor watchpost)
url_of() {
    case "$1" in
    direct) echo "http://127.0.0.1:$UPSTREAM_PORT/" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT/" ;;
    pingora-floor) echo "http://127.0.0.1:$FLOOR_PORT/" ;;
    watchpost) echo "http://127.0.0.1:$PROXY_PORT/" ;;
    esac
}

# Every target answers 200; both gateways tell the upstream the same client, country and
# forwarding chain.
declare -A SEEN
for t in "${TARGETS[@]}"; do
    code="$(curl -sS -o "$WORK/raw/check-$t.json" -w '%{http_code}' "${HEADERS[@]}" "$(url_of "$t")")" ||
        die "$t did not answer"
    [ "$code" = "200" ] || die "$t answered $code instead of 200: $(cat "$WORK/raw/check-$t.json")"
    SEEN[$t]="$(jq -c '{client_ip, client_country, forwarded_for, request_id_set: (.request_id != "")}' "$WORK/raw/check-$t.json")"
    if [ "$t" = nginx ] || [ "$t" = watchpost ]; then
        [ "$(jq -r .client_ip "$WORK/raw/check-$t.json")" = "$CLIENT_IP" ] ||
            die "$t did not resolve the client to $CLIENT_IP: ${SEEN[$t]}"
        [ -n "$(jq -r .client_country "$WORK/raw/check-$t.json")" ] ||
            die "$t found no country for $CLIENT_IP: ${SEEN[$t]}"
        [ "$(jq -r .forwarded_for "$WORK/raw/check-$t.json")" = "$CLIENT_IP, 127.0.0.1" ] ||
            die "$t sent an unexpected X-Forwarded-For: ${SEEN[$t]}"
    fi
done

# CPU time (clock ticks, utime + stime) of a set of processes.
TICKS_PER_SEC="$(getconf CLK_TCK)"
cpu_ticks() { # pid...
    local p total=0 t
    for p in "$@"; do
        t="$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)"
        total=$((total + t))
    done
    echo "$total"
}
nginx_pids() { echo "$NGINX_PID" "$(pgrep -P "$NGINX_PID" | tr '\n' ' ')"; }
gateway_pids() { # target
    case "$1" in
    direct) ;;
    nginx) nginx_pids ;;
    pingora-floor) echo "$FLOOR_PID" ;;
    watchpost) echo "$PROXY_PID" ;;
    esac
}
redis_pids() { if [ "$1" = watchpost ]; then echo "$REDIS_PID"; fi; }
# µs of CPU per request from a tick delta.
per_req_us() { # ticks requests
    awk -v t="$1" -v n="$2" -v hz="$TICKS_PER_SEC" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "n/a" }'
}

# Prometheus counters of the proxy.
metric_sum() { # metric name
    curl -fsS "http://127.0.0.1:$HEALTH_PORT/metrics" |
        awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f\n", s }'
}
# Entries ever added to the stream (unaffected by MAXLEN trimming).
stream_added() { # [stream key, default the proxy's]
    local key="${1:-$STREAM}" v
    v="$(rcli xinfo stream "$key" 2>/dev/null | awk 'prev == "entries-added" { print; exit } { prev = $0 }')"
    if [ -z "$v" ]; then v="$(rcli xlen "$key")"; fi
    echo "${v:-0}"
}
wait_drained() {
    wait_for 30 sh -c "curl -fsS http://127.0.0.1:$HEALTH_PORT/healthz | jq -e '.buffer_depth == 0'" ||
        die_log "$WORK/proxy.log" "watchpost's access-log buffer did not drain"
}
nginx_log_lines() { wc -l <"$WORK/nginx/access.log" 2>/dev/null || echo 0; }

# wrk's latency with unit -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}
wrk_field() { awk -v p="$2" '$1 == p { print $2; exit }' "$1"; }
wrk_requests() { awk '/requests in/ { print $1; exit }' "$1"; }
wrk_non2xx() { awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$1"; }
wrk_errors() {
    awk '/Socket errors:/ { gsub(/,/, ""); s = $4 + $6 + $8 + $10 } END { print s + 0 }' "$1"
}

RESULTS_WRK="$WORK/raw/wrk.tsv"
RESULTS_OHA="$WORK/raw/oha.tsv"
RESULTS_STREAM="$WORK/raw/stream.tsv"
: >"$RESULTS_WRK"
: >"$RESULTS_OHA"
: >"$RESULTS_STREAM"

run_wrk() { # target round
    local t="$1" r="$2" out="$WORK/raw/wrk-$1-$2.txt" gw up rd
    local gw0 up0 rd0 served0 added0 lines0 served1 added1 dropped0 dropped1
    local -a gwp rdp
    read -r -a gwp <<<"$(gateway_pids "$t")"
    read -r -a rdp <<<"$(redis_pids "$t")"
    if [ "$t" = watchpost ]; then
        wait_drained
        served0="$(metric_sum watchpost_proxy_requests_total)"
        dropped0="$(metric_sum watchpost_proxy_access_log_dropped_total)"
        added0="$(stream_added)"
    fi
    [ "$t" = nginx ] && lines0="$(nginx_log_lines)"
    gw0="$(cpu_ticks "${gwp[@]}")" up0="$(cpu_ticks "$UPSTREAM_PID")" rd0="$(cpu_ticks "${rdp[@]}")"
    log "round $r: $t, wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s"
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "${HEADERS[@]}" "$(url_of "$t")" >"$out" ||
        die_log "$out" "wrk against $t failed"
    gw=$(($(cpu_ticks "${gwp[@]}") - gw0))
    up=$(($(cpu_ticks "$UPSTREAM_PID") - up0))
    rd=$(($(cpu_ticks "${rdp[@]}") - rd0))
    local n
    n="$(wrk_requests "$out")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$r" \
        "$(wrk_field "$out" Requests/sec:)" "$(to_ms "$(wrk_field "$out" 50%)")" \
        "$(to_ms "$(wrk_field "$out" 99%)")" "$n" "$(wrk_non2xx "$out")" "$(wrk_errors "$out")" \
        "$(per_req_us "$gw" "$n")" "$(per_req_us "$up" "$n")" \
        "$([ "$t" = watchpost ] && per_req_us "$rd" "$n" || echo -)" \
        "$(per_req_us $((gw + up + rd)) "$n")" >>"$RESULTS_WRK"
    if [ "$t" = watchpost ]; then
        wait_drained
        served1="$(metric_sum watchpost_proxy_requests_total)"
        dropped1="$(metric_sum watchpost_proxy_access_log_dropped_total)"
        added1="$(stream_added)"
        printf 'watchpost\t%s\t%s\t%s\t%s\t%s\n' "$r" $((served1 - served0)) "$n" \
            $((added1 - added0)) $((dropped1 - dropped0)) >>"$RESULTS_STREAM"
    fi
    if [ "$t" = nginx ]; then
        sleep 1.5 # the log's flush=1s
        printf 'nginx\t%s\t-\t%s\t%s\t-\n' "$r" "$n" $(($(nginx_log_lines) - lines0)) >>"$RESULTS_STREAM"
    fi
    sleep 1
}

# oha at the fixed rate; appends one row to the file given.
oha_fixed() { # target label outfile-json tsv
    local t="$1" label="$2" out="$3" tsv="$4" gw0 gw n
    local -a gwp
    read -r -a gwp <<<"$(gateway_pids "$t")"
    gw0="$(cpu_ticks "${gwp[@]}")"
    log "$label: $t, oha -q $RATE --latency-correction -c $CONNECTIONS -z ${DURATION}s"
    "$OHA" --no-tui --output-format json -q "$RATE" --latency-correction -c "$CONNECTIONS" \
        -z "${DURATION}s" -w "${HEADERS[@]}" "$(url_of "$t")" >"$out" 2>"$out.err" ||
        die_log "$out.err" "oha against $t failed"
    gw=$(($(cpu_ticks "${gwp[@]}") - gw0))
    n="$(jq '[.statusCodeDistribution[]] | add // 0' "$out")"
    jq -r --arg t "$t" --arg l "$label" --arg cpu "$(per_req_us "$gw" "$n")" '
        def ms: . * 1000 * 100 | round / 100;
        [$t, $l, (.summary.requestsPerSec | round),
         (.latencyPercentiles.p50 | ms), (.latencyPercentiles.p99 | ms),
         (.latencyPercentiles["p99.9"] | ms),
         ([.statusCodeDistribution[]] | add // 0),
         ([.statusCodeDistribution | to_entries[] | select(.key | startswith("2") | not) | .value] | add // 0),
         ([.errorDistribution[]] | add // 0), $cpu] | @tsv' "$out" >>"$tsv"
    sleep 1
}

log "warming up each target (${WARMUP}s of wrk)"
for t in "${TARGETS[@]}"; do
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "${HEADERS[@]}" "$(url_of "$t")" >"$WORK/raw/warmup-$t.txt" ||
        die_log "$WORK/raw/warmup-$t.txt" "warm-up against $t failed"
done

for r in $(seq 1 "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do run_wrk "$t" "$r"; done
    for t in "${TARGETS[@]}"; do oha_fixed "$t" "round $r" "$WORK/raw/oha-$t-$r.json" "$RESULTS_OHA"; done
done

# ------------------------------------------------------------- Redis outage ------
# ROUNDS alternations of (Redis healthy, Redis stopped) at the fixed rate: a p99 at a few
# thousand requests/s on a shared 2-core machine moves by 2x from run to run, so one healthy
# run against one stopped run would measure noise; the medians of alternating runs do not.
RESULTS_OUTAGE="$WORK/raw/outage.tsv"
: >"$RESULTS_OUTAGE"
OUTAGE_WRITTEN=0 OUTAGE_DROPPED=0 OUTAGE_BUFFERED=0 HEALTHY_WRITTEN=0 HEALTHY_DROPPED=0
DOWN_AFTER=() RESUMED_AFTER=()
# Wait until the proxy has written something since `$1` (log_written), i.e. it saw Redis again.
wait_resumed() { # written-before -> seconds it took, or empty
    local t0
    t0=$(date +%s.%N)
    for _ in $(seq 1 300); do
        curl -fsS -o /dev/null "${HEADERS[@]}" "$(url_of watchpost)" || true
        if [ "$(health_field redis)" = "up" ] &&
            [ "$(metric_sum watchpost_proxy_access_log_written_total)" -gt "$1" ]; then
            awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
            return 0
        fi
        sleep 0.1
    done
}
for r in $(seq 1 "$ROUNDS"); do
    wait_drained
    w0="$(metric_sum watchpost_proxy_access_log_written_total)"
    d0="$(metric_sum watchpost_proxy_access_log_dropped_total)"
    oha_fixed watchpost "healthy" "$WORK/raw/outage-healthy-$r.json" "$RESULTS_OUTAGE"
    wait_drained
    HEALTHY_WRITTEN=$((HEALTHY_WRITTEN + $(metric_sum watchpost_proxy_access_log_written_total) - w0))
    HEALTHY_DROPPED=$((HEALTHY_DROPPED + $(metric_sum watchpost_proxy_access_log_dropped_total) - d0))

    log "round $r: stopping the scratch redis-server"
    stop_pid "$REDIS_PID"
    REDIS_PID=""
    # The writer notices at its next write: send a little traffic until /healthz says so.
    t_stop=$(date +%s.%N)
    down_after=""
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "${HEADERS[@]}" "$(url_of watchpost)" || true
        if [ "$(health_field redis)" = "down" ]; then
            down_after="$(awk -v a="$t_stop" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
            break
        fi
        sleep 0.1
    done
    [ -n "$down_after" ] || die_log "$WORK/proxy.log" "watchpost never reported Redis down after it was stopped"
    DOWN_AFTER+=("$down_after")
    w2="$(metric_sum watchpost_proxy_access_log_written_total)"
    d2="$(metric_sum watchpost_proxy_access_log_dropped_total)"
    oha_fixed watchpost "stopped" "$WORK/raw/outage-stopped-$r.json" "$RESULTS_OUTAGE"
    w3="$(metric_sum watchpost_proxy_access_log_written_total)"
    OUTAGE_WRITTEN=$((OUTAGE_WRITTEN + w3 - w2))
    OUTAGE_DROPPED=$((OUTAGE_DROPPED + $(metric_sum watchpost_proxy_access_log_dropped_total) - d2))
    OUTAGE_BUFFERED=$((OUTAGE_BUFFERED + $(health_field buffer_depth)))
    alive "$PROXY_PID" || die_log "$WORK/proxy.log" "watchpost-proxy exited during the Redis outage"

    log "round $r: restarting the scratch redis-server"
    start_redis
    resumed="$(wait_resumed "$w3")"
    [ -n "$resumed" ] || die_log "$WORK/proxy.log" "watchpost did not resume writing within 30 s of Redis' restart"
    RESUMED_AFTER+=("$resumed")
done
wait_drained
RESUMED="yes, every time: ${RESUMED_AFTER[*]} s after each restart"

# ------------------------------------------------------- log writer vs raw XADD ------
RESULTS_LW="$WORK/raw/log-writer.tsv"
: >"$RESULTS_LW"
XADD_FIELDS=(ts 1764000000000 method GET host shop.example.com path /products/417
    query "page=3&sort=price" status 200 ip "$CLIENT_IP" ip_source x-forwarded-for peer 10.0.0.2
    country NL risk 0.000 reasons "" ua "$UA" ua_type browser decision allow latency_us 812
    bytes_out 1532 upstream 10.0.1.5:3000 request_id 01KB2XQ6M3Y4ZP9G7T5R8WJ2NC proxy_id proxy-1)
for r in $(seq 1 "$ROUNDS"); do
    rcli del lwbench:access rbbench:access >/dev/null
    log "round $r: watchpost-log-writer-bench, $LOG_ENTRIES entries"
    "$BIN/watchpost-log-writer-bench" --redis-url "$REDIS_URL" --key-prefix lwbench: \
        --entries "$LOG_ENTRIES" --batch-max-entries "$BATCH" --stream-max-len "$STREAM_MAX_LEN" \
        >"$WORK/raw/log-writer-$r.json" 2>"$WORK/raw/log-writer-$r.err" ||
        die_log "$WORK/raw/log-writer-$r.err" "watchpost-log-writer-bench failed"
    added="$(stream_added lwbench:access)"
    # One warm-up entry is written before the timed ones.
    [ "$added" = $((LOG_ENTRIES + 1)) ] ||
        die "the log writer added $added entries to lwbench:access, expected $((LOG_ENTRIES + 1))"
    log "round $r: redis-benchmark -c 1 -P $BATCH XADD, $LOG_ENTRIES commands"
    redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -n "$LOG_ENTRIES" -c 1 -P "$BATCH" -q \
        XADD rbbench:access MAXLEN '~' "$STREAM_MAX_LEN" '*' "${XADD_FIELDS[@]}" \
        >"$WORK/raw/redis-benchmark-$r.txt" 2>&1 ||
        die_log "$WORK/raw/redis-benchmark-$r.txt" "redis-benchmark failed"
    raw_rps="$(tr '\r' '\n' <"$WORK/raw/redis-benchmark-$r.txt" |
        grep -o '[0-9.]* requests per second' | tail -n 1 | cut -d' ' -f1)"
    [ -n "$raw_rps" ] || die_log "$WORK/raw/redis-benchmark-$r.txt" "no requests/s in redis-benchmark's output"
    raw_added="$(stream_added rbbench:access)"
    [ "$raw_added" = "$LOG_ENTRIES" ] ||
        die "redis-benchmark added $raw_added entries to rbbench:access, expected $LOG_ENTRIES"
    printf '%s\t%s\t%s\n' "$r" "$(jq -r .entries_per_sec "$WORK/raw/log-writer-$r.json")" \
        "$(printf '%.0f' "$raw_rps")" >>"$RESULTS_LW"
done
rcli del lwbench:access rbbench:access >/dev/null

# ------------------------------------------------------------------ summary ------
# The median row of a target, rows sorted by a numeric column.
median_row() { # file target sort-column [label in column 2]
    local rows n
    rows="$(awk -F'\t' -v t="$2" -v l="${4:-}" '$1 == t && (l == "" || $2 == l)' "$1" | sort -t$'\t' -k"$3,$3"g)"
    n="$(printf '%s\n' "$rows" | wc -l)"
    printf '%s\n' "$rows" | sed -n "$(((n + 1) / 2))p"
}
col() { cut -f"$2" <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'; }
fmt_int() { printf "%'.0f" "$1" 2>/dev/null || printf '%s' "$1"; }

declare -A W O
for t in "${TARGETS[@]}"; do
    W[$t]="$(median_row "$RESULTS_WRK" "$t" 3)"
    O[$t]="$(median_row "$RESULTS_OHA" "$t" 5)"
done
LW_ROW="$(awk -F'\t' '{ print "lw\t" $0 }' "$RESULTS_LW" | sort -t$'\t' -k3,3g | sed -n "$(((ROUNDS + 1) / 2))p")"
H_ROW="$(median_row "$RESULTS_OUTAGE" watchpost 5 healthy)"
S_ROW="$(median_row "$RESULTS_OUTAGE" watchpost 5 stopped)"

VERSIONS="$("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $("$OHA" --version), $(wrk -v 2>&1 | head -n 1 | awk '{ print $1, $2 }'), redis-server $(redis-server --version | grep -o 'v=[^ ]*' | cut -c3-), watchpost $(git describe --always --dirty 2>/dev/null || echo unknown)"

{
    echo "## Gateway comparison, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "Machine: $(nproc) CPUs, Linux $(uname -r), load average before start $LOAD_BEFORE."
    echo "Versions: $VERSIONS."
    echo "Command: \`$COMMAND_LINE\`"
    echo "Same upstream (watchpost-demo-upstream) for every target; watchpost threads = nginx worker_processes = $PROXY_THREADS;"
    echo "load carries \`X-Forwarded-For: $CLIENT_IP\` from a trusted 127.0.0.1/32 hop and a browser UA."
    echo "Upstream saw: nginx ${SEEN[nginx]}; watchpost ${SEEN[watchpost]}."
    echo "Both log every request with the stream entry's fields: nginx to a file (\`buffer=64k flush=1s\`), watchpost to"
    echo "its Redis Stream in pipelines of up to $BATCH entries; watchpost also scores risk, which nginx does not."
    echo "pingora-floor is Pingora alone (same version, allocator and runtime settings as watchpost-proxy) forwarding to"
    echo "the upstream with no client IP, geo, risk, headers, metrics or log: the framework's share of watchpost's cost."
    echo
    echo "### Max throughput: wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s, median of $ROUNDS rounds by requests/s"
    echo
    echo "| target | requests/s | p50 ms | p99 ms | requests | non-2xx | socket errors | CPU µs/req gateway | upstream | redis | total |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        row="${W[$t]}"
        gwcpu="$(col "$row" 9)"
        [ "$t" = direct ] && gwcpu="-"
        echo "| $t | $(fmt_int "$(col "$row" 3)") | $(col "$row" 4) | $(col "$row" 5) | $(fmt_int "$(col "$row" 6)") | $(col "$row" 7) | $(col "$row" 8) | $gwcpu | $(col "$row" 10) | $(col "$row" 11) | $(col "$row" 12) |"
    done
    echo
    echo "Requests/s ratios: watchpost/nginx $(ratio "$(col "${W[watchpost]}" 3)" "$(col "${W[nginx]}" 3)"), watchpost/direct $(ratio "$(col "${W[watchpost]}" 3)" "$(col "${W[direct]}" 3)"), nginx/direct $(ratio "$(col "${W[nginx]}" 3)" "$(col "${W[direct]}" 3)")."
    echo "Gateway CPU per request, watchpost/nginx: $(ratio "$(col "${W[watchpost]}" 9)" "$(col "${W[nginx]}" 9)") (watchpost's Redis adds $(col "${W[watchpost]}" 11) µs/req)."
    echo "Pingora alone: pingora-floor/nginx requests/s $(ratio "$(col "${W[pingora-floor]}" 3)" "$(col "${W[nginx]}" 3)"), gateway CPU per request $(ratio "$(col "${W[pingora-floor]}" 9)" "$(col "${W[nginx]}" 9)"); watchpost/pingora-floor requests/s $(ratio "$(col "${W[watchpost]}" 3)" "$(col "${W[pingora-floor]}" 3)"), gateway CPU per request $(ratio "$(col "${W[watchpost]}" 9)" "$(col "${W[pingora-floor]}" 9)")."
    echo
    echo "### Fixed rate: oha -q $RATE --latency-correction -c $CONNECTIONS -z ${DURATION}s, median of $ROUNDS rounds by p99"
    echo
    echo "| target | achieved req/s | p50 ms | p99 ms | p99.9 ms | responses | non-2xx | errors | CPU µs/req gateway |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        row="${O[$t]}"
        gwcpu="$(col "$row" 10)"
        [ "$t" = direct ] && gwcpu="-"
        echo "| $t | $(fmt_int "$(col "$row" 3)") | $(col "$row" 4) | $(col "$row" 5) | $(col "$row" 6) | $(fmt_int "$(col "$row" 7)") | $(col "$row" 8) | $(col "$row" 9) | $gwcpu |"
    done
    echo
    echo "p99 ratios: watchpost/nginx $(ratio "$(col "${O[watchpost]}" 5)" "$(col "${O[nginx]}" 5)"), watchpost/direct $(ratio "$(col "${O[watchpost]}" 5)" "$(col "${O[direct]}" 5)"), nginx/direct $(ratio "$(col "${O[nginx]}" 5)" "$(col "${O[direct]}" 5)")."
    echo
    echo "### Access-log completeness during the max-throughput rounds"
    echo
    echo "| round | gateway | served (proxy counter) | requests (wrk) | log entries added | dropped | entries ÷ served | entries ÷ wrk |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    while IFS=$'\t' read -r g r served wrkn added dropped; do
        if [ "$g" = watchpost ]; then
            echo "| $r | watchpost (Redis Stream) | $(fmt_int "$served") | $(fmt_int "$wrkn") | $(fmt_int "$added") | $dropped | $(awk -v a="$added" -v s="$served" 'BEGIN { printf "%.4f", a / s }') | $(awk -v a="$added" -v s="$wrkn" 'BEGIN { printf "%.4f", a / s }') |"
        else
            echo "| $r | nginx (log file) | - | $(fmt_int "$wrkn") | $(fmt_int "$added") | - | - | $(awk -v a="$added" -v s="$wrkn" 'BEGIN { printf "%.4f", a / s }') |"
        fi
    done <"$RESULTS_STREAM"
    echo
    echo "(wrk does not count requests still in flight when it stops, which the gateway still serves and logs: entries ÷ wrk can exceed 1.)"
    echo
    echo "### Redis outage: watchpost at oha -q $RATE --latency-correction -c $CONNECTIONS -z ${DURATION}s, $ROUNDS alternations, median by p99"
    echo
    echo "| Redis | achieved req/s | p50 ms | p99 ms | p99.9 ms | responses | non-2xx | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for row in "$H_ROW" "$S_ROW"; do
        echo "| $(col "$row" 2) | $(fmt_int "$(col "$row" 3)") | $(col "$row" 4) | $(col "$row" 5) | $(col "$row" 6) | $(fmt_int "$(col "$row" 7)") | $(col "$row" 8) | $(col "$row" 9) |"
    done
    echo
    echo "p99 stopped/healthy: $(ratio "$(col "$S_ROW" 5)" "$(col "$H_ROW" 5)"); p50 stopped/healthy: $(ratio "$(col "$S_ROW" 4)" "$(col "$H_ROW" 4)")."
    echo "Every round (label, p50, p99, p99.9 ms): $(awk -F'\t' '{ printf "%s%s %s/%s/%s", (NR > 1 ? "; " : ""), $2, $4, $5, $6 }' "$RESULTS_OUTAGE")."
    echo "Log entries over all rounds: Redis healthy — written $(fmt_int "$HEALTHY_WRITTEN"), dropped $HEALTHY_DROPPED;"
    echo "Redis stopped — written $OUTAGE_WRITTEN, dropped $(fmt_int "$OUTAGE_DROPPED"), still buffered when the run ended $(fmt_int "$OUTAGE_BUFFERED") (summed over rounds)."
    echo "/healthz said Redis down ${DOWN_AFTER[*]} s after each stop. While it was down the writer kept entries in its buffer"
    echo "([access_log] buffer_entries, buffer_bytes) and retried the batch it failed to send, backing off to 2 s, without dropping it;"
    echo "drops above are entries refused at the buffer's bound (watchpost-log-writer-bench --mode outage counts every entry across an outage)."
    echo "After each restart writing resumed by itself: $RESUMED."
    echo
    echo "### Access-log writer vs raw pipelined XADD: $LOG_ENTRIES entries, pipeline $BATCH, MAXLEN ~ $STREAM_MAX_LEN, median of $ROUNDS rounds"
    echo
    echo "| writer | entries/s |"
    echo "|---|---:|"
    echo "| watchpost-log-writer-bench (the proxy's LogWriter, 20 fields per entry) | $(fmt_int "$(col "$LW_ROW" 3)") |"
    echo "| redis-benchmark -c 1 -P $BATCH XADD (the same 20 fields, fixed values) | $(fmt_int "$(col "$LW_ROW" 4)") |"
    echo
    echo "Writer/raw: $(ratio "$(col "$LW_ROW" 3)" "$(col "$LW_ROW" 4)") (the writer also sends INCRBY+EXPIRE of the minute counter per batch, and builds each pipeline from typed entries)."
    echo
    if [ "$KEEP" = "1" ]; then
        echo "Raw outputs: $WORK"
    else
        echo "Raw outputs: removed at exit (KEEP=1 keeps them)."
    fi
} | tee "$WORK/summary.md"
