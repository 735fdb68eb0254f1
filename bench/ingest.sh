#!/usr/bin/env bash
# Metric ingest, Flotilla against Ray Tune in one run (see docs/benchmarks.md).
#   bench/ingest.sh [SECONDS] [POINTS_PER_TRIAL] [RAY_POINTS_PER_TRIAL]
# Rows: load agents over the protocol flat out (batches of 1 and 64 points) and at fixed
# offered rates; real agents with trial processes printing metric lines; Ray Tune 2.60.0
# (installed into a virtualenv under $RAY_VENV, default /tmp/rayenv, from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
points=${2:-200000}
ray_points=${3:-2000}
venv=${RAY_VENV:-/tmp/rayenv}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import ray.tune' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "ray[tune]==2.60.0"
fi

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(date -u +%Y-%m-%d)"
cargo bench -q -p flotilla-sdk --features embedded --bench ingest --no-run
bench() { cargo bench -q -p flotilla-sdk --features embedded --bench ingest -- "$@" | grep '^|'; }
echo
echo "| setup | agents | points/batch | offered points/s | sent | received | s | points/s | lag p50 ms | lag p99 ms | lag max ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
bench --seconds "$seconds" --batch 1
bench --seconds "$seconds" --batch 64
for rate in 1250 12500 25000 37500; do
  bench --seconds "$seconds" --batch 256 --rate "$rate"
done
bench --setup agents --points "$points"
"$venv/bin/python" bench/ray_tune_ingest_peer.py --trials 8 --points "$ray_points" 2>/dev/null | grep '^|'
