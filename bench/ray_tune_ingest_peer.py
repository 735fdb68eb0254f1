"""The peer for the metric-ingest benchmark: Ray Tune taking reported results from 8 trials.

`--trials` function trainables run at once (Ray is told it has that many CPUs); each calls
`tune.report` `--points` times as fast as it can, every result carrying the wall clock when it
was made. A driver-side callback (`on_trial_result`, where Ray Tune hands each result to
searchers, schedulers and loggers) counts results and takes each one's lag. Throughput is
results over the time from the first made to the last seen, as in `sdk/benches/ingest.rs`.
Ray Tune's default loggers stay on. Prints a Markdown row in the benchmark's columns.

    python3 -m venv /tmp/rayenv && /tmp/rayenv/bin/pip install "ray[tune]==2.60.0"
    /tmp/rayenv/bin/python bench/ray_tune_ingest_peer.py --trials 8 --points 2000
"""

import argparse
import os
import tempfile
import time

import ray
from ray import tune


class Lag(tune.Callback):
    def __init__(self):
        self.lags = []
        self.first_sent = None
        self.last_seen = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        seen = time.time()
        sent = result.get("sent")
        if sent is None:
            return
        self.first_sent = sent if self.first_sent is None else min(self.first_sent, sent)
        self.last_seen = seen
        self.lags.append(seen - sent)


def make_reporter(points):
    def reporter(config):
        for step in range(points):
            tune.report({"loss": 1.0 / (step + 1), "sent": time.time()})

    return reporter


def percentile_ms(sorted_lags, fraction):
    if not sorted_lags:
        return float("nan")
    rank = round((len(sorted_lags) - 1) * fraction)
    return sorted_lags[rank] * 1000.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--points", type=int, default=2000)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(num_cpus=args.trials, include_dashboard=False, log_to_driver=False)
    lag = Lag()
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(
            make_reporter(args.points),
            param_space={"x": tune.uniform(0.0, 1.0)},
            tune_config=tune.TuneConfig(
                num_samples=args.trials, max_concurrent_trials=args.trials
            ),
            run_config=tune.RunConfig(storage_path=storage, verbose=0, callbacks=[lag]),
        )
        tuner.fit()
    ray.shutdown()
    sent = args.trials * args.points
    seconds = lag.last_seen - lag.first_sent
    lags = sorted(lag.lags)
    print(
        f"| Ray Tune {ray.__version__} | {args.trials} | 1 | max | {sent} | {len(lags)} | "
        f"{seconds:.2f} | {len(lags) / seconds:.0f} | {percentile_ms(lags, 0.5):.2f} | "
        f"{percentile_ms(lags, 0.99):.2f} | {percentile_ms(lags, 1.0):.2f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
