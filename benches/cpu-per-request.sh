#!/usr/bin/env bash
# CPU per request of the gateway process, measured with `perf stat -e task-clock -p PID` (not
# ps), for nginx, watchpost-pingora-floor (bare Pingora) and watchpost-proxy side by side in one
# run, at each worker count of THREADS_LIST, plus the CPU Redis spends per access-log entry.
#
# Setup (the issue's): one origin, nginx `return 200` (its own instance, one worker); the load
# is wrk -t1 -c16 with a browser UA and `X-Forwarded-For: CLIENT_IP` from a trusted
# 127.0.0.0/8 peer; GeoIP on in both gateways (nginx: realip + geoip2 + a buffered log file;
# watchpost: its access log to a scratch redis-server). For each worker count the three
# gateways are started with that many workers, warmed up, then loaded in ROUNDS interleaved
# rounds (nginx, floor, watchpost, nginx, …); each cell of the table is the median round.
#
#   CPU µs/request = task-clock of the gateway (nginx: master + workers) during the wrk run
#                    ÷ requests wrk completed
#   Redis µs/entry = task-clock of the scratch redis-server during watchpost's run
#                    ÷ entries added to the stream in that run (after the buffer drained)
#
# It also reports access-log completeness (entries added ÷ requests the proxy counted) and the
# resident memory of each gateway (VmRSS, with its anonymous and file-backed parts) at the end.
#
# With PROFILE=1 it then profiles floor and watchpost at one worker under the same load:
# `perf stat` of syscalls, context switches and task-clock per request, allocations per request
# (a uprobe on the allocator's entry points in each binary), and `perf record -g` of each, with
# the top entries of `perf report` written to the work directory (kept: KEEP=1 is implied).
#
# Usage: benches/cpu-per-request.sh
#        ROUNDS=5 DURATION=15 THREADS_LIST="1" benches/cpu-per-request.sh
#        PROFILE=1 benches/cpu-per-request.sh
#
# Knobs: DURATION=10 (s per run), ROUNDS=3, CONNECTIONS=16, WRK_THREADS=1, THREADS_LIST="1 2",
# WARMUP=3, CLIENT_IP=193.0.6.139, BATCH=512 ([access_log] batch_max_entries), PROFILE=0,
# KEEP=0, ports ORIGIN_PORT=18810 NGINX_PORT=18820 FLOOR_PORT=18830 PROXY_PORT=18840
# HEALTH_PORT=18850 REDIS_PORT=18860.
#
# Installs when missing (as root or with sudo): wrk, nginx, libnginx-mod-http-geoip2,
# redis-server, redis-tools, curl, jq, linux-perf. Builds the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
# shellcheck source=benches/lib/nginx-gateway.sh
. benches/lib/nginx-gateway.sh

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-16}"
WRK_THREADS="${WRK_THREADS:-1}"
THREADS_LIST="${THREADS_LIST:-1 2}"
WARMUP="${WARMUP:-3}"
CLIENT_IP="${CLIENT_IP:-193.0.6.139}"
BATCH="${BATCH:-512}"
PROFILE="${PROFILE:-0}"
KEEP="${KEEP:-0}"
[ "$PROFILE" = 1 ] && KEEP=1
ORIGIN_PORT="${ORIGIN_PORT:-18810}"
NGINX_PORT="${NGINX_PORT:-18820}"
FLOOR_PORT="${FLOOR_PORT:-18830}"
PROXY_PORT="${PROXY_PORT:-18840}"
HEALTH_PORT="${HEALTH_PORT:-18850}"
REDIS_PORT="${REDIS_PORT:-18860}"
TRUSTED_CIDR="127.0.0.0/8"
KEY_PREFIX="wp:"
STREAM="${KEY_PREFIX}access"
GEOIP2_MODULE=/usr/lib/nginx/modules/ngx_http_geoip2_module.so
MMDB="$ROOT/.cache/geo/geo-whois-asn-country.mmdb"
COMMAND_LINE="DURATION=$DURATION ROUNDS=$ROUNDS CONNECTIONS=$CONNECTIONS WRK_THREADS=$WRK_THREADS THREADS_LIST=\"$THREADS_LIST\" benches/cpu-per-request.sh"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'cpu-per-request: %s\n' "$*" >&2
    exit 1
}
die_log() { # file message
    printf 'cpu-per-request: %s\n--- last lines of %s ---\n' "$2" "$1" >&2
    tail -n 40 "$1" >&2 2>/dev/null || true
    exit 1
}
for knob in DURATION ROUNDS CONNECTIONS WRK_THREADS WARMUP BATCH ORIGIN_PORT NGINX_PORT \
    FLOOR_PORT PROXY_PORT HEALTH_PORT REDIS_PORT; do
    [[ "${!knob}" =~ ^[1-9][0-9]*$ ]] || die "$knob must be a positive integer (got '${!knob}')"
done
for t in $THREADS_LIST; do [[ "$t" =~ ^[1-9][0-9]*$ ]] || die "THREADS_LIST: '$t' is not a positive integer"; done

# ------------------------------------------------------------------------- tools ------
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -f "$GEOIP2_MODULE" ] || missing+=(libnginx-mod-http-geoip2)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y "${missing[@]}" >/dev/null 2>&1 ||
        { as_root apt-get update >/dev/null && as_root apt-get install -y "${missing[@]}" >/dev/null; } ||
        die "apt-get install ${missing[*]} failed"
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ -s "$MMDB" ] || { deploy/fetch-geo-db.sh >&2 || die "deploy/fetch-geo-db.sh failed"; }
[ -s "$MMDB" ] || die "no GeoIP database at $MMDB"
perf stat -e task-clock -- true >/dev/null 2>&1 ||
    die "perf stat does not work here (kernel.perf_event_paranoid? run as root)"

log "building release binaries"
cargo build --release --locked -p watchpost-proxy -p watchpost-benches --bins >&2 || die "cargo build failed"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
BIN="$TARGET_DIR/release"
for b in watchpost-proxy watchpost-pingora-floor; do [ -x "$BIN/$b" ] || die "$BIN/$b was not built"; done
for port in "$ORIGIN_PORT" "$NGINX_PORT" "$FLOOR_PORT" "$PROXY_PORT" "$HEALTH_PORT" "$REDIS_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port $port is already in use"; fi
done

# -------------------------------------------------------------- work dir, cleanup ------
WORK="$(mktemp -d -t watchpost-cpu-per-request.XXXXXX)"
chmod 755 "$WORK"
mkdir -p "$WORK/origin/tmp" "$WORK/nginx/tmp" "$WORK/redis" "$WORK/raw" "$WORK/bin"
# The binaries measured are copies: a rebuild during the run cannot swap them between rounds.
cp "$BIN/watchpost-proxy" "$BIN/watchpost-pingora-floor" "$WORK/bin/"
BIN="$WORK/bin"
ORIGIN_PID="" NGINX_PID="" FLOOR_PID="" PROXY_PID="" REDIS_PID=""
stop_pid() { # pid
    [ -n "$1" ] || return 0
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
stop_gateways() {
    stop_pid "$PROXY_PID"; stop_pid "$FLOOR_PID"; stop_pid "$NGINX_PID"
    PROXY_PID="" FLOOR_PID="" NGINX_PID=""
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_gateways
    stop_pid "$ORIGIN_PID"
    stop_pid "$REDIS_PID"
    if [ "$KEEP" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() { # seconds command...
    local secs="$1"
    shift
    for _ in $(seq 1 $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# ------------------------------------------------------------ origin and Redis ------
cat >"$WORK/origin/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log warn;
events { worker_connections 4096; }
http {
$(nginx_common_http "$WORK/origin")
    access_log off;
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        location / { return 200 "ok\n"; }
    }
}
EOF
log "starting the origin (nginx return 200) on :$ORIGIN_PORT and redis-server on :$REDIS_PORT"
"$NGINX" -p "$WORK/origin" -c "$WORK/origin/nginx.conf" -e "$WORK/origin/error.log" -g 'daemon off;' \
    >"$WORK/origin/stdout.log" 2>&1 &
ORIGIN_PID=$!
wait_for 10 curl -fsS "http://127.0.0.1:$ORIGIN_PORT/" || die_log "$WORK/origin/error.log" "the origin did not answer"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$WORK/redis" >>"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
wait_for 10 rcli ping || die_log "$WORK/redis.log" "redis-server did not start"

# -------------------------------------------------------------------- gateways ------
start_gateways() { # threads
    local t="$1"
    nginx_gateway_conf "$WORK/nginx" "$t" "$NGINX_PORT" "$ORIGIN_PORT" "$MMDB" "$TRUSTED_CIDR" \
        "$GEOIP2_MODULE" >"$WORK/nginx/nginx.conf"
    cat >"$WORK/proxy.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PROXY_PORT"
upstreams = ["127.0.0.1:$ORIGIN_PORT"]
health_listen = "127.0.0.1:$HEALTH_PORT"
proxy_id = "bench"
threads = $t

[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
key_prefix = "$KEY_PREFIX"

[access_log]
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
    "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" -g 'daemon off;' \
        >"$WORK/nginx/stdout.log" 2>&1 &
    NGINX_PID=$!
    "$BIN/watchpost-pingora-floor" --listen "127.0.0.1:$FLOOR_PORT" --upstream "127.0.0.1:$ORIGIN_PORT" \
        --threads "$t" >"$WORK/floor.log" 2>&1 &
    FLOOR_PID=$!
    RUST_LOG=warn "$BIN/watchpost-proxy" --config "$WORK/proxy.toml" >"$WORK/proxy.log" 2>&1 &
    PROXY_PID=$!
    wait_for 10 curl -fsS "http://127.0.0.1:$NGINX_PORT/" || die_log "$WORK/nginx/error.log" "nginx did not answer"
    wait_for 20 curl -fsS "http://127.0.0.1:$FLOOR_PORT/" || die_log "$WORK/floor.log" "the floor did not answer"
    wait_for 20 curl -fsS "http://127.0.0.1:$HEALTH_PORT/healthz" || die_log "$WORK/proxy.log" "watchpost-proxy did not start"
    [ "$(curl -fsS "http://127.0.0.1:$HEALTH_PORT/healthz" | jq -r .geo)" = enabled ] ||
        die_log "$WORK/proxy.log" "watchpost-proxy has GeoIP disabled"
}

UA="Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
HEADERS=(-H "User-Agent: $UA" -H "Accept: text/html,application/xhtml+xml"
    -H "Accept-Language: en-US,en;q=0.9" -H "X-Forwarded-For: $CLIENT_IP")
TARGETS=(nginx floor watchpost)
url_of() {
    case "$1" in
    nginx) echo "http://127.0.0.1:$NGINX_PORT/" ;;
    floor) echo "http://127.0.0.1:$FLOOR_PORT/" ;;
    watchpost) echo "http://127.0.0.1:$PROXY_PORT/" ;;
    esac
}
pids_of() { # target -> comma-separated pids
    case "$1" in
    nginx) echo "$NGINX_PID$(pgrep -P "$NGINX_PID" | sed 's/^/,/' | tr -d '\n')" ;;
    floor) echo "$FLOOR_PID" ;;
    watchpost) echo "$PROXY_PID" ;;
    esac
}
metric_sum() { # metric name
    curl -fsS "http://127.0.0.1:$HEALTH_PORT/metrics" |
        awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f\n", s }'
}
stream_added() {
    local v
    v="$(rcli xinfo stream "$STREAM" 2>/dev/null | awk 'prev == "entries-added" { print; exit } { prev = $0 }')"
    echo "${v:-0}"
}
wait_drained() {
    wait_for 30 sh -c "curl -fsS http://127.0.0.1:$HEALTH_PORT/healthz | jq -e '.buffer_depth == 0'" ||
        die_log "$WORK/proxy.log" "watchpost's access-log buffer did not drain"
}
# task-clock in ms from a `perf stat -x,` output file.
task_ms() { awk -F, '$3 ~ /^task-clock/ { print $1; exit }' "$1"; }
# Start `perf stat` on the pids; echoes its pid.
perf_start() { # out pids events
    perf stat -x, -e "$3" -p "$2" -o "$1" >/dev/null 2>&1 &
    echo $!
}
# `perf stat` is started in a command substitution, so it is not this shell's child and `wait`
# returns at once: poll until it has exited (and written its output). `wait` reaps a child.
perf_stop() {
    kill -INT "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
}

RESULTS="$WORK/raw/rounds.tsv"
: >"$RESULTS"
COMPLETE="$WORK/raw/complete.tsv"
: >"$COMPLETE"
declare -A RSS

run_round() { # threads target round
    local t="$1" g="$2" r="$3" out="$WORK/raw/wrk-$1-$2-$3.txt" gp rp="" n rps gw rd="-"
    local served0 added0 served1 added1
    if [ "$g" = watchpost ]; then
        wait_drained
        served0="$(metric_sum watchpost_proxy_requests_total)"
        added0="$(stream_added)"
        rp="$(perf_start "$WORK/raw/perf-redis-$t-$r.csv" "$REDIS_PID" task-clock)"
    fi
    gp="$(perf_start "$WORK/raw/perf-$t-$g-$r.csv" "$(pids_of "$g")" task-clock)"
    sleep 0.2
    log "threads=$t round $r: $g"
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" "${HEADERS[@]}" "$(url_of "$g")" >"$out" ||
        die_log "$out" "wrk against $g failed"
    perf_stop "$gp"
    n="$(awk '/requests in/ { print $1; exit }' "$out")"
    rps="$(awk '$1 == "Requests/sec:" { print $2; exit }' "$out")"
    ! grep -q 'Non-2xx' "$out" || die_log "$out" "$g answered non-2xx"
    gw="$(awk -v ms="$(task_ms "$WORK/raw/perf-$t-$g-$r.csv")" -v n="$n" 'BEGIN { printf "%.1f", ms * 1000 / n }')"
    if [ "$g" = watchpost ]; then
        wait_drained
        perf_stop "$rp"
        served1="$(metric_sum watchpost_proxy_requests_total)"
        added1="$(stream_added)"
        rd="$(awk -v ms="$(task_ms "$WORK/raw/perf-redis-$t-$r.csv")" -v n=$((added1 - added0)) 'BEGIN { printf "%.1f", ms * 1000 / n }')"
        printf '%s\t%s\t%s\t%s\n' "$t" "$r" $((served1 - served0)) $((added1 - added0)) >>"$COMPLETE"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$g" "$r" "$rps" "$gw" "$rd" >>"$RESULTS"
}

rss_of() { # comma pids -> "VmRSS RssAnon RssFile" in MB, summed
    local p a=0 b=0 c=0 x y z
    for p in ${1//,/ }; do
        read -r x y z < <(awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 } END { print r + 0, a + 0, f + 0 }' "/proc/$p/status")
        a=$((a + x)) b=$((b + y)) c=$((c + z))
    done
    awk -v a="$a" -v b="$b" -v c="$c" 'BEGIN { printf "%.0f MB (anon %.0f, file %.0f)", a / 1024, b / 1024, c / 1024 }'
}

for t in $THREADS_LIST; do
    log "threads=$t: starting nginx, the floor and watchpost-proxy"
    start_gateways "$t"
    for g in "${TARGETS[@]}"; do
        wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "${HEADERS[@]}" "$(url_of "$g")" >/dev/null ||
            die "warm-up against $g failed"
    done
    for r in $(seq 1 "$ROUNDS"); do
        for g in "${TARGETS[@]}"; do run_round "$t" "$g" "$r"; done
    done
    for g in "${TARGETS[@]}"; do RSS[$t,$g]="$(rss_of "$(pids_of "$g")")"; done
    if [ "$PROFILE" = 1 ] && [ "$t" = 1 ]; then
        for g in floor watchpost; do
            log "profile: $g at one worker"
            # Allocations: uprobes on the allocator's entry points (both binaries use mimalloc
            # as the global allocator, which Rust reaches through these three functions).
            exe="$BIN/watchpost-proxy"
            [ "$g" = floor ] && exe="$BIN/watchpost-pingora-floor"
            events=task-clock,context-switches,raw_syscalls:sys_enter
            perf probe -q -d "wpb$g:*" >/dev/null 2>&1 || true
            if perf probe -q -x "$exe" -a "wpb$g:malloc=mi_malloc_aligned" >/dev/null 2>&1 &&
                perf probe -q -x "$exe" -a "wpb$g:zalloc=mi_zalloc_aligned" >/dev/null 2>&1 &&
                perf probe -q -x "$exe" -a "wpb$g:realloc=mi_realloc_aligned" >/dev/null 2>&1; then
                events="$events,wpb$g:malloc,wpb$g:zalloc,wpb$g:realloc"
            fi
            gp="$(perf_start "$WORK/raw/profile-stat-$g.csv" "$(pids_of "$g")" "$events")"
            sleep 0.2
            wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" "${HEADERS[@]}" "$(url_of "$g")" >"$WORK/raw/profile-wrk-$g.txt"
            perf_stop "$gp"
            perf probe -q -d "wpb$g:*" >/dev/null 2>&1 || true
            perf record -g -o "$WORK/raw/perf-$g.data" -p "$(pids_of "$g")" >/dev/null 2>&1 &
            pr=$!
            sleep 0.2
            wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" "${HEADERS[@]}" "$(url_of "$g")" >"$WORK/raw/profile-wrk2-$g.txt"
            perf_stop "$pr"
            perf report -i "$WORK/raw/perf-$g.data" --no-children --percent-limit 0.7 --stdio \
                -g none --sort dso,symbol 2>/dev/null >"$WORK/raw/report-$g.txt" || true
            perf report -i "$WORK/raw/perf-$g.data" --children --percent-limit 2 --stdio \
                -g none --sort symbol 2>/dev/null >"$WORK/raw/report-children-$g.txt" || true
        done
    fi
    stop_gateways
done

# ------------------------------------------------------------------ summary ------
median_row() { # threads target
    awk -F'\t' -v t="$1" -v g="$2" '$1 == t && $2 == g' "$RESULTS" | sort -t$'\t' -k5,5g |
        awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)'
}
col() { cut -f"$2" <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'; }
fmt_int() { printf "%'.0f" "$1" 2>/dev/null || printf '%s' "$1"; }
{
    echo "## CPU per request, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "Machine: $(nproc) CPUs, Linux $(uname -r), load average before start $LOAD_BEFORE, after $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Versions: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), redis-server $(redis-server --version | grep -o 'v=[^ ]*' | cut -c3-), watchpost $(git describe --always --dirty 2>/dev/null || echo unknown)."
    echo "Command: \`$COMMAND_LINE\`"
    echo "Origin nginx \`return 200\` (1 worker); wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s, browser UA, \`X-Forwarded-For: $CLIENT_IP\` from a trusted $TRUSTED_CIDR peer, GeoIP on;"
    echo "CPU from \`perf stat -e task-clock -p PID\` ÷ requests; median of $ROUNDS interleaved rounds (by CPU per request)."
    for t in $THREADS_LIST; do
        echo
        echo "### threads = $t"
        echo
        echo "| target | requests/s | CPU µs/request |"
        echo "|---|---:|---:|"
        declare -A M=()
        for g in "${TARGETS[@]}"; do M[$g]="$(median_row "$t" "$g")"; done
        echo "| nginx (realip + geoip2 + buffered log file), worker_processes $t | $(fmt_int "$(col "${M[nginx]}" 4)") | $(col "${M[nginx]}" 5) |"
        echo "| \`watchpost-pingora-floor\` (bare Pingora, threads $t) | $(fmt_int "$(col "${M[floor]}" 4)") | $(col "${M[floor]}" 5) |"
        echo "| \`watchpost-proxy\` (threads $t) | $(fmt_int "$(col "${M[watchpost]}" 4)") | $(col "${M[watchpost]}" 5) (+ $(col "${M[watchpost]}" 6) in Redis) |"
        echo
        echo "CPU per request: watchpost/floor $(ratio "$(col "${M[watchpost]}" 5)" "$(col "${M[floor]}" 5)"), watchpost/nginx $(ratio "$(col "${M[watchpost]}" 5)" "$(col "${M[nginx]}" 5)"), floor/nginx $(ratio "$(col "${M[floor]}" 5)" "$(col "${M[nginx]}" 5)");"
        echo "requests/s: watchpost/floor $(ratio "$(col "${M[watchpost]}" 4)" "$(col "${M[floor]}" 4)"), watchpost/nginx $(ratio "$(col "${M[watchpost]}" 4)" "$(col "${M[nginx]}" 4)"), floor/nginx $(ratio "$(col "${M[floor]}" 4)" "$(col "${M[nginx]}" 4)")."
        echo "Every round (target: requests/s, gateway µs/request, Redis µs/entry): $(awk -F'\t' -v t="$t" '$1 == t { printf "%s%s r%s %s/%s/%s", (n++ ? "; " : ""), $2, $3, $4, $5, $6 }' "$RESULTS")."
        echo "Access-log completeness (entries added ÷ requests served, per round): $(awk -F'\t' -v t="$t" '$1 == t { printf "%s%.4f", (n++ ? ", " : ""), $4 / $3 }' "$COMPLETE")."
        echo "Resident memory after the rounds: nginx ${RSS[$t,nginx]}; floor ${RSS[$t,floor]}; watchpost ${RSS[$t,watchpost]}."
    done
    if [ "$PROFILE" = 1 ]; then
        echo
        echo "### Profile at one worker (wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s each)"
        echo
        echo "| target | requests | task-clock µs/request (uprobes included) | context switches/request | syscalls/request | allocations/request (malloc + zalloc + realloc) |"
        echo "|---|---:|---:|---:|---:|---:|"
        for g in floor watchpost; do
            n="$(awk '/requests in/ { print $1; exit }' "$WORK/raw/profile-wrk-$g.txt")"
            awk -F, -v g="$g" -v n="$n" '
                $3 ~ /^task-clock/ { tc = $1 } $3 ~ /^context-switches/ { cs = $1 } $3 ~ /sys_enter/ { sc = $1 }
                $3 ~ /:(malloc|zalloc|realloc)$/ { al += $1; has = 1 }
                END { printf "| %s | %d | %.1f | %.3f | %.2f | %s |\n", g, n, tc * 1000 / n, cs / n, sc / n, has ? sprintf("%.1f", al / n) : "n/a" }' \
                "$WORK/raw/profile-stat-$g.csv"
        done
        echo
        echo "perf reports: $WORK/raw/report-{floor,watchpost}.txt (self, by dso and symbol) and report-children-*.txt."
    fi
    echo
    if [ "$KEEP" = 1 ]; then echo "Raw outputs: $WORK"; else echo "Raw outputs: removed at exit (KEEP=1 keeps them)."; fi
} | tee "$WORK/summary.md"
