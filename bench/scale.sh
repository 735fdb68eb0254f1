#!/usr/bin/env bash
# Scale without surprises (see docs/benchmarks.md): a thousand load agents and fifty sweeps
# against one coordinator, then the growth curves against agents and against concurrent
# sweeps, then takeover against 0 to a million stored trials on a real etcd.
#   bench/scale.sh [SVG_DIR]     (default docs/benchmarks)
set -euo pipefail
cd "$(dirname "$0")/.."
svg=${1:-docs/benchmarks}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(date -u +%Y-%m-%d)"
scale() { cargo bench -q -p flotilla-sdk --features embedded --bench scale -- "$@"; }
scale --agents 1000 --slots 8 --sweeps 50 --trial-ms 10000 --seconds 60 --warmup 15
scale --agents 100,300,1000 --sweeps 50 --slots 8 --trial-ms 10000 --seconds 60 --warmup 15 --svg "$svg"
scale --agents 1000 --sweeps 10,50,100 --slots 8 --trial-ms 10000 --seconds 60 --warmup 15 --svg "$svg"
cargo build -q --release -p flotilla -p flotilla-cluster-tests --bins
"$CARGO_TARGET_DIR/release/takeover-bench" 0,10000,100000,1000000 3 --svg "$svg"
