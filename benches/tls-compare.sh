#!/usr/bin/env bash
# TLS comparison: nginx and watchpost-proxy terminating TLS with the same certificate in front of
# the same upstream, side by side in one run, interleaved rounds, median reported:
#
#   a) keep-alive requests/s over TLS (wrk, HTTP/1.1, connections kept open);
#   b) full TLS handshakes/s: every request on a new connection (wrk with `Connection: close`;
#      wrk does not resume sessions, and nginx's session cache and tickets are off, so each
#      request is a full handshake on both servers);
#
# with the CPU µs per request (per handshake in b) of each gateway process, from
# /proc/<pid>/stat (user + system; nginx: master and workers) before and after each run.
#
# Both gateways: one worker (THREADS), TLS 1.2 and 1.3, one ECDSA P-256 certificate made for the
# run, proxying to the demo upstream with keep-alive. nginx logs to a buffered file; watchpost
# does its usual work per request (client IP, GeoIP, risk, one stream entry into its own Redis).
#
# Usage: benches/tls-compare.sh                         (10 s per run, 3 rounds)
#        DURATION=5 ROUNDS=1 benches/tls-compare.sh      (quick check)
# Knobs: DURATION=10 ROUNDS=3 CONNECTIONS=16 THREADS=1 UPSTREAM_PORT=18710 NGINX_PORT=18720
#        PROXY_PORT=18730 HEALTH_PORT=18740 REDIS_PORT=18750 KEEP=0 (1 keeps the work directory)
# Installs when missing (as root or with sudo): wrk, nginx, openssl, redis-server, redis-tools,
# curl, jq. Builds the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-16}"
THREADS="${THREADS:-1}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18710}"
NGINX_PORT="${NGINX_PORT:-18720}"
PROXY_PORT="${PROXY_PORT:-18730}"
HEALTH_PORT="${HEALTH_PORT:-18740}"
REDIS_PORT="${REDIS_PORT:-18750}"
KEEP="${KEEP:-0}"
MMDB="$ROOT/.cache/geo/geo-whois-asn-country.mmdb"
COMMAND_LINE="DURATION=$DURATION ROUNDS=$ROUNDS CONNECTIONS=$CONNECTIONS THREADS=$THREADS benches/tls-compare.sh"

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'tls-compare: %s\n' "$*" >&2
    exit 1
}
die_log() { # file message
    printf 'tls-compare: %s\n--- last lines of %s ---\n' "$2" "$1" >&2
    tail -n 40 "$1" >&2 2>/dev/null || true
    exit 1
}
for knob in DURATION ROUNDS CONNECTIONS THREADS UPSTREAM_PORT NGINX_PORT PROXY_PORT HEALTH_PORT REDIS_PORT; do
    [[ "${!knob}" =~ ^[1-9][0-9]*$ ]] || die "$knob must be a positive integer (got '${!knob}')"
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y "${missing[@]}" >/dev/null 2>&1 ||
        { as_root apt-get update >/dev/null && as_root apt-get install -y "${missing[@]}" >/dev/null; } ||
        die "apt-get install ${missing[*]} failed"
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

log "fetching the GeoIP database"
deploy/fetch-geo-db.sh >&2 || die "deploy/fetch-geo-db.sh failed"
log "building release binaries"
cargo build --release --locked -p watchpost-proxy -p watchpost-benches --bin watchpost-proxy \
    --bin watchpost-demo-upstream >&2 || die "cargo build failed"
BIN="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release"

for port in "$UPSTREAM_PORT" "$NGINX_PORT" "$PROXY_PORT" "$HEALTH_PORT" "$REDIS_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is already in use (move it with the *_PORT knobs)"
    fi
done

WORK="$(mktemp -d -t watchpost-tls-compare.XXXXXX)"
chmod 755 "$WORK"
mkdir -p "$WORK/nginx/tmp" "$WORK/redis" "$WORK/raw"
UPSTREAM_PID="" NGINX_PID="" PROXY_PID="" REDIS_PID=""
stop_pid() {
    [ -n "$1" ] || return 0
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$PROXY_PID"
    stop_pid "$NGINX_PID"
    stop_pid "$UPSTREAM_PID"
    stop_pid "$REDIS_PID"
    if [ "$KEEP" = "1" ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
wait_for() {
    local secs="$1"
    shift
    for _ in $(seq 1 $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

log "making an ECDSA P-256 certificate for bench.test"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null || die "openssl could not make a certificate"
chmod 644 "$WORK/key.pem"

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$WORK/redis" >>"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
wait_for 10 redis-cli -p "$REDIS_PORT" ping || die_log "$WORK/redis.log" "redis-server did not start"
"$BIN/watchpost-demo-upstream" --listen "127.0.0.1:$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 &
UPSTREAM_PID=$!
wait_for 10 curl -fsS "http://127.0.0.1:$UPSTREAM_PORT/" || die_log "$WORK/upstream.log" "the demo upstream did not answer"

cat >"$WORK/proxy.toml" <<EOF
[proxy]
listen = ""
tls_listen = "127.0.0.1:$PROXY_PORT"
tls_cert_path = "$WORK/cert.pem"
tls_key_path = "$WORK/key.pem"
upstreams = ["127.0.0.1:$UPSTREAM_PORT"]
health_listen = "127.0.0.1:$HEALTH_PORT"
proxy_id = "bench"
threads = $THREADS
upgrade_sock = "$WORK/upgrade.sock"

[redis]
url = "redis://127.0.0.1:$REDIS_PORT"

[geo]
mmdb_path = "$MMDB"

[risk]
rate_limit = 1000000000.0
EOF

cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes $THREADS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    client_body_temp_path $WORK/nginx/tmp/client_body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    keepalive_requests 1000000;
    upstream demo {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        # Every new connection a full handshake, as wrk never resumes.
        ssl_session_cache off;
        ssl_session_tickets off;
        access_log $WORK/nginx/access.log combined buffer=64k flush=1s;
        location / {
            proxy_pass http://demo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$remote_addr;
        }
    }
}
EOF

log "starting nginx on :$NGINX_PORT and watchpost-proxy on :$PROXY_PORT"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' >"$WORK/nginx.out" 2>&1 &
NGINX_PID=$!
"$BIN/watchpost-proxy" --config "$WORK/proxy.toml" >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
wait_for 20 curl -fsSk "https://127.0.0.1:$NGINX_PORT/" || die_log "$WORK/nginx/error.log" "nginx did not answer"
wait_for 20 curl -fsSk "https://127.0.0.1:$PROXY_PORT/" || die_log "$WORK/proxy.log" "watchpost-proxy did not answer"

# CPU ticks (user + system) of a process and its children processes (nginx workers).
ticks() { # pid
    local total=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        [ -r "/proc/$p/stat" ] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}
HZ="$(getconf CLK_TCK)"

# run <name> <pid> <port> <mode: keepalive|handshake> → "rps cpu_us_per_request"
run() {
    local name="$1" pid="$2" port="$3" mode="$4" extra=() before after out rps reqs
    [ "$mode" = handshake ] && extra=(-H "Connection: close")
    before="$(ticks "$pid")"
    out="$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "${extra[@]}" "https://127.0.0.1:$port/" 2>&1)"
    after="$(ticks "$pid")"
    printf '%s\n' "$out" >"$WORK/raw/$name-$mode-$(date +%s%N).txt"
    rps="$(printf '%s\n' "$out" | awk '/^Requests\/sec/ {print $2}')"
    reqs="$(printf '%s\n' "$out" | awk '/requests in/ {print $1}')"
    [ -n "$rps" ] && [ -n "$reqs" ] && [ "$reqs" -gt 0 ] || { printf '%s\n' "$out" >&2; die "wrk against $name ($mode) failed"; }
    if printf '%s\n' "$out" | grep -q "Non-2xx"; then
        printf '%s\n' "$out" >&2
        die "$name answered non-2xx during the $mode run"
    fi
    echo "$rps $(awk -v t=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
declare -A RPS CPU
for mode in keepalive handshake; do
    for target in nginx watchpost; do RPS[$target-$mode]=""; CPU[$target-$mode]=""; done
    log "warm-up ($mode)"
    run nginx "$NGINX_PID" "$NGINX_PORT" "$mode" >/dev/null
    run watchpost "$PROXY_PID" "$PROXY_PORT" "$mode" >/dev/null
    for r in $(seq 1 "$ROUNDS"); do
        for target in nginx watchpost; do
            if [ "$target" = nginx ]; then res="$(run nginx "$NGINX_PID" "$NGINX_PORT" "$mode")"
            else res="$(run watchpost "$PROXY_PID" "$PROXY_PORT" "$mode")"; fi
            log "round $r $mode $target: $res"
            RPS[$target-$mode]+="${res%% *}"$'\n'
            CPU[$target-$mode]+="${res##* }"$'\n'
        done
    done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

m() { printf '%s' "$1" | grep -v '^$' | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo "## TLS termination: nginx vs watchpost-proxy"
echo
echo "Command: \`$COMMAND_LINE\` ($(nproc) cores; load average $LOAD_BEFORE before, $LOAD_AFTER after)."
echo "$($NGINX -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), TLS certificate ECDSA P-256; median of $ROUNDS interleaved rounds of ${DURATION} s, wrk -t1 -c$CONNECTIONS, one worker each."
echo
echo "| run | target | requests/s | CPU µs/request |"
echo "|---|---|---:|---:|"
for mode in keepalive handshake; do
    for target in nginx watchpost; do
        echo "| $mode | $target | $(m "${RPS[$target-$mode]}") | $(m "${CPU[$target-$mode]}") |"
    done
done
echo
for mode in keepalive handshake; do
    echo "- $mode: watchpost/nginx requests/s $(ratio "$(m "${RPS[watchpost-$mode]}")" "$(m "${RPS[nginx-$mode]}")"), CPU per request $(ratio "$(m "${CPU[watchpost-$mode]}")" "$(m "${CPU[nginx-$mode]}")")×"
done
