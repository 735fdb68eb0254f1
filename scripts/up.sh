#!/usr/bin/env bash
# Builds Flotilla and runs `flotilla up` on the quickstart sweep (the built-in LSTM trainer,
# no Python): an in-process coordinator and local agents over QUIC, live progress, a
# leaderboard and a results file.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"
cargo build --release -p flotilla
exec "$CARGO_TARGET_DIR/release/flotilla" up "$@"
