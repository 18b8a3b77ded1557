#!/usr/bin/env bash
# CANDIDATE_CMD for the shared proxy_bench.sh: our proxy with the benchmarked routes (/small,
# /large) in a carve-out in canary at 50 %, the monolith and the service both being the bench's
# upstream. So every request pays for route matching, the sticky split, the replay copy that
# fallback needs, and metrics.
#   cargo build --release -p strangler-proxy
#   CANDIDATE_NAME=strangler CANDIDATE_CMD="exec bash $PWD/strangler-proxy/bench/candidate.sh" \
#     ROUNDS=5 bash ../shared/bench/proxy_bench.sh
set -euo pipefail
: "${UPSTREAM_URL:?}" "${LISTEN_PORT:?}" "${CANDIDATE_WORKDIR:?}"
here=$(cd "$(dirname "$0")/../.." && pwd)
cat >"$CANDIDATE_WORKDIR/strangler.toml" <<TOML
[upstreams.monolith]
instances = ["$UPSTREAM_URL"]

[upstreams.bench]
instances = ["$UPSTREAM_URL"]

[[carveouts]]
name = "bench"
upstream = "bench"
phase = "canary"
percent = 50
routes = [{ methods = ["GET", "HEAD"], path = "/small" }, { methods = ["GET", "HEAD"], path = "/large" }]
TOML
exec "${STRANGLER_PROXY:-$here/target/release/strangler-proxy}" \
  --listen "127.0.0.1:$LISTEN_PORT" --admin-listen 127.0.0.1:0 \
  --config "$CANDIDATE_WORKDIR/strangler.toml" --control-db "$CANDIDATE_WORKDIR/control.db"
