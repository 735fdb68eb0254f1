#!/usr/bin/env bash
# Serving (see docs/benchmarks.md): what the model router adds to a prediction against a
# direct call to the serving agent (p50/p99, requests/s), and the LSTM's prediction latency
# per batch size (HTTP and the model alone), and the same router overhead for a sweep's own
# serving program ([serving], examples/serving/softmax_serve.py) against a direct call to it.
#   bench/serving.sh [REQUESTS] [CLIENTS] [SECONDS]
# Real processes on loopback: a coordinator, one serving agent, `flotilla router`.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-2000}
clients=${2:-8}
seconds=${3:-10}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(date -u +%Y-%m-%d)"
cargo bench -q -p flotilla --bench serving -- --requests "$requests" --clients "$clients" --seconds "$seconds"
