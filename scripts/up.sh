#!/usr/bin/env bash
# Builds Flotilla and runs `flotilla up` on the quickstart sweep (the built-in LSTM trainer,
# no Python): an in-process coordinator and local agents over QUIC, live progress, a
# leaderboard and a results file.
#
# It builds the `quickstart` profile (Cargo.toml): training and tuning optimised as in a
# release build, the control plane not, so the first build takes about half as long
# (docs/benchmarks.md, "Build time"). For a cluster, build `--release`
# (`cargo install --locked --path cli`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"
cargo build --profile quickstart -p flotilla
exec "$CARGO_TARGET_DIR/quickstart/flotilla" up "$@"
