#!/usr/bin/env bash
# Scheduling overhead, Flotilla against Ray Tune in one run (see docs/benchmarks.md).
#   bench/scheduling.sh [NOOP_TRIALS] [SLEEP_TRIALS] [LARGE_NOOP_TRIALS] [LARGE_SLEEP_TRIALS]
# The first two sizes run on both systems; the large ones on Flotilla only (Ray Tune needs
# tens of minutes for them on a small machine). Ray Tune goes into a virtualenv under
# $RAY_VENV (default /tmp/rayenv) from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
noop=${1:-200}
sleep_trials=${2:-160}
large_noop=${3:-10000}
large_sleep=${4:-10000}
venv=${RAY_VENV:-/tmp/rayenv}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import ray.tune' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "ray[tune]==2.60.0"
fi

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(date -u +%Y-%m-%d)"
cargo bench -q -p flotilla-sdk --features embedded --bench scheduling --no-run
bench() { cargo bench -q -p flotilla-sdk --features embedded --bench scheduling -- "$@"; }
echo
echo "same sizes, both systems:"
bench --noop-trials "$noop" --sleep-trials "$sleep_trials"
"$venv/bin/python" bench/ray_tune_peer.py --noop-trials "$noop" --sleep-trials "$sleep_trials" 2>/dev/null | grep '^|'
echo
echo "Flotilla at scale:"
bench --noop-trials "$large_noop" --sleep-trials "$large_sleep"
