"""Helpers for Flotilla command trials (standard library only).

A Flotilla agent runs a command trial as a process of its own and talks to it through
environment variables, lines on stdout and signals. This module wraps that contract; the
full statement is docs/trials.md in the Flotilla repository.

Environment (read by the functions below):

- ``FLOTILLA_PARAMS``: a JSON object of the trial's parameters (also one
  ``FLOTILLA_PARAM_<NAME>`` per parameter) -> :func:`params`, :func:`param`.
- ``FLOTILLA_SWEEP_ID``, ``FLOTILLA_TRIAL_ID``, ``FLOTILLA_ATTEMPT`` (0 first)
  -> :func:`sweep_id`, :func:`trial_id`, :func:`attempt`.
- ``FLOTILLA_GPUS`` / ``CUDA_VISIBLE_DEVICES``: the indices (nvidia-smi order) of the GPUs
  assigned to this trial -> :func:`gpus`.
- ``FLOTILLA_CHECKPOINT_DIR``: an empty directory for this attempt -> :func:`checkpoint_dir`.
- ``FLOTILLA_RESUME_FROM``, ``FLOTILLA_RESUME_STEP``, ``FLOTILLA_RESUME_EPOCH``: on a later
  attempt, a copy of the trial's latest committed checkpoint and its step and epoch
  -> :func:`resume_dir`, :func:`resume_step`, :func:`resume_epoch`.
- ``FLOTILLA_EPOCHS``: when set, the total number of epochs this attempt must reach (then
  commit a checkpoint and exit 0) -> :func:`epochs`.

Lines on stdout:

- ``@flotilla step=N name=value ...``: a metric line -> :func:`report`.
- ``@flotilla checkpoint [step=N] [epoch=E]``: commits the checkpoint directory as it stands.
  The agent renames the directory away (the same path is at once a new empty directory) and
  uploads it as one immutable checkpoint -> :func:`commit`, which prints the line and waits
  until the agent has taken the directory. Write each checkpoint as new files; never modify
  committed ones.

Signals: before any stop the agent sends SIGTERM to the trial's process group, waits its grace
period (``flotilla agent --stop-grace``, default 10 s) and then sends SIGKILL. A program should
commit a final checkpoint and exit promptly -> :func:`on_sigterm`, :func:`stop_requested`.

Exit 0 means succeeded (the last value of each metric is the result); any other exit, or death
by a signal the agent did not send, means failed, and the last lines of stderr become the
failure message.

Outside an agent every function still works, so a trial script runs standalone: no
parameters, attempt 0, no GPUs, no resume, and a temporary checkpoint directory.
"""

import json
import math
import numbers
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

__version__ = "0.1.0"

__all__ = [
    "attempt",
    "checkpoint_dir",
    "commit",
    "epochs",
    "gpus",
    "on_sigterm",
    "param",
    "params",
    "report",
    "resume_dir",
    "resume_epoch",
    "resume_step",
    "stop_requested",
    "sweep_id",
    "trial_id",
]

PREFIX = "@flotilla"
"""The prefix of every line the agent reads from stdout."""

_METRIC_NAME = re.compile(r"[A-Za-z0-9_./]+\Z")
_DIGITS = re.compile(r"[0-9]+\Z")
_write_lock = threading.Lock()
_fallback_checkpoint_dir: Optional[Path] = None
_stop_requested = False


# --- parameters and identity -------------------------------------------------------------


def params() -> Dict[str, Any]:
    """The trial's parameters, from ``FLOTILLA_PARAMS`` (``{}`` when it is not set).

    Ints, floats, strings and booleans arrive as JSON values; a non-finite float is ``None``.
    Raises ValueError when the variable is not a JSON object.
    """
    raw = os.environ.get("FLOTILLA_PARAMS", "")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"FLOTILLA_PARAMS is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError("FLOTILLA_PARAMS is not a JSON object")
    return value


def param(name: str, default: Any = None) -> Any:
    """One parameter of the trial, or ``default`` when the trial has no such parameter."""
    return params().get(name, default)


def sweep_id() -> Optional[str]:
    """``FLOTILLA_SWEEP_ID`` (for example ``s3``), or None outside an agent."""
    return os.environ.get("FLOTILLA_SWEEP_ID") or None


def trial_id() -> Optional[str]:
    """``FLOTILLA_TRIAL_ID`` (for example ``s3-t14``), or None outside an agent."""
    return os.environ.get("FLOTILLA_TRIAL_ID") or None


def attempt() -> int:
    """This attempt's number, ``FLOTILLA_ATTEMPT``: 0 for the first, 0 outside an agent."""
    return _env_whole("FLOTILLA_ATTEMPT", 0)


def epochs(default: int) -> int:
    """``FLOTILLA_EPOCHS`` when it is set, else ``default``.

    When set it is the total number of epochs this attempt must reach, counting the epochs
    done before a resume; the program then commits a checkpoint and exits 0. ASHA's
    promotion form sets it to the rung the attempt trains to.
    """
    return _env_whole("FLOTILLA_EPOCHS", default)


def gpus() -> List[int]:
    """The indices of the GPUs assigned to this trial, from ``FLOTILLA_GPUS``.

    The indices are in nvidia-smi (PCI bus) order. Inside the process, CUDA libraries number
    the visible devices from 0, so with ``gpus() == [2, 5]`` PyTorch sees ``cuda:0`` and
    ``cuda:1``. Empty when the trial has no GPUs or runs outside an agent.
    """
    raw = os.environ.get("FLOTILLA_GPUS", "").strip()
    if not raw:
        return []
    indices = []
    for part in raw.split(","):
        part = part.strip()
        if not _DIGITS.match(part):
            raise ValueError(f"FLOTILLA_GPUS={raw!r}: {part!r} is not a GPU index")
        indices.append(int(part))
    return indices


# --- metric lines ------------------------------------------------------------------------


def report(step: Optional[int] = None, **metrics: Any) -> str:
    """Prints one metric line, ``@flotilla step=N name=value ...``, and flushes stdout.

    ``step`` (a whole number >= 0) is optional; without it the agent takes one more than the
    previous line's. Names use ``A-Z a-z 0-9 _ . /`` (pass ``**{"val/loss": x}`` for names
    that are not Python identifiers); values must be finite numbers. Put all metrics of one
    step in one call. Raises ValueError naming the bad step, name or value; nothing is
    printed then. Returns the line.
    """
    if not metrics:
        raise ValueError("report() needs at least one metric")
    parts = [PREFIX]
    if step is not None:
        parts.append(f"step={_whole(step, 'step')}")
    for name, value in metrics.items():
        if not isinstance(name, str) or not _METRIC_NAME.match(name):
            raise ValueError(
                f"metric name {name!r}: use letters, digits, '_', '.' and '/' only"
            )
        parts.append(f"{name}={_number(name, value)}")
    line = " ".join(parts)
    _emit(line)
    return line


# --- checkpoints -------------------------------------------------------------------------


def checkpoint_dir() -> Path:
    """The directory to write this attempt's next checkpoint into.

    Under an agent this is ``FLOTILLA_CHECKPOINT_DIR``; after each :func:`commit` the same
    path is a new, empty directory. Outside an agent it is a temporary directory made on the
    first call (the same one afterwards), so scripts run standalone.
    """
    global _fallback_checkpoint_dir
    raw = os.environ.get("FLOTILLA_CHECKPOINT_DIR")
    if raw:
        return Path(raw)
    if _fallback_checkpoint_dir is None or not _fallback_checkpoint_dir.is_dir():
        _fallback_checkpoint_dir = Path(tempfile.mkdtemp(prefix="flotilla-checkpoint-"))
    return _fallback_checkpoint_dir


def commit(
    step: Optional[int] = None,
    epoch: Optional[int] = None,
    timeout: Optional[float] = 60.0,
) -> bool:
    """Commits the files in :func:`checkpoint_dir` as one checkpoint.

    Write (and close) every file first. This prints ``@flotilla checkpoint`` (with
    ``step=N`` and ``epoch=E`` when given; without them the agent uses the step of the last
    metric line and the last reported ``epoch`` metric), flushes stdout, and waits until the
    agent has taken the directory: it renames it away and makes a new, empty one at the same
    path, which is seen here as the directory's inode changing. Then it returns True, and the
    next checkpoint goes into the new directory as new files.

    An empty directory is refused: a warning goes to stderr, nothing is printed, and it
    returns False. Outside an agent (no ``FLOTILLA_CHECKPOINT_DIR``) it prints the line and
    returns True at once; the files stay where they are. Raises TimeoutError when the agent
    has not taken the directory within ``timeout`` seconds (None waits for ever), and
    ValueError for a step or epoch that is not a whole number >= 0.

    Give each checkpoint of an attempt a larger step than the one before: the trial's latest
    checkpoint moves only forward.
    """
    parts = [PREFIX, "checkpoint"]
    if step is not None:
        parts.append(f"step={_whole(step, 'step')}")
    if epoch is not None:
        parts.append(f"epoch={_whole(epoch, 'epoch')}")
    line = " ".join(parts)
    directory = checkpoint_dir()
    with os.scandir(directory) as entries:
        empty = next(entries, None) is None
    if empty:
        _warn(f"checkpoint directory {directory} is empty; nothing committed")
        return False
    if not os.environ.get("FLOTILLA_CHECKPOINT_DIR"):
        _emit(line)
        return True
    # Identify the directory before the line goes out: the agent may take it at once.
    before = os.stat(directory)
    identity = (before.st_dev, before.st_ino)
    _emit(line)
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.002
    while True:
        try:
            now = os.stat(directory)
        except FileNotFoundError:
            now = None  # renamed away; the new directory is on its way
        if now is not None and (now.st_dev, now.st_ino) != identity:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                f"the agent did not take the checkpoint directory {directory} within "
                f"{timeout} s of '{line}'"
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def resume_dir() -> Optional[Path]:
    """``FLOTILLA_RESUME_FROM``: a local directory holding a copy of the files of the trial's
    latest committed checkpoint, on an attempt that resumes; None on a fresh start."""
    raw = os.environ.get("FLOTILLA_RESUME_FROM")
    return Path(raw) if raw else None


def resume_step() -> Optional[int]:
    """``FLOTILLA_RESUME_STEP``: the step recorded with the checkpoint resumed from, or None."""
    return _env_whole("FLOTILLA_RESUME_STEP", None)


def resume_epoch() -> Optional[int]:
    """``FLOTILLA_RESUME_EPOCH``: the epoch recorded with the checkpoint resumed from, or None."""
    return _env_whole("FLOTILLA_RESUME_EPOCH", None)


# --- stop signals ------------------------------------------------------------------------


def on_sigterm(callback: Optional[Callable[[], None]] = None) -> None:
    """Installs a SIGTERM handler that makes :func:`stop_requested` true, then calls
    ``callback()`` if given.

    The agent sends SIGTERM before every stop and SIGKILL after its grace period (10 s by
    default), so on the flag a program should finish its current step, commit a checkpoint
    and exit. The callback runs in the main thread between two Python instructions,
    interrupting whatever ran there: keep it short, and commit from the training loop
    rather than from the callback. Call this from the main thread (Python's rule for signal
    handlers).
    """

    def handler(signum: int, frame: Any) -> None:
        global _stop_requested
        _stop_requested = True
        if callback is not None:
            callback()

    signal.signal(signal.SIGTERM, handler)


def stop_requested() -> bool:
    """Whether a SIGTERM arrived since :func:`on_sigterm` installed its handler."""
    return _stop_requested


# --- internals ---------------------------------------------------------------------------


def _emit(line: str) -> None:
    with _write_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _warn(message: str) -> None:
    sys.stderr.write(f"flotilla_trial: warning: {message}\n")
    sys.stderr.flush()


def _whole(value: Any, what: str) -> int:
    """A whole number >= 0 (an int, or a float with no fraction)."""
    if isinstance(value, bool):
        raise ValueError(f"{what}={value!r} is not a whole number")
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        number = int(value)
    else:
        raise ValueError(f"{what}={value!r} is not a whole number")
    if number < 0:
        raise ValueError(f"{what}={value!r} is negative")
    return number


def _number(name: str, value: Any) -> str:
    """The metric value as text the agent parses back to the same float."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"metric {name}={value!r} is not a number")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    try:
        number = float(value)
    except Exception:  # whatever float() refuses (a tensor of many values, ...)
        raise ValueError(f"metric {name}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"metric {name}={value!r} is not finite")
    return repr(number)


def _env_whole(variable: str, default: Any) -> Any:
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    if not _DIGITS.match(raw):
        raise ValueError(f"{variable}={raw!r} is not a whole number")
    return int(raw)
