"""Helpers for Flotilla serving programs (standard library only).

A sweep whose trials are commands says in its ``[serving]`` table how its models are
served: an agent assigned a registered version unpacks the version's checkpoint into a
folder and runs the serving program. This module wraps that contract; the full statement
is docs/trials.md ("Serving programs") in the Flotilla repository.

Environment (read by the functions below):

- ``FLOTILLA_MODEL_DIR``: the unpacked checkpoint (what the trial committed)
  -> :func:`model_dir`.
- ``FLOTILLA_SERVE_PORT``: the loopback port to listen on -> :func:`port`.
- ``FLOTILLA_MODEL_NAME``, ``FLOTILLA_MODEL_VERSION``: which version this is.
- ``FLOTILLA_GPUS`` / ``CUDA_VISIBLE_DEVICES``: the GPUs this replica holds alone (the
  table's ``gpus``), in nvidia-smi order -> :func:`gpus`. On an agent with GPUs, a replica
  that asked for none sees none.

HTTP, on ``127.0.0.1:FLOTILLA_SERVE_PORT``:

- ``GET /healthz`` (or the table's ``health`` path) answers 200 once the model is loaded;
  the version gets no traffic before.
- ``POST /v1/models/<name>:predict`` with a KServe v1 body ``{"instances": [...]}`` (other
  fields the client sent, such as ``model`` and ``key``, are passed through) answers
  ``{"predictions": [...]}``, one per instance. Predictions that are integers, strings or
  ``{"class": ...}`` are class labels (canaries compare accuracy against feedback); numbers
  with a fraction are values (canaries compare squared error).
- Answer 422 for inputs the model cannot take, 400 for a body that is not a request.

Signals: the agent stops the program with SIGTERM to its process group (SIGKILL 5 s later)
when the version leaves service or the agent stops; :func:`serve` returns on SIGTERM.

Example::

    import json, flotilla_serve

    weights = json.loads((flotilla_serve.model_dir() / "model.json").read_text())

    def predict(instances):
        return [int(sum(w * x for w, x in zip(weights, row)) > 0) for row in instances]

    flotilla_serve.serve(predict)
"""

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, List, Optional

__version__ = "0.1.0"

__all__ = ["BadInput", "gpus", "model_dir", "port", "serve"]

MAX_BODY = 32 * 1024 * 1024
"""The largest request body read (the agent's own limit)."""


class BadInput(ValueError):
    """Raise from ``predict`` for instances the model cannot take: answered 422."""


def model_dir() -> Path:
    """The unpacked checkpoint (``FLOTILLA_MODEL_DIR``); the working directory outside an
    agent."""
    return Path(os.environ.get("FLOTILLA_MODEL_DIR", "."))


def port() -> int:
    """The loopback port to listen on (``FLOTILLA_SERVE_PORT``; 8080 outside an agent)."""
    return int(os.environ.get("FLOTILLA_SERVE_PORT", "8080"))


def gpus() -> List[int]:
    """The indices of the GPUs this replica holds (``FLOTILLA_GPUS``), in nvidia-smi order.

    CUDA libraries inside the process number the visible devices from 0 (``cuda:0``, ...).
    Empty when the replica holds no GPU or runs outside an agent.
    """
    raw = os.environ.get("FLOTILLA_GPUS", "").strip()
    if not raw:
        return []
    indices = []
    for part in raw.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()):
            raise ValueError(f"FLOTILLA_GPUS={raw!r}: {part!r} is not a GPU index")
        indices.append(int(part))
    return indices


def serve(
    predict: Callable[[List[Any]], List[Any]],
    health: str = "/healthz",
    ready: Optional[Callable[[], bool]] = None,
) -> None:
    """Answers predictions with ``predict(instances) -> predictions`` until SIGTERM.

    ``health`` is the path that answers 200 (once ``ready()`` is true, when given).
    ``predict`` may raise :class:`BadInput` (422) for inputs the model cannot take; any
    other exception answers 500 with its message. Requests are handled on threads.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # One write per answer, sent at once: unbuffered, the status line and headers go out
        # before the body, and Nagle's algorithm holds the body back until the client's
        # delayed ACK (about 40 ms per request on a kept-alive connection).
        wbufsize = -1
        disable_nagle_algorithm = True

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - the base class's name
            if self.path.split("?", 1)[0] == health:
                if ready is None or ready():
                    self._answer(200, {"status": "ok"})
                else:
                    self._answer(503, {"status": "loading"})
            else:
                self._answer(404, {"error": f"no such path: GET {self.path}"})

        def do_POST(self):  # noqa: N802 - the base class's name
            path = self.path.split("?", 1)[0]
            if not (path.endswith(":predict") or path.endswith("/predict")):
                self._answer(404, {"error": f"no such path: POST {self.path}"})
                return
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                self._answer(413, {"error": f"a body of {length} bytes; at most {MAX_BODY}"})
                return
            try:
                request = json.loads(self.rfile.read(length) or b"null")
                instances = request["instances"]
                if not isinstance(instances, list):
                    raise TypeError("instances is not a list")
            except (ValueError, KeyError, TypeError) as problem:
                self._answer(
                    400,
                    {"error": f'the body is not a prediction request ({{"instances": [...]}}): {problem}'},
                )
                return
            try:
                predictions = list(predict(instances))
            except BadInput as problem:
                self._answer(422, {"error": str(problem)})
                return
            except Exception as problem:  # the program's own failure: a 500 naming it
                self._answer(500, {"error": f"{type(problem).__name__}: {problem}"})
                return
            self._answer(200, {"predictions": predictions})

    server = ThreadingHTTPServer(("127.0.0.1", port()), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"serving on 127.0.0.1:{port()}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
