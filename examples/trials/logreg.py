#!/usr/bin/env python3
"""The quickstart trial: logistic regression trained by mini-batch SGD, pure Python.

A seeded, imbalanced two-class dataset with a learnable signal is generated; the model
trains for `epochs` epochs with learning rate `lr`, L2 penalty `l2` and batch size
`batch_size`, and reports validation loss, accuracy and per-class accuracy every epoch
as `@flotilla` metric lines on stdout.
"""
import json
import math
import os
import random

params = json.loads(os.environ.get("FLOTILLA_PARAMS", "{}"))
lr = float(params.get("lr", 0.1))
l2 = float(params.get("l2", 1e-4))
epochs = int(params.get("epochs", 5))
batch_size = int(params.get("batch_size", 32))

rng = random.Random(1234)
features = 8
true_w = [rng.gauss(0, 1) for _ in range(features)]


def sample(n):
    rows = []
    for _ in range(n):
        x = [rng.gauss(0, 1) for _ in range(features)]
        logit = sum(w * v for w, v in zip(true_w, x)) - 1.2  # imbalanced: ~30% positives
        y = 1 if rng.random() < 1 / (1 + math.exp(-3 * logit)) else 0
        rows.append((x, y))
    return rows


train, valid = sample(1200), sample(400)
w = [0.0] * features
b = 0.0


def predict(x):
    z = sum(wi * xi for wi, xi in zip(w, x)) + b
    z = max(-30.0, min(30.0, z))
    return 1 / (1 + math.exp(-z))


order = list(range(len(train)))
shuffle = random.Random(int(os.environ.get("FLOTILLA_ATTEMPT", "0")) + 7)
for epoch in range(epochs):
    shuffle.shuffle(order)
    for start in range(0, len(order), batch_size):
        batch = [train[i] for i in order[start:start + batch_size]]
        grad_w = [0.0] * features
        grad_b = 0.0
        for x, y in batch:
            error = predict(x) - y
            for j in range(features):
                grad_w[j] += error * x[j]
            grad_b += error
        n = len(batch)
        w = [wj - lr * (gj / n + l2 * wj) for wj, gj in zip(w, grad_w)]
        b -= lr * grad_b / n
    loss = 0.0
    correct = [0, 0]
    total = [0, 0]
    for x, y in valid:
        p = min(max(predict(x), 1e-7), 1 - 1e-7)
        loss -= y * math.log(p) + (1 - y) * math.log(1 - p)
        total[y] += 1
        correct[y] += int((p >= 0.5) == (y == 1))
    print(
        f"@flotilla step={epoch} val_loss={loss / len(valid):.6f} "
        f"accuracy={sum(correct) / len(valid):.6f} "
        f"class_0_accuracy={correct[0] / max(total[0], 1):.6f} "
        f"class_1_accuracy={correct[1] / max(total[1], 1):.6f}",
        flush=True,
    )
