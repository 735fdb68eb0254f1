#!/usr/bin/env bash
# Tuning quality and suggestion latency: Flotilla's samplers (tuner crate) against Optuna's
# GPSampler, multivariate TPESampler and RandomSampler, in one run on this machine.
#
#   bench/tuner.sh                         # 100 evaluations, 20 seeds, latency at 50/200/1000
#   EVALS=50 SEEDS=3 bench/tuner.sh        # quicker
#   PARTS=latency SIZES=1000 OPTUNA_SIZES=1000 REPEATS=5 bench/tuner.sh   # latency only
#   PARTS=pareto bench/tuner.sh            # multi-objective: hypervolume on two- and three-objective problems
#                                          # (PARETO_SEEDS=5)
#   PARTS=curves bench/tuner.sh            # multi-fidelity: ASHA/Hyperband against Optuna's pruners
#                                          # (WORKERS=4 HORIZON=400 CURVE_SEEDS=10 GP_SEEDS=3)
#
# Optuna (with the torch, scipy and greenlet its GPSampler uses) comes from PyPI into a virtual
# environment outside the clone ($FLOTILLA_BENCH_VENV, default ~/.cache/flotilla-bench-venv).
# Raw results go to $OUT (default /tmp/flotilla-tuner-bench.jsonl); the
# summary tables print at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

EVALS="${EVALS:-100}"
SEEDS="${SEEDS:-20}"
# Optuna's multi-objective GP takes about 90 s a run: fewer seeds there.
PARETO_SEEDS="${PARETO_SEEDS:-5}"
SIZES="${SIZES:-50,200,1000}"
OPTUNA_SIZES="${OPTUNA_SIZES:-50,200}"
REPEATS="${REPEATS:-20}"
PARTS="${PARTS:-regret,pareto,latency}"
OUT="${OUT:-/tmp/flotilla-tuner-bench.jsonl}"
source bench/common.sh

bench_venv "optuna, torch, scipy, greenlet" "optuna>=5,<6" torch scipy numpy greenlet
cargo build --release -q -p flotilla-tuner --example tuner_bench
BIN="$CARGO_TARGET_DIR/release/examples/tuner_bench"

{
  machine_header
  echo "# optuna $("$VENV/bin/python" -c 'import optuna; print(optuna.__version__)'), torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'), $EVALS evaluations, $SEEDS seeds"
  if [[ ",$PARTS," == *,regret,* ]]; then
    "$BIN" regret "$EVALS" "$SEEDS"
    "$VENV/bin/python" bench/tuner_optuna.py regret "$EVALS" "$SEEDS"
  fi
  if [[ ",$PARTS," == *,pareto,* ]]; then
    "$BIN" pareto "$EVALS" "$PARETO_SEEDS"
    "$VENV/bin/python" bench/tuner_optuna.py pareto "$EVALS" "$PARETO_SEEDS"
  fi
  if [[ ",$PARTS," == *,curves,* ]]; then
    "$BIN" curves "${WORKERS:-4}" "${HORIZON:-400}" "${CURVE_SEEDS:-10}"
    "$VENV/bin/python" bench/tuner_optuna.py curves "${WORKERS:-4}" "${HORIZON:-400}" "${CURVE_SEEDS:-10}" "${GP_SEEDS:-3}"
  fi
  if [[ ",$PARTS," == *,latency,* ]]; then
    "$BIN" latency "$SIZES" "$REPEATS"
    "$VENV/bin/python" bench/tuner_optuna.py latency "$OPTUNA_SIZES" "$REPEATS"
  fi
} | tee "$OUT"
"$VENV/bin/python" bench/tuner_optuna.py summarize "$OUT"
