#!/usr/bin/env python3
"""A command trial whose model is served: softmax regression on four features, pure Python.

Trains on a seeded synthetic dataset (three overlapping classes in four features: 900 rows to
train on, 300 to validate on) by mini-batch SGD with learning rate `lr`, L2 penalty `l2` and
`epochs` epochs, reporting `val_loss` and `accuracy` on the validation rows after every epoch.
`label_noise` (default 0) replaces that share of the training labels with random ones: a way
to make a deliberately worse model, as the canary tests do.
At the end it writes the model (`model.json`: the feature scaling and the weights) into the
checkpoint directory and commits it; `flotilla model register` (or `flotilla up … --serve`)
seals that checkpoint, and examples/serving/softmax_serve.py serves it.

The contract is in docs/trials.md; examples/served-command.toml is the sweep.
"""
import json
import math
import random
import sys
from pathlib import Path

try:
    import flotilla_trial as trial
except ImportError:  # not installed: use the copy in this repository's python/ folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
    import flotilla_trial as trial

FEATURES = 4
CLASSES = 3
DATA_SEED = 2024
BATCH = 16


def make_data(n=1200):
    """Three Gaussian classes whose centres lie close enough that they overlap."""
    rng = random.Random(DATA_SEED)
    centres = [[rng.gauss(0, 1.2) for _ in range(FEATURES)] for _ in range(CLASSES)]
    scales = [3.0, 0.5, 8.0, 1.0]  # features on very different scales
    rows = []
    for _ in range(n):
        label = rng.randrange(CLASSES)
        x = [(centres[label][f] + rng.gauss(0, 1.0)) * scales[f] for f in range(FEATURES)]
        rows.append((x, label))
    return rows[:900], rows[900:]


def softmax(logits):
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def main():
    lr = float(trial.param("lr", 0.1))
    l2 = float(trial.param("l2", 0.0))
    epochs = int(trial.param("epochs", 10))
    label_noise = float(trial.param("label_noise", 0.0))
    train, valid = make_data()
    noise = random.Random(11)
    train = [
        (x, noise.randrange(CLASSES) if noise.random() < label_noise else y) for x, y in train
    ]
    mean = [sum(x[f] for x, _ in train) / len(train) for f in range(FEATURES)]
    std = [
        math.sqrt(sum((x[f] - mean[f]) ** 2 for x, _ in train) / len(train)) or 1.0
        for f in range(FEATURES)
    ]

    def scaled(x):
        return [(x[f] - mean[f]) / std[f] for f in range(FEATURES)]

    train = [(scaled(x), y) for x, y in train]
    valid = [(scaled(x), y) for x, y in valid]
    w = [[0.0] * FEATURES for _ in range(CLASSES)]
    b = [0.0] * CLASSES
    rng = random.Random(7)
    for epoch in range(1, epochs + 1):
        rng.shuffle(train)
        for start in range(0, len(train), BATCH):
            batch = train[start:start + BATCH]
            gw = [[0.0] * FEATURES for _ in range(CLASSES)]
            gb = [0.0] * CLASSES
            for x, y in batch:
                p = softmax([sum(w[c][f] * x[f] for f in range(FEATURES)) + b[c] for c in range(CLASSES)])
                for c in range(CLASSES):
                    g = p[c] - (1.0 if c == y else 0.0)
                    gb[c] += g
                    for f in range(FEATURES):
                        gw[c][f] += g * x[f]
            for c in range(CLASSES):
                b[c] -= lr * gb[c] / len(batch)
                for f in range(FEATURES):
                    w[c][f] -= lr * (gw[c][f] / len(batch) + l2 * w[c][f])
        loss = 0.0
        right = 0
        for x, y in valid:
            p = softmax([sum(w[c][f] * x[f] for f in range(FEATURES)) + b[c] for c in range(CLASSES)])
            loss -= math.log(max(p[y], 1e-12))
            right += int(max(range(CLASSES), key=lambda c: p[c]) == y)
        trial.report(epoch, val_loss=loss / len(valid), accuracy=right / len(valid), epoch=epoch)
    model = {"format": 1, "mean": mean, "std": std, "weights": w, "bias": b}
    (trial.checkpoint_dir() / "model.json").write_text(json.dumps(model))
    trial.commit(epoch=epochs)


if __name__ == "__main__":
    main()
