#!/usr/bin/env bash
# A candidate for ../shared/bench/proxy_bench.sh: the proxy with the benchmarked routes in a
# canary carve-out (50 %, its service the same upstream), optionally under a running rollout
# (ROLLOUT=1: its controller measures and judges every second; the plan's one step never ends).
#
#   cargo build --release -p strangler-proxy
#   CANDIDATE_NAME=canary CANDIDATE_CMD="exec bash $PWD/strangler-proxy/benches/harness/canary.sh" \
#     bash ../shared/bench/proxy_bench.sh
#   ROLLOUT=1 CANDIDATE_NAME=canary-rollout CANDIDATE_CMD="exec env ROLLOUT=1 bash $PWD/strangler-proxy/benches/harness/canary.sh" \
#     bash ../shared/bench/proxy_bench.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/../../.." && pwd)"
config="$CANDIDATE_WORKDIR/strangler.toml"
cat > "$config" <<TOML
[upstreams.monolith]
instances = ["$UPSTREAM_URL"]
[upstreams.service]
instances = ["$UPSTREAM_URL"]
[[carveouts]]
name = "bench"
upstream = "service"
phase = "canary"
percent = 50
routes = [{ path = "/*" }]
rollout = { steps = ["canary 50% 24h"], interval_ms = 1000 }
TOML
out="$CANDIDATE_WORKDIR/proxy.out"
"$here/target/release/strangler-proxy" --config "$config" --listen "127.0.0.1:$LISTEN_PORT" \
  --admin-listen 127.0.0.1:0 --control-db "$CANDIDATE_WORKDIR/control.db" >"$out" 2>"$CANDIDATE_WORKDIR/proxy.err" &
proxy=$!
if [ "${ROLLOUT:-0}" = 1 ]; then
  for _ in $(seq 1 200); do
    admin=$(sed -n 's/.*(admin \(http:[^)]*\)).*/\1/p' "$out")
    [ -n "$admin" ] && break
    sleep 0.05
  done
  curl -sf -X POST "$admin/carveouts/bench/rollout" -H 'content-type: application/json' -d '{}' >/dev/null
fi
wait "$proxy"
