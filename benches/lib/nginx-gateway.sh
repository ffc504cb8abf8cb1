# shellcheck shell=bash
# The nginx gateway that the benchmarks compare watchpost-proxy with, written in one place so
# that every comparison measures the same nginx: sourced by benches/gateway-compare.sh and
# benches/cpu-per-request.sh.
#
# nginx_gateway_conf DIR WORKERS LISTEN_PORT UPSTREAM_PORT MMDB TRUSTED_CIDR GEOIP2_MODULE
# prints an nginx.conf for a prefix directory DIR (its pid, logs and temp files live there;
# DIR/tmp must exist): WORKERS worker processes listening on 127.0.0.1:LISTEN_PORT, proxying
# to 127.0.0.1:UPSTREAM_PORT over kept-alive connections, with realip from TRUSTED_CIDR
# (X-Forwarded-For), the geoip2 country of the client from MMDB, the request headers
# watchpost sets, X-Request-Id on the response, and the stream entry's fields to a buffered
# log file (DIR/access.log).

# Directives both the gateway and an origin nginx need in `http {}`.
nginx_common_http() { # dir
    cat <<EOF
    client_body_temp_path $1/tmp/client_body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    # nginx closes a client keep-alive connection after 1000 requests by default; watchpost
    # does not, so neither does this gateway.
    keepalive_requests 1000000;
EOF
}

nginx_gateway_conf() { # dir workers listen_port upstream_port mmdb trusted_cidr geoip2_module
    local dir="$1" workers="$2" listen="$3" upstream="$4" mmdb="$5" trusted="$6" module="$7"
    # realip rewrites $remote_addr to the client before the geoip2 variable is evaluated, so
    # the lookup is of the client, as in watchpost.
    cat <<EOF
load_module $module;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
$(nginx_common_http "$dir")

    geoip2 $mmdb {
        \$geo_country country_code;
    }
    # watchpost sends "<client>, <trusted hops walked>, <peer>"; with one trusted hop and a
    # single-address header that is the incoming header followed by the peer.
    map \$http_x_forwarded_for \$wp_forwarded_for {
        "" \$realip_remote_addr;
        default "\$http_x_forwarded_for, \$realip_remote_addr";
    }
    map \$http_x_forwarded_for \$wp_ip_source {
        "" peer;
        default x-forwarded-for;
    }
    # The stream entry's 20 fields (SPEC §5); nginx has no risk score, so risk, reasons and
    # ua_type are constants; ts and latency are nginx's own units (seconds, ms resolution).
    log_format watchpost escape=json '{"ts":"\$msec","method":"\$request_method","host":"\$host",'
        '"path":"\$uri","query":"\$args","status":"\$status","ip":"\$remote_addr",'
        '"ip_source":"\$wp_ip_source","peer":"\$realip_remote_addr","country":"\$geo_country",'
        '"risk":"0.000","reasons":"","ua":"\$http_user_agent","ua_type":"browser",'
        '"decision":"allow","latency_us":"\$request_time","bytes_out":"\$bytes_sent",'
        '"upstream":"\$upstream_addr","request_id":"\$request_id","proxy_id":"nginx"}';

    upstream backend {
        server 127.0.0.1:$upstream;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$listen;
        set_real_ip_from $trusted;
        real_ip_header X-Forwarded-For;
        real_ip_recursive on;
        access_log $dir/access.log watchpost buffer=64k flush=1s;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Client-IP \$remote_addr;
            proxy_set_header X-Client-Country \$geo_country;
            proxy_set_header X-Request-Id \$request_id;
            proxy_set_header X-Forwarded-For \$wp_forwarded_for;
            # Removed like watchpost removes them (an empty value drops the header).
            proxy_set_header Forwarded "";
            proxy_set_header X-Real-IP "";
            proxy_set_header X-Risk-Score "";
            add_header X-Request-Id \$request_id always;
        }
    }
}
EOF
}
