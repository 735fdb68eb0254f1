"""The peer for the scheduling-overhead benchmark: the same two sweeps on Ray Tune.

Ray Tune runs `--slots` trials at once (Ray is told it has that many CPUs, as Flotilla's
embedded cluster is told it has 8 agents x 2 slots, whatever the machine has). Trials are
function trainables: no-op ones and ones that sleep `--sleep-seconds`. Prints Markdown rows
in the same columns as `sdk/benches/scheduling.rs` (Ray does not expose a dispatch latency).

    python3 -m venv /tmp/rayenv && /tmp/rayenv/bin/pip install "ray[tune]==2.60.0"
    /tmp/rayenv/bin/python bench/ray_tune_peer.py --noop-trials 1000 --sleep-trials 320
"""

import argparse
import math
import os
import tempfile
import time

import ray
from ray import tune


def noop(config):
    return {"x": config["x"]}


def make_sleeper(seconds):
    def sleeper(config):
        time.sleep(seconds)
        return {"x": config["x"]}

    return sleeper


def run(trainable, trials, slots, storage):
    tuner = tune.Tuner(
        trainable,
        param_space={"x": tune.uniform(0.0, 1.0)},
        # Actor reuse is Ray Tune's fastest setting for many short trials.
        tune_config=tune.TuneConfig(
            num_samples=trials, max_concurrent_trials=slots, reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=storage, verbose=0),
    )
    started = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - started
    ok = sum(1 for result in results if result.error is None)
    return wall, ok


def report(label, trials, ok, slots, wall, seconds):
    waves = math.ceil(trials / slots)
    ideal = waves * seconds
    per_trial_ms = (wall - ideal) / waves * 1000.0
    percent = f"{(wall - ideal) / ideal * 100.0:.2f}" if ideal > 0 else "–"
    print(
        f"| Ray Tune {ray.__version__}: {label} | {trials} ({ok} ok) | {slots} | {wall:.2f} | "
        f"{trials / wall:.0f} | – | – | {ideal:.0f} | {per_trial_ms:.2f} | {percent} |",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--noop-trials", type=int, default=1000)
    parser.add_argument("--sleep-trials", type=int, default=320)
    parser.add_argument("--sleep-seconds", type=float, default=1.0)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(num_cpus=args.slots, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        if args.noop_trials:
            wall, ok = run(noop, args.noop_trials, args.slots, storage)
            report("no-op", args.noop_trials, ok, args.slots, wall, 0.0)
        if args.sleep_trials:
            sleeper = make_sleeper(args.sleep_seconds)
            wall, ok = run(sleeper, args.sleep_trials, args.slots, storage)
            report(f"sleep {args.sleep_seconds:g} s", args.sleep_trials, ok, args.slots, wall,
                   args.sleep_seconds)
    ray.shutdown()


if __name__ == "__main__":
    main()
