"""examples/trials/resumable.py under a simulated agent: an interrupted and resumed run ends
bit for bit where an uninterrupted one does.

The simulated agent does what a Flotilla agent does with checkpoints: it runs the trial with
FLOTILLA_CHECKPOINT_DIR set, reads its stdout, and on each `@flotilla checkpoint` line renames
the directory to a numbered copy and makes a new, empty one in its place. A later attempt gets
FLOTILLA_RESUME_FROM pointing at a copy of the last committed directory.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "trials" / "resumable.py"
EPOCHS = 6
BATCHES_PER_EPOCH = 50  # 1,600 training rows in batches of 32


def clean_environment(**values):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
    env.pop("PYTHONPATH", None)  # the script must find the helper by itself
    env.update(values)
    return env


class Attempt:
    """One attempt of the trial, with the files of each checkpoint it committed."""

    def __init__(self, workdir, env, on_line=None, timeout=120):
        workdir.mkdir(parents=True)
        self.checkpoint = workdir / "checkpoint"
        self.checkpoint.mkdir()
        committed = workdir / "committed"
        committed.mkdir()
        self.lines = []
        self.commits = []  # (line, directory)
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT)],
            cwd=str(workdir),
            env=clean_environment(FLOTILLA_CHECKPOINT_DIR=str(self.checkpoint), **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        watchdog = threading.Timer(timeout, process.kill)
        watchdog.start()
        errors = []
        reader = threading.Thread(target=lambda: errors.append(process.stderr.read()))
        reader.start()
        try:
            for line in process.stdout:
                line = line.rstrip("\n")
                self.lines.append(line)
                if line.split()[:2] == ["@flotilla", "checkpoint"]:
                    target = committed / f"{len(self.commits) + 1:04d}"
                    os.rename(self.checkpoint, target)
                    self.checkpoint.mkdir()
                    self.commits.append((line, target))
                if on_line is not None:
                    on_line(process, line)
            self.returncode = process.wait()
        finally:
            watchdog.cancel()
            reader.join()
        self.stderr = errors[0] if errors else ""

    def metric_lines(self):
        return [
            line
            for line in self.lines
            if line.startswith("@flotilla ") and line.split()[1] != "checkpoint"
        ]

    def last_commit(self):
        line, directory = self.commits[-1]
        fields = dict(pair.split("=") for pair in line.split()[2:])
        return fields, directory

    def final_state_bytes(self):
        return (self.last_commit()[1] / "state.json").read_bytes()

    def final_state(self):
        return json.loads(self.final_state_bytes())


def resume_environment(attempt, workdir, number, epochs):
    """A later attempt: FLOTILLA_RESUME_FROM = a local copy of the latest checkpoint."""
    fields, directory = attempt.last_commit()
    copy = workdir / f"resume-{number}"
    shutil.copytree(directory, copy)
    return {
        "FLOTILLA_ATTEMPT": str(number),
        "FLOTILLA_RESUME_FROM": str(copy),
        "FLOTILLA_RESUME_STEP": fields["step"],
        "FLOTILLA_RESUME_EPOCH": fields["epoch"],
        "FLOTILLA_EPOCHS": str(epochs),
        "FLOTILLA_PARAMS": PARAMS,
    }


PARAMS = '{"lr": 0.3, "l2": 0.0001}'


class ResumableExampleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = Path(tempfile.mkdtemp(prefix="flotilla-resumable-"))
        cls.reference = Attempt(
            cls.root / "reference",
            {"FLOTILLA_EPOCHS": str(EPOCHS), "FLOTILLA_PARAMS": PARAMS, "FLOTILLA_ATTEMPT": "0"},
        )

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def workdir(self, name):
        return self.root / self._testMethodName / name

    def test_uninterrupted_run(self):
        run = self.reference
        self.assertEqual(run.returncode, 0, run.stderr)
        metrics = run.metric_lines()
        self.assertEqual(len(metrics), EPOCHS)
        for epoch, line in enumerate(metrics, start=1):
            self.assertTrue(line.startswith(f"@flotilla step={epoch} epoch={epoch} loss="), line)
        self.assertEqual(
            [line for line, _ in run.commits],
            [
                f"@flotilla checkpoint step={epoch * BATCHES_PER_EPOCH} epoch={epoch}"
                for epoch in range(1, EPOCHS + 1)
            ],
        )
        state = run.final_state()
        self.assertEqual((state["epoch"], state["batch"]), (EPOCHS, 0))
        # Every commit left the checkpoint directory empty for the next one.
        self.assertEqual(list(run.checkpoint.iterdir()), [])

    def test_sigterm_mid_epoch_then_resume_is_bit_identical(self):
        def stop_during_epoch_three(process, line):
            if line.startswith("@flotilla step=2 "):
                # Epoch 3 takes 1.5 s (FLOTILLA_EXAMPLE_EPOCH_SECONDS); stop it a third in.
                threading.Timer(0.5, process.send_signal, [signal.SIGTERM]).start()

        first = Attempt(
            self.workdir("attempt-0"),
            {
                "FLOTILLA_EPOCHS": str(EPOCHS),
                "FLOTILLA_PARAMS": PARAMS,
                "FLOTILLA_ATTEMPT": "0",
                "FLOTILLA_EXAMPLE_EPOCH_SECONDS": "1.5",
            },
            on_line=stop_during_epoch_three,
        )
        self.assertEqual(first.returncode, 0, first.stderr)
        fields, _ = first.last_commit()
        state = first.final_state()
        self.assertEqual(state["epoch"], 2)
        self.assertTrue(0 < state["batch"] < BATCHES_PER_EPOCH, state["batch"])
        self.assertEqual(int(fields["step"]), 2 * BATCHES_PER_EPOCH + state["batch"])
        self.assertEqual(fields["epoch"], "2")
        self.assertIn(f"stopped at epoch 2, batch {state['batch']}", first.lines)
        self.assertEqual(first.metric_lines(), self.reference.metric_lines()[:2])

        second = Attempt(
            self.workdir("attempt-1"),
            resume_environment(first, self.workdir(""), 1, EPOCHS),
        )
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertIn("resumed from epoch 2", second.lines)
        self.assertIn(f"  at batch {state['batch']} of {BATCHES_PER_EPOCH}", second.lines)
        self.assertEqual(second.metric_lines(), self.reference.metric_lines()[2:])
        self.assertEqual(second.commits[-1][0], self.reference.commits[-1][0])
        self.assertEqual(second.final_state_bytes(), self.reference.final_state_bytes())

    def test_pause_at_rungs_then_resume_is_bit_identical(self):
        # ASHA's promotion form: train to a rung, commit, exit 0; later attempts go on.
        rung = Attempt(
            self.workdir("attempt-0"),
            {"FLOTILLA_EPOCHS": "2", "FLOTILLA_PARAMS": PARAMS, "FLOTILLA_ATTEMPT": "0"},
        )
        self.assertEqual(rung.returncode, 0, rung.stderr)
        self.assertEqual(
            rung.commits[-1][0], f"@flotilla checkpoint step={2 * BATCHES_PER_EPOCH} epoch=2"
        )
        attempts = [rung]
        for number, epochs in [(1, 4), (2, EPOCHS)]:
            attempt = Attempt(
                self.workdir(f"attempt-{number}"),
                resume_environment(attempts[-1], self.workdir(""), number, epochs),
            )
            self.assertEqual(attempt.returncode, 0, attempt.stderr)
            self.assertIn(f"resumed from epoch {epochs - 2}", attempt.lines)
            self.assertEqual(attempt.final_state()["epoch"], epochs)
            attempts.append(attempt)
        metrics = [line for attempt in attempts for line in attempt.metric_lines()]
        self.assertEqual(metrics, self.reference.metric_lines())
        self.assertEqual(attempts[-1].final_state_bytes(), self.reference.final_state_bytes())

    def test_resumed_at_its_target_commits_and_exits(self):
        rung = Attempt(
            self.workdir("attempt-0"),
            {"FLOTILLA_EPOCHS": "2", "FLOTILLA_PARAMS": PARAMS},
        )
        again = Attempt(
            self.workdir("attempt-1"),
            resume_environment(rung, self.workdir(""), 1, 2),
        )
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(again.metric_lines(), [])
        self.assertEqual(len(again.commits), 1)
        self.assertEqual(again.final_state_bytes(), rung.final_state_bytes())

    def test_refuses_a_checkpoint_of_other_parameters(self):
        rung = Attempt(
            self.workdir("attempt-0"),
            {"FLOTILLA_EPOCHS": "1", "FLOTILLA_PARAMS": PARAMS},
        )
        env = resume_environment(rung, self.workdir(""), 1, 2)
        env["FLOTILLA_PARAMS"] = '{"lr": 0.5}'
        other = Attempt(self.workdir("attempt-1"), env)
        self.assertNotEqual(other.returncode, 0)
        self.assertIn("was written with lr=0.3", other.stderr)

    def test_runs_standalone(self):
        scratch = self.workdir("tmp")
        scratch.mkdir(parents=True)
        result = subprocess.run(
            [sys.executable, str(SCRIPT)],
            env=clean_environment(FLOTILLA_EPOCHS="2", TMPDIR=str(scratch)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("@flotilla checkpoint step=100 epoch=2", result.stdout.splitlines())
        # Without an agent the checkpoint stays in a temporary directory.
        (fallback,) = scratch.iterdir()
        self.assertEqual(json.loads((fallback / "state.json").read_text())["epoch"], 2)


if __name__ == "__main__":
    unittest.main()
