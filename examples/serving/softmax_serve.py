#!/usr/bin/env python3
"""Serves a model written by examples/trials/softmax.py (pure Python).

Loads `model.json` from FLOTILLA_MODEL_DIR and answers KServe v1 requests on
127.0.0.1:FLOTILLA_SERVE_PORT: `{"instances": [[f1, f2, f3, f4], ...]}` gets
`{"predictions": [class, ...]}`, each class an integer (0, 1 or 2), so a canary of this model
is judged on accuracy when labels come back. `GET /healthz` answers once the model is loaded.
The contract is in docs/trials.md ("Serving programs").
"""
import json
import math
import sys
from pathlib import Path

try:
    import flotilla_serve
except ImportError:  # not installed: use the copy in this repository's python/ folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
    import flotilla_serve

model = json.loads((flotilla_serve.model_dir() / "model.json").read_text())
MEAN, STD = model["mean"], model["std"]
WEIGHTS, BIAS = model["weights"], model["bias"]
FEATURES = len(MEAN)


def predict(instances):
    predictions = []
    for row in instances:
        if not isinstance(row, list) or len(row) != FEATURES:
            raise flotilla_serve.BadInput(f"each instance is a list of {FEATURES} numbers")
        try:
            x = [(float(v) - m) / s for v, m, s in zip(row, MEAN, STD)]
        except (TypeError, ValueError):
            raise flotilla_serve.BadInput(f"each instance is a list of {FEATURES} numbers")
        if not all(math.isfinite(v) for v in x):
            raise flotilla_serve.BadInput("instances must be finite")
        logits = [sum(w * v for w, v in zip(ws, x)) + b for ws, b in zip(WEIGHTS, BIAS)]
        predictions.append(max(range(len(logits)), key=logits.__getitem__))
    return predictions


flotilla_serve.serve(predict)
