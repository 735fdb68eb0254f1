"""Unit tests for flotilla_trial: python3 -m unittest discover -s python/tests"""
import contextlib
import fractions
import io
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flotilla_trial as trial  # noqa: E402


def environment(**values):
    """Patches os.environ: every FLOTILLA_* variable removed, then `values` set."""
    patched = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
    patched.update(values)
    return mock.patch.dict(os.environ, patched, clear=True)


class ParamsTest(unittest.TestCase):
    def test_reads_the_json_object(self):
        with environment(FLOTILLA_PARAMS='{"lr": 0.01, "layers": 3, "act": "relu", "bn": true}'):
            self.assertEqual(
                trial.params(), {"lr": 0.01, "layers": 3, "act": "relu", "bn": True}
            )
            self.assertEqual(trial.param("lr"), 0.01)
            self.assertEqual(trial.param("missing", 7), 7)
            self.assertIsNone(trial.param("missing"))

    def test_no_parameters_outside_an_agent(self):
        with environment():
            self.assertEqual(trial.params(), {})
            self.assertEqual(trial.param("lr", 0.1), 0.1)

    def test_malformed_parameters_are_errors(self):
        for raw in ["{", "[1, 2]", '"lr"']:
            with environment(FLOTILLA_PARAMS=raw), self.assertRaises(ValueError):
                trial.params()


class EnvironmentTest(unittest.TestCase):
    def test_identity(self):
        with environment(
            FLOTILLA_SWEEP_ID="s3", FLOTILLA_TRIAL_ID="s3-t14", FLOTILLA_ATTEMPT="2"
        ):
            self.assertEqual(trial.sweep_id(), "s3")
            self.assertEqual(trial.trial_id(), "s3-t14")
            self.assertEqual(trial.attempt(), 2)
        with environment():
            self.assertIsNone(trial.sweep_id())
            self.assertIsNone(trial.trial_id())
            self.assertEqual(trial.attempt(), 0)
        with environment(FLOTILLA_ATTEMPT="two"), self.assertRaises(ValueError):
            trial.attempt()

    def test_epochs(self):
        with environment():
            self.assertEqual(trial.epochs(20), 20)
        with environment(FLOTILLA_EPOCHS=""):
            self.assertEqual(trial.epochs(20), 20)
        with environment(FLOTILLA_EPOCHS="6"):
            self.assertEqual(trial.epochs(20), 6)
        with environment(FLOTILLA_EPOCHS=" 18 "):
            self.assertEqual(trial.epochs(20), 18)
        for bad in ["-1", "1.5", "six", "\u00b2"]:
            with environment(FLOTILLA_EPOCHS=bad), self.assertRaises(ValueError) as raised:
                trial.epochs(20)
            self.assertIn("FLOTILLA_EPOCHS", str(raised.exception))

    def test_gpus(self):
        with environment():
            self.assertEqual(trial.gpus(), [])
        with environment(FLOTILLA_GPUS=""):
            self.assertEqual(trial.gpus(), [])
        with environment(FLOTILLA_GPUS="3"):
            self.assertEqual(trial.gpus(), [3])
        with environment(FLOTILLA_GPUS="0,3"):
            self.assertEqual(trial.gpus(), [0, 3])
        with environment(FLOTILLA_GPUS=" 1 , 2 "):
            self.assertEqual(trial.gpus(), [1, 2])
        for bad in ["0,,1", "GPU-5d2e", "-1", "1;2"]:
            with environment(FLOTILLA_GPUS=bad), self.assertRaises(ValueError):
                trial.gpus()

    def test_resume_helpers(self):
        with environment():
            self.assertIsNone(trial.resume_dir())
            self.assertIsNone(trial.resume_step())
            self.assertIsNone(trial.resume_epoch())
        with environment(
            FLOTILLA_RESUME_FROM="/tmp/resume/s3-t14",
            FLOTILLA_RESUME_STEP="1200",
            FLOTILLA_RESUME_EPOCH="6",
        ):
            self.assertEqual(trial.resume_dir(), Path("/tmp/resume/s3-t14"))
            self.assertEqual(trial.resume_step(), 1200)
            self.assertEqual(trial.resume_epoch(), 6)
        with environment(FLOTILLA_RESUME_FROM=""):
            self.assertIsNone(trial.resume_dir())
        with environment(FLOTILLA_RESUME_STEP="x"), self.assertRaises(ValueError):
            trial.resume_step()
        with environment(FLOTILLA_RESUME_EPOCH="2.5"), self.assertRaises(ValueError):
            trial.resume_epoch()


class ReportTest(unittest.TestCase):
    def report(self, *args, **kwargs):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            line = trial.report(*args, **kwargs)
        self.assertEqual(out.getvalue(), line + "\n")
        return line

    def test_formats_one_line(self):
        self.assertEqual(
            self.report(step=3, loss=0.25, accuracy=0.91),
            "@flotilla step=3 loss=0.25 accuracy=0.91",
        )
        self.assertEqual(self.report(loss=1), "@flotilla loss=1")
        self.assertEqual(self.report(step=0, epoch=2.0), "@flotilla step=0 epoch=2.0")
        self.assertEqual(self.report(step=4.0, x=-0.0), "@flotilla step=4 x=-0.0")
        self.assertEqual(
            self.report(**{"val/loss": 1e-7, "train.acc": 1e20}),
            "@flotilla val/loss=1e-07 train.acc=1e+20",
        )
        self.assertEqual(self.report(half=fractions.Fraction(1, 2)), "@flotilla half=0.5")

    def test_values_parse_back_exactly(self):
        for value in [0.1, 1 / 3, 2.0**-1074, 1.7976931348623157e308, -123456.789e-30]:
            line = self.report(v=value)
            self.assertEqual(float(line.split("=", 1)[1]), value)

    def test_invalid_metrics_name_the_culprit_and_print_nothing(self):
        cases = [
            ({"loss": float("nan")}, "loss"),
            ({"loss": float("inf")}, "loss"),
            ({"acc": 0.5, "loss": -float("inf")}, "loss"),
            ({"loss": "0.5"}, "loss"),
            ({"flag": True}, "flag"),
            ({"loss": None}, "loss"),
            ({"loss": [0.5]}, "loss"),
            ({"loss": 1j}, "loss"),
            ({"a b": 1.0}, "a b"),
            ({"l$s": 1.0}, "l$s"),
            ({"": 1.0}, "''"),
            ({"caf\u00e9": 1.0}, "caf\u00e9"),
        ]
        for metrics, culprit in cases:
            out = io.StringIO()
            with self.subTest(metrics=metrics), contextlib.redirect_stdout(out):
                with self.assertRaises(ValueError) as raised:
                    trial.report(step=1, **metrics)
                self.assertIn(culprit, str(raised.exception))
            self.assertEqual(out.getvalue(), "")

    def test_invalid_steps(self):
        for step in [-1, 1.5, True, "3", float("nan")]:
            out = io.StringIO()
            with self.subTest(step=step), contextlib.redirect_stdout(out):
                with self.assertRaises(ValueError) as raised:
                    trial.report(step=step, loss=1.0)
                self.assertIn("step", str(raised.exception))
            self.assertEqual(out.getvalue(), "")

    def test_needs_a_metric(self):
        with self.assertRaises(ValueError):
            trial.report(step=1)


class LineTap(io.TextIOBase):
    """Stands in for stdout: hands every complete line to a queue."""

    def __init__(self):
        self.lines = queue.Queue()
        self.pending = ""

    def writable(self):
        return True

    def write(self, text):
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self.lines.put(line)
        return len(text)


class FakeAgent(threading.Thread):
    """Reads the trial's lines; on each checkpoint line renames the directory to a numbered
    copy and makes a new, empty one at the same path, after `delay` (and `gap` between the
    rename and the new directory)."""

    def __init__(self, tap, directory, committed, delay=0.05, gap=0.0):
        super().__init__(daemon=True)
        self.tap, self.directory, self.committed = tap, directory, committed
        self.delay, self.gap = delay, gap
        self.seen = []
        self.taken = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                line = self.tap.lines.get(timeout=0.01)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line.split()[:2] == ["@flotilla", "checkpoint"]:
                time.sleep(self.delay)
                target = self.committed / str(len(self.taken) + 1)
                os.rename(self.directory, target)
                time.sleep(self.gap)
                os.mkdir(self.directory)
                self.taken.append(target)


class CommitTest(unittest.TestCase):
    def setUp(self):
        root = tempfile.TemporaryDirectory()
        self.addCleanup(root.cleanup)
        self.root = Path(root.name)
        self.directory = self.root / "checkpoint"
        self.directory.mkdir()
        self.committed = self.root / "committed"
        self.committed.mkdir()
        patch = environment(FLOTILLA_CHECKPOINT_DIR=str(self.directory))
        patch.start()
        self.addCleanup(patch.stop)
        self.tap = LineTap()
        redirect = contextlib.redirect_stdout(self.tap)
        redirect.__enter__()
        self.addCleanup(redirect.__exit__, None, None, None)

    def agent(self, **kwargs):
        agent = FakeAgent(self.tap, self.directory, self.committed, **kwargs)
        agent.start()
        self.addCleanup(agent.done.set)
        return agent

    def test_commit_waits_until_the_agent_took_the_directory(self):
        agent = self.agent(delay=0.2)
        self.assertEqual(trial.checkpoint_dir(), self.directory)
        (trial.checkpoint_dir() / "model.bin").write_bytes(b"\x00\x01weights")
        (trial.checkpoint_dir() / "meta.json").write_text('{"epoch": 1}')
        started = time.monotonic()
        self.assertTrue(trial.commit(step=3, epoch=1))
        self.assertGreaterEqual(time.monotonic() - started, 0.2)
        self.assertEqual(agent.seen, ["@flotilla checkpoint step=3 epoch=1"])
        self.assertEqual(len(agent.taken), 1)
        self.assertEqual(
            sorted(p.name for p in agent.taken[0].iterdir()), ["meta.json", "model.bin"]
        )
        self.assertEqual((agent.taken[0] / "model.bin").read_bytes(), b"\x00\x01weights")
        # The same path is a new, empty directory for the next checkpoint.
        self.assertTrue(self.directory.is_dir())
        self.assertEqual(list(self.directory.iterdir()), [])

        (trial.checkpoint_dir() / "model.bin").write_bytes(b"second")
        self.assertTrue(trial.commit())
        self.assertEqual(agent.seen[-1], "@flotilla checkpoint")
        self.assertEqual(len(agent.taken), 2)
        self.assertEqual((agent.taken[1] / "model.bin").read_bytes(), b"second")
        self.assertEqual((agent.taken[0] / "model.bin").read_bytes(), b"\x00\x01weights")

    def test_commit_returns_only_once_the_new_directory_exists(self):
        agent = self.agent(delay=0.0, gap=0.2)
        (self.directory / "state.json").write_text("{}")
        self.assertTrue(trial.commit(step=1))
        self.assertTrue(self.directory.is_dir())
        self.assertEqual(len(agent.taken), 1)

    def test_an_empty_directory_is_refused(self):
        agent = self.agent()
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            self.assertFalse(trial.commit(step=1))
        self.assertIn("empty", errors.getvalue())
        self.assertIn(str(self.directory), errors.getvalue())
        time.sleep(0.05)
        self.assertEqual(agent.seen, [])
        self.assertTrue(self.tap.lines.empty())

    def test_times_out_when_nobody_takes_the_directory(self):
        (self.directory / "state.json").write_text("{}")
        started = time.monotonic()
        with self.assertRaises(TimeoutError):
            trial.commit(step=2, timeout=0.2)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(self.tap.lines.get_nowait(), "@flotilla checkpoint step=2")
        self.assertTrue((self.directory / "state.json").exists())

    def test_invalid_step_or_epoch_commits_nothing(self):
        (self.directory / "state.json").write_text("{}")
        for kwargs in [{"step": -1}, {"epoch": 1.5}, {"step": "3"}, {"epoch": True}]:
            with self.subTest(**kwargs), self.assertRaises(ValueError):
                trial.commit(timeout=0.1, **kwargs)
        self.assertTrue(self.tap.lines.empty())


class StandaloneCheckpointTest(unittest.TestCase):
    def test_fallback_directory_and_commit_without_an_agent(self):
        with environment():
            directory = trial.checkpoint_dir()
            self.addCleanup(lambda: [p.unlink() for p in directory.iterdir()])
            self.assertTrue(directory.is_dir())
            self.assertEqual(trial.checkpoint_dir(), directory)
            out, errors = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errors):
                self.assertFalse(trial.commit())
                (directory / "state.json").write_text("{}")
                started = time.monotonic()
                self.assertTrue(trial.commit(step=5, epoch=2))
                self.assertLess(time.monotonic() - started, 1.0)
            self.assertIn("empty", errors.getvalue())
            self.assertEqual(out.getvalue(), "@flotilla checkpoint step=5 epoch=2\n")
            self.assertTrue((directory / "state.json").exists())


class SigtermTest(unittest.TestCase):
    def setUp(self):
        previous = signal.getsignal(signal.SIGTERM)
        self.addCleanup(signal.signal, signal.SIGTERM, previous)
        self.addCleanup(setattr, trial, "_stop_requested", False)

    def deliver(self):
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not trial.stop_requested() and time.monotonic() < deadline:
            time.sleep(0.01)

    def test_sets_the_flag_and_calls_back(self):
        calls = []
        trial.on_sigterm(lambda: calls.append("stop"))
        self.assertFalse(trial.stop_requested())
        self.deliver()
        self.assertTrue(trial.stop_requested())
        self.assertEqual(calls, ["stop"])

    def test_without_a_callback(self):
        trial.on_sigterm()
        self.deliver()
        self.assertTrue(trial.stop_requested())


if __name__ == "__main__":
    unittest.main()
