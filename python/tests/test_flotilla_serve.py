"""The serving helper and the softmax example's serving program, run as an agent runs them:
a subprocess with FLOTILLA_MODEL_DIR and FLOTILLA_SERVE_PORT, asked over HTTP on loopback,
stopped with SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / "examples" / "serving" / "softmax_serve.py"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(port, path, body):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class ServingProgramTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        model = {
            "format": 1,
            "mean": [0.0] * 4,
            "std": [1.0] * 4,
            "weights": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]],
            "bias": [0, 0, 0],
        }
        Path(self.dir.name, "model.json").write_text(json.dumps(model))
        self.port = free_port()
        env = dict(os.environ, FLOTILLA_MODEL_DIR=self.dir.name, FLOTILLA_SERVE_PORT=str(self.port))
        env["PYTHONPATH"] = str(ROOT / "python")
        self.process = subprocess.Popen(
            [sys.executable, str(SERVE)], env=env, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as answer:
                    self.assertEqual(answer.status, 200)
                    break
            except OSError:
                self.assertLess(time.monotonic(), deadline, "the program never became healthy")
                time.sleep(0.05)

    def tearDown(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stderr.close()
        self.dir.cleanup()

    def test_predictions_bad_input_and_sigterm(self):
        status, answer = post(
            self.port,
            "/v1/models/demo:predict",
            {"model": "demo", "key": "u1", "instances": [[1, 2, 3, 0], [5, 0, 0, 0]]},
        )
        self.assertEqual((status, answer), (200, {"predictions": [2, 0]}))
        status, answer = post(self.port, "/v1/models/demo:predict", {"instances": [[1, 2]]})
        self.assertEqual(status, 422, answer)
        self.assertIn("4 numbers", answer["error"])
        status, answer = post(self.port, "/v1/models/demo:predict", {"rows": []})
        self.assertEqual(status, 400, answer)
        status, _ = post(self.port, "/elsewhere", {"instances": []})
        self.assertEqual(status, 404)
        self.process.send_signal(signal.SIGTERM)
        self.assertEqual(self.process.wait(timeout=10), 0)


class GpusTest(unittest.TestCase):
    def test_gpus_come_from_flotilla_gpus(self):
        sys.path.insert(0, str(ROOT / "python"))
        import flotilla_serve

        saved = os.environ.pop("FLOTILLA_GPUS", None)
        try:
            self.assertEqual(flotilla_serve.gpus(), [])
            os.environ["FLOTILLA_GPUS"] = "0,3"
            self.assertEqual(flotilla_serve.gpus(), [0, 3])
            os.environ["FLOTILLA_GPUS"] = "0,x"
            with self.assertRaisesRegex(ValueError, "'x'"):
                flotilla_serve.gpus()
        finally:
            os.environ.pop("FLOTILLA_GPUS", None)
            if saved is not None:
                os.environ["FLOTILLA_GPUS"] = saved


if __name__ == "__main__":
    unittest.main()
