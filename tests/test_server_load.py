"""Behaviour under load on a real server: bounded queue (503 + Retry-After), per-job progress and interrupt,
cancellation when the client disconnects, per-request timeout."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from generate_fixtures import RunningServer, load_generator

from lorapipe.server.app import create_app
from lorapipe.server.settings import ServerSettings

LONG = {"prompt": "toy", "steps": 150, "width": 128, "height": 128, "seed": 1}  # ~10 s on the tiny model
SHORT = {"prompt": "toy", "steps": 1, "width": 64, "height": 64, "seed": 1}


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return load_generator(tiny_model_dir, None)


def _post_in_thread(url: str, body: dict, results: dict, key: str, timeout: float = 120) -> threading.Thread:
    def run():
        try:
            results[key] = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            results[key] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _task(url: str, task_id: str) -> dict:
    return httpx.post(f"{url}/internal/progress", json={"id_task": task_id}).json()


def test_full_queue_answers_503_then_interrupt_frees_the_worker(generator):
    with RunningServer(create_app(ServerSettings(queue_size=1), generator=generator)) as server:
        url, results = server.url, {}
        long_thread = _post_in_thread(url, {**LONG, "force_task_id": "long"}, results, "long")
        _wait_until(lambda: _task(url, "long")["active"] and _task(url, "long")["progress"] > 0.02)
        queued_thread = _post_in_thread(url, {**SHORT, "force_task_id": "queued"}, results, "queued")
        _wait_until(lambda: _task(url, "queued")["queued"])

        refused = httpx.post(f"{url}/sdapi/v1/txt2img", json=SHORT, timeout=30)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"] == "HTTPException"

        per_job = httpx.get(f"{url}/sdapi/v1/progress", params={"id_task": "long"}).json()
        assert per_job["state"]["job"] == "long" and 0 < per_job["state"]["sampling_step"] < 150
        assert per_job["state"]["queued"] == 1

        assert httpx.post(f"{url}/sdapi/v1/interrupt", params={"id_task": "long"}).json() == {}
        long_thread.join(60)
        queued_thread.join(60)
        long_response = results["long"]
        assert long_response.status_code == 200
        info = json.loads(long_response.json()["info"])
        assert info["interrupted"] is True and len(long_response.json()["images"]) == 1  # what it had so far
        assert results["queued"].status_code == 200
        assert _task(url, "long")["completed"]


def test_client_disconnect_cancels_the_job(generator):
    with RunningServer(create_app(ServerSettings(), generator=generator)) as server:
        url, results = server.url, {}
        thread = _post_in_thread(url, {**LONG, "force_task_id": "gone"}, results, "gone", timeout=1.5)
        _wait_until(lambda: _task(url, "gone")["active"])
        thread.join(10)
        assert isinstance(results["gone"], httpx.TimeoutException)  # the client gave up and closed
        started = time.monotonic()
        _wait_until(lambda: _task(url, "gone")["completed"], timeout=8)
        assert time.monotonic() - started < 8  # far sooner than the ~10 s the job needed
        follow_up = httpx.post(f"{url}/sdapi/v1/txt2img", json=SHORT, timeout=60)
        assert follow_up.status_code == 200  # the worker is free and alive


def test_request_timeout_answers_504_and_worker_goes_on(generator):
    settings = ServerSettings(request_timeout_s=1.0)
    with RunningServer(create_app(settings, generator=generator)) as server:
        response = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=LONG, timeout=60)
        assert response.status_code == 504 and "timed out" in response.json()["detail"]
        assert httpx.post(f"{server.url}/sdapi/v1/txt2img", json=SHORT, timeout=60).status_code == 200
