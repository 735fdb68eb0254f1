#!/usr/bin/env python3
"""A resumable command trial: logistic regression by mini-batch SGD, pure Python.

Trains on a seeded synthetic dataset (2,000 rows of 8 features: 1,600 to train on, 400 to
validate on) with learning rate `lr` and L2 penalty `l2` (default 0), batches of 32, up to
FLOTILLA_EPOCHS epochs (default 20). After every epoch it reports
`epoch`, `loss` and `accuracy` on the validation rows (step = epochs done), writes
`state.json` (weights, position, shuffling RNG state) into the checkpoint directory and
commits it.

It resumes exactly: started with FLOTILLA_RESUME_FROM, it loads `state.json` from there and
goes on from the position it holds, so an interrupted and resumed run ends with the same
weights, bit for bit, as one that never stopped. On SIGTERM it finishes the batch it is on,
commits a checkpoint of that exact position (which may be in the middle of an epoch) and
exits 0. With ASHA's promotion form each attempt trains up to its rung (FLOTILLA_EPOCHS),
commits and exits; a promoted trial resumes from that checkpoint with a larger
FLOTILLA_EPOCHS.

Each checkpoint line carries `step` = optimizer steps since the trial began (over all
attempts) and `epoch` = completed epochs. Steps grow with every batch, so a checkpoint taken
mid-epoch on SIGTERM is newer than the one committed at the end of the previous epoch.

FLOTILLA_EXAMPLE_EPOCH_SECONDS (default 0) sleeps that long per epoch, spread over its
batches, so that a test can stop the run part way. The contract is in docs/trials.md;
examples/resumable.toml is a sweep over this trial.
"""
import json
import math
import os
import random
import sys
import time
from pathlib import Path

try:
    import flotilla_trial as trial
except ImportError:  # not installed: use the copy in this repository's python/ folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
    import flotilla_trial as trial

FEATURES = 8
TRAIN_ROWS = 1600
VALID_ROWS = 400
BATCH_SIZE = 32
DATA_SEED = 1234
SHUFFLE_SEED = 7
STATE_FILE = "state.json"
STATE_FORMAT = 1


def make_data():
    """The same 2,000 rows on every run: a linear signal seen through logistic noise."""
    rng = random.Random(DATA_SEED)
    true_w = [rng.gauss(0, 1) for _ in range(FEATURES)]

    def sample(n):
        rows = []
        for _ in range(n):
            x = [rng.gauss(0, 1) for _ in range(FEATURES)]
            logit = sum(w * v for w, v in zip(true_w, x)) - 0.5
            y = 1 if rng.random() < 1 / (1 + math.exp(-2 * logit)) else 0
            rows.append((x, y))
        return rows

    return sample(TRAIN_ROWS), sample(VALID_ROWS)


def predict(weights, bias, x):
    z = sum(w * v for w, v in zip(weights, x)) + bias
    z = max(-30.0, min(30.0, z))
    return 1 / (1 + math.exp(-z))


def evaluate(weights, bias, rows):
    loss = 0.0
    correct = 0
    for x, y in rows:
        p = min(max(predict(weights, bias, x), 1e-7), 1 - 1e-7)
        loss -= y * math.log(p) + (1 - y) * math.log(1 - p)
        correct += int((p >= 0.5) == (y == 1))
    return loss / len(rows), correct / len(rows)


def fresh_state(lr, l2):
    shuffle = random.Random(SHUFFLE_SEED)
    return {
        "format": STATE_FORMAT,
        "lr": lr,
        "l2": l2,
        "weights": [0.0] * FEATURES,
        "bias": 0.0,
        "epoch": 0,  # completed epochs
        "batch": 0,  # batches done in the current epoch
        "step": 0,  # optimizer steps since the trial began
        "order": None,  # the current epoch's shuffled row order (mid-epoch only)
        "rng": shuffle.getstate(),
    }


def to_json(state):
    version, internal, gauss_next = state["rng"]
    saved = dict(state, rng=[version, list(internal), gauss_next])
    if saved["batch"] == 0:
        saved["order"] = None  # the next epoch draws its own order from the RNG
    return saved


def from_json(saved):
    version, internal, gauss_next = saved["rng"]
    return dict(saved, rng=(version, tuple(internal), gauss_next))


def load_state(directory, lr, l2):
    path = directory / STATE_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        sys.exit(f"cannot resume from {path}: {error}")
    if saved.get("format") != STATE_FORMAT:
        sys.exit(f"{path}: unknown state format {saved.get('format')!r}")
    if (saved["lr"], saved["l2"]) != (lr, l2):
        sys.exit(
            f"{path} was written with lr={saved['lr']!r} l2={saved['l2']!r}, "
            f"this trial has lr={lr!r} l2={l2!r}"
        )
    return from_json(saved)


def save_and_commit(state):
    """Writes the state as a new file in the (empty) checkpoint directory and commits it."""
    path = trial.checkpoint_dir() / STATE_FILE
    with open(path, "w") as file:
        json.dump(to_json(state), file)
    trial.commit(step=state["step"], epoch=state["epoch"])
    return (state["epoch"], state["batch"])


def main():
    trial.on_sigterm()
    lr = float(trial.param("lr", 0.1))
    l2 = float(trial.param("l2", 0.0))
    target = trial.epochs(20)
    pause = float(os.environ.get("FLOTILLA_EXAMPLE_EPOCH_SECONDS", "0") or 0)
    train, valid = make_data()
    batches = math.ceil(len(train) / BATCH_SIZE)

    resume = trial.resume_dir()
    if resume is not None:
        state = load_state(resume, lr, l2)
        print(f"resumed from epoch {state['epoch']}", flush=True)
        if state["batch"]:
            print(f"  at batch {state['batch']} of {batches}", flush=True)
        # The trial's latest checkpoint already holds this position.
        latest = (state["epoch"], state["batch"])
    else:
        state = fresh_state(lr, l2)
        latest = None
    committed_here = False
    shuffle = random.Random()
    shuffle.setstate(state["rng"])
    weights = state["weights"]
    bias = state["bias"]

    while state["epoch"] < target:
        if state["batch"] == 0:
            state["order"] = list(range(len(train)))
            shuffle.shuffle(state["order"])
            state["rng"] = shuffle.getstate()
        order = state["order"]
        while state["batch"] < batches:
            start = state["batch"] * BATCH_SIZE
            batch = [train[i] for i in order[start:start + BATCH_SIZE]]
            grad_w = [0.0] * FEATURES
            grad_b = 0.0
            for x, y in batch:
                error = predict(weights, bias, x) - y
                for j in range(FEATURES):
                    grad_w[j] += error * x[j]
                grad_b += error
            n = len(batch)
            weights = [w - lr * (g / n + l2 * w) for w, g in zip(weights, grad_w)]
            bias -= lr * grad_b / n
            state["weights"], state["bias"] = weights, bias
            state["batch"] += 1
            state["step"] += 1
            if pause:
                time.sleep(pause / batches)
            if trial.stop_requested():
                break
        if state["batch"] == batches:
            state["epoch"] += 1
            state["batch"] = 0
            loss, accuracy = evaluate(weights, bias, valid)
            trial.report(step=state["epoch"], epoch=state["epoch"], loss=loss, accuracy=accuracy)
            latest = save_and_commit(state)
            committed_here = True
        if trial.stop_requested():
            if latest != (state["epoch"], state["batch"]):
                save_and_commit(state)
            print(f"stopped at epoch {state['epoch']}, batch {state['batch']}", flush=True)
            return 0

    if not committed_here:
        # Resumed at (or past) the target: this attempt still ends with a checkpoint.
        save_and_commit(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
