#!/usr/bin/env bash
# Training throughput of the built-in LSTM classifier (burn, flotilla-train) against the same
# model in PyTorch, in one run on this machine. Each configuration is the seeds' LSTM at one
# size; every figure is the median samples/s of the training pass over epochs 2..N.
#
#   bench/lstm.sh                 # CPU: burn (one thread) vs PyTorch with 1 thread and default threads
#   DEVICE=cuda bench/lstm.sh     # GPU: a `--features cuda` build vs PyTorch's cuDNN LSTM
#
# PyTorch comes from PyPI into a virtual environment outside the clone
# ($FLOTILLA_BENCH_VENV, default ~/.cache/flotilla-bench-venv). Set LSTM_BURN to use a
# prebuilt throughput binary (e.g. one carried to a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE="${DEVICE:-cpu}"
EPOCHS="${EPOCHS:-5}"
SAMPLES="${SAMPLES:-2048}"
source bench/common.sh

bench_venv torch torch numpy
if [ -z "${LSTM_BURN:-}" ]; then
  features=()
  [ "$DEVICE" = cuda ] && features=(--features cuda)
  cargo build --release -q -p flotilla-train --example lstm_throughput "${features[@]}"
  LSTM_BURN="$CARGO_TARGET_DIR/release/examples/lstm_throughput"
fi

machine_header
echo "# torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'), device $DEVICE, $SAMPLES samples, $EPOCHS epochs"
printf '%-28s %12s %14s %14s %14s %9s %9s\n' config burn torch-1thread torch-default torch-cell-1t "vs 1t" "vs dflt"

# hidden layers heads batch seq_len features
configs=(
  "64 1 4 64 48 4"
  "128 1 8 64 48 4"
  "128 2 8 64 48 4"
  "64 1 4 256 48 4"
)
figure() { python3 -c 'import json,sys; print(round(json.load(sys.stdin)["samples_per_second"], 1))'; }
# The PyTorch figure for the current configuration (the loop's variables), extra flags appended.
torch() {
  "$VENV/bin/python" bench/lstm_torch.py --hidden-size "$hidden" --num-layers "$layers" \
    --num-heads "$heads" --batch-size "$batch" --seq-len "$seq" --features "$features" \
    --samples "$SAMPLES" --epochs "$EPOCHS" --device "$DEVICE" "$@" | figure
}
ratio() { [ "$2" = "-" ] && echo "-" || python3 -c "print(f'{$1 / $2:.2f}')"; }
for config in "${configs[@]}"; do
  read -r hidden layers heads batch seq features <<<"$config"
  burn=$("$LSTM_BURN" hidden_size="$hidden" num_layers="$layers" num_heads="$heads" \
    batch_size="$batch" seq_len="$seq" features="$features" samples="$SAMPLES" epochs="$EPOCHS" \
    device="$DEVICE" | figure)
  if [ "$DEVICE" = cpu ]; then
    one=$(torch --threads 1)
    cell=$(torch --threads 1 --lstm cell)
  else
    one="-"
    cell=$(torch --lstm cell)
  fi
  default=$(torch)
  printf '%-28s %12s %14s %14s %14s %9s %9s\n' \
    "h$hidden l$layers heads$heads b$batch t$seq f$features" "$burn" "$one" "$default" "$cell" \
    "$(ratio "$burn" "$one")" "$(ratio "$burn" "$default")"
done
