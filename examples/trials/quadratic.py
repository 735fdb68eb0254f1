#!/usr/bin/env python3
"""A tiny command trial: minimises a noisy quadratic over a few "epochs".

Reads its parameters from FLOTILLA_PARAMS and reports metrics with the
`@flotilla name=value` line format that Flotilla agents read from stdout.
"""
import json
import os

params = json.loads(os.environ.get("FLOTILLA_PARAMS", "{}"))
x = float(params.get("x", 0.0))
scale = float(params.get("scale", 1.0))
for epoch in range(3):
    loss = (x - 1.5) ** 2 + 0.1 * abs(scale - 2.0) + 1.0 / (epoch + 1)
    print(f"@flotilla step={epoch} loss={loss:.6f}", flush=True)
