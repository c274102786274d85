"""SIGTERM stops a real `lorapipe serve` promptly: the running job ends at its next step with a clear 503."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _call(url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@pytest.mark.slow
def test_sigterm_cancels_the_running_job_and_exits_within_seconds(tiny_model_dir, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    (tmp_path / "loras").mkdir()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lorapipe.cli.main",
            "serve",
            "--base-model",
            str(tiny_model_dir),
            "--lora-dir",
            str(tmp_path / "loras"),
            "--port",
            str(port),
            "--max-steps",
            "100000",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if _call(f"{url}/internal/ping", timeout=1)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
        answer: dict = {}
        # Minutes of work at 64x64 on the tiny model: only a prompt stop can end it in seconds.
        client = threading.Thread(
            target=lambda: answer.update(
                zip(
                    ("status", "body"),
                    _call(
                        f"{url}/sdapi/v1/txt2img",
                        {"prompt": "long", "steps": 20000, "width": 64, "height": 64},
                        timeout=120,
                    ),
                )
            )
        )
        client.start()
        while _call(f"{url}/sdapi/v1/progress")[1]["state"]["sampling_step"] < 2:
            assert time.monotonic() < deadline and client.is_alive()
            time.sleep(0.2)
        stopped_at = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
        took = time.monotonic() - stopped_at
        client.join(timeout=10)
        assert took < 15, f"took {took:.1f} s to exit"
        assert server.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        assert answer["status"] == 503 and "server shutting down" in answer["body"]["detail"], answer
        log = server.stdout.read()
        assert "Traceback" not in log, log
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
