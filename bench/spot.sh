#!/usr/bin/env bash
# Spot interruptions (see docs/benchmarks.md): notice → durable checkpoint of every running
# trial, and training lost per interruption, with a notice and without one (agent killed).
#   bench/spot.sh [ROUNDS] [SLOTS]
# Real processes on loopback: a coordinator, a spot agent watching an IMDS responder, an
# on-demand agent that takes the trials over; built-in LSTM trials on the CPU, then command
# trials (examples/trials/resumable.py) in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
slots=${2:-2}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(date -u +%Y-%m-%d)"
# Long enough that every trial is still training when the notice is read (IMDS is polled
# every 2 s; a release-build LSTM epoch takes about 0.05 s here).
cargo bench -q -p flotilla --bench spot -- --trial lstm --epochs 200 --notice-at 30 \
  --rounds "$rounds" --slots "$slots"
cargo bench -q -p flotilla --bench spot -- --trial command --epochs 60 --notice-at 30 \
  --epoch-seconds 0.25 --rounds "$rounds" --slots "$slots"
