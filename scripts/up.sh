#!/usr/bin/env bash
# Builds Flotilla and runs `flotilla up` on the quickstart sweep: an in-process coordinator
# and local agents over QUIC, live progress, a leaderboard and a results file.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v python3 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3; else sudo apt-get update -qq && sudo apt-get install -y -qq python3; fi
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"
cargo build --release -p flotilla
exec "$CARGO_TARGET_DIR/release/flotilla" up "$@"
