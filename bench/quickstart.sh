#!/usr/bin/env bash
# Does tuning pay on the quickstart? Runs `flotilla up` on examples/quickstart.toml once per
# [algorithm] seed and prints, per seed: wall time, the best accuracy among the first 10 trials
# (the Sobol design), the winner's accuracy, the gain in accuracy points, and how many trials
# ASHA stopped, and the winner's learning rate and dropout (see docs/benchmarks.md,
# "Quickstart").
#
#   bench/quickstart.sh [SEED...]        # default: 42 1 2 3 4 5 6 7 8
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
seeds=("$@")
[ ${#seeds[@]} -eq 0 ] && seeds=(42 1 2 3 4 5 6 7 8)
cargo build --release -q -p flotilla
bin="$CARGO_TARGET_DIR/release/flotilla"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

machine_header
printf '%6s %7s %12s %8s %11s %8s  %s\n' seed "wall s" "design best" winner "gain (pt)" stopped \
  "winner (lr, dropout)"
for seed in "${seeds[@]}"; do
  dir="$work/$seed"
  mkdir -p "$dir"
  sed "s/^seed = .*/seed = $seed/" examples/quickstart.toml >"$dir/sweep.toml"
  start=$(date +%s.%N)
  (cd "$dir" && "$bin" up sweep.toml --dir out >log.txt 2>&1)
  end=$(date +%s.%N)
  python3 - "$dir"/out/results/*.json "$seed" "$start" "$end" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
seed, start, end = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
trials = results["trials"]
def best(selected):
    values = [t["objective"] for t in selected
              if t["state"] == "succeeded" and t["feasible"] and t["objective"] is not None]
    return max(values) if values else float("nan")
design, winner = best(t for t in trials if t["number"] < 10), best(trials)
top = next(t for t in trials if t["id"] == results["sweep"]["best_trial"])["params"]
stopped = sum(t["state"] == "stopped" for t in trials)
print(f"{seed:>6} {end - start:7.1f} {design:12.3f} {winner:8.3f} {100 * (winner - design):+11.1f} "
      f"{stopped:>5}/{len(trials)}  {top['learning_rate']:.2g}, {top['dropout']:.2f}")
PY
done
