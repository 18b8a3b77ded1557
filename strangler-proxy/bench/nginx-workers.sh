#!/usr/bin/env bash
# CANDIDATE_CMD for the shared proxy_bench.sh: nginx configured as the harness's nginx peer, with
# NGINX_WORKERS workers (default 2), for the scaling comparison in BENCHMARKS.md:
#   CANDIDATE_NAME=nginx-2w PIN=0 CANDIDATE_CMD="exec bash $PWD/strangler-proxy/bench/nginx-workers.sh" \
#     bash ../shared/bench/proxy_bench.sh
set -euo pipefail
: "${UPSTREAM_URL:?}" "${LISTEN_PORT:?}" "${CANDIDATE_WORKDIR:?}"
d=$CANDIDATE_WORKDIR
cat >"$d/nginx.conf" <<CONF
worker_processes ${NGINX_WORKERS:-2};
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  tcp_nodelay on;
  client_body_temp_path $d/body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
  upstream backend { server ${UPSTREAM_URL#http://}; keepalive 1024; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$LISTEN_PORT backlog=4096;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
exec nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log"
