"""The SageMaker hosting contract, run for real: `container/serve` (the program SageMaker starts) on 127.0.0.1 with
a temporary /opt/ml/model unpacked from a `model.tar.gz` built by the publish code, the tiny model, a LoRA in the
archive and one under an S3 prefix (SeaweedFS). /ping before and after loading, /invocations JSON and PNG,
bad input as A1111-style 4xx, a malformed model folder that keeps the process up, and SIGTERM draining."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from generate_fixtures import write_kohya_lora
from PIL import Image

from lorapipe.hosting_contract import (
    MANIFEST_NAME,
    build_model_archive,
    unpack_model_archive,
)

PROGRAM = Path(__file__).resolve().parents[1] / "container" / "serve"
SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 3}
LOAD_TIMEOUT_S = 240
CLEAN_EXIT = (0, -signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Serving:
    """`serve` in a subprocess, its output collected on a thread."""

    def __init__(self, opt_ml: Path, cache: Path, env: dict[str, str], *extra: str):
        self.port = _free_port()
        self.cache = cache
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            str(PROGRAM),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--dtype",
            "fp32",
            "--cache-dir",
            str(cache),
            *extra,
            "serve",
        ]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                **env,
                "LORAPIPE_OPT_ML": str(opt_ml),
                "PYTHONUNBUFFERED": "1",
            },
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def first_ping(self) -> httpx.Response:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                return httpx.get(f"{self.url}/ping", timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("the server never listened: " + self.output())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            if httpx.get(f"{self.url}/ping", timeout=5).status_code == 200:
                return
            time.sleep(0.2)
        raise AssertionError("never ready: " + self.output())

    def stop(self) -> int:
        """SIGTERM, then the exit status. uvicorn re-raises the SIGTERM it handled once it has shut down cleanly,
        so a drained server ends "killed by SIGTERM" (-15) by its own hand; a hang ends in our SIGKILL (-9)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._reader.join(5)


@pytest.fixture(scope="module")
def lora_files(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hosting-loras")
    return {
        "toy": write_kohya_lora(folder / "toy.safetensors", tiny_model_dir, seed=1),
        "style": write_kohya_lora(folder / "style.safetensors", tiny_model_dir, seed=2, text_encoders=False),
    }


@pytest.fixture(scope="module")
def lora_prefix(seaweed_s3, lora_files) -> str:
    """`style` published under an S3 prefix (with the store's .sha256 sidecar), not in the archive."""
    from lorapipe.store import open_store

    seaweed_s3.client().create_bucket(Bucket="hosting-loras")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in seaweed_s3.env().items():
            patch.setenv(key, value)
        open_store("s3://hosting-loras/published").upload_file(lora_files["style"], "style.safetensors")
    return "s3://hosting-loras/published/"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, lora_files, lora_prefix, seaweed_s3):
    root = tmp_path_factory.mktemp("hosting")
    archive = root / "model.tar.gz"
    build_model_archive(
        archive,
        str(tiny_model_dir),
        {"toy": lora_files["toy"]},
        lora_prefix=lora_prefix,
    )
    unpack_model_archive(archive, root / "opt-ml" / "model")  # what SageMaker does with ModelDataUrl
    serving = Serving(root / "opt-ml", root / "cache", seaweed_s3.env(), "--max-body-mb", "1")
    try:
        serving.before_load = serving.first_ping()
        serving.wait_ready()
        yield serving
    finally:
        serving.stop()


def _image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_ping_is_503_while_loading_then_200(server):
    assert server.before_load.status_code == 503
    assert server.before_load.json()["error"] == "ModelLoading"
    assert httpx.get(f"{server.url}/ping").status_code == 200


def test_invocations_answer_a1111_json_with_the_archived_lora(server):
    body = {"prompt": "a toy <lora:toy:0.8>", "batch_size": 2, **SMALL}
    response = httpx.post(f"{server.url}/invocations", json=body, timeout=120)
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {"images", "parameters", "info"} and len(data["images"]) == 2
    info = json.loads(data["info"])
    assert info["all_seeds"] == [3, 4]
    assert info["extra_generation_params"]["Lora hashes"].startswith("toy: ")
    assert _image(base64.b64decode(data["images"][0])).info["parameters"] == info["infotexts"][0]


def test_invocations_png_matches_the_txt2img_route_image(server):
    body = {"prompt": "a toy <lora:toy:1>", **SMALL}
    png = httpx.post(
        f"{server.url}/invocations",
        json=body,
        headers={"Accept": "image/png"},
        timeout=120,
    )
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    again = httpx.post(f"{server.url}/invocations", json=body, timeout=120).json()
    assert png.content == base64.b64decode(again["images"][0]), "same seed, same bytes through both answers"
    batch = httpx.post(
        f"{server.url}/invocations",
        json={**body, "batch_size": 2},
        headers={"Accept": "image/png"},
    )
    assert batch.status_code == 406 and "application/json" in batch.json()["detail"]


def test_img2img_through_invocations(server):
    init = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init, format="PNG")
    body = {
        "prompt": "red",
        "init_images": [base64.b64encode(init.getvalue()).decode()],
        "denoising_strength": 0.5,
        **SMALL,
    }
    response = httpx.post(f"{server.url}/invocations", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["denoising_strength"] == 0.5
    assert response.json()["parameters"]["init_images"] is None  # A1111 drops them unless include_init_images


def test_lora_from_the_s3_prefix_is_fetched_verified_and_cached(server, lora_files):
    response = httpx.post(
        f"{server.url}/invocations",
        json={"prompt": "x <lora:style:1>", **SMALL},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert "style: " in json.loads(response.json()["info"])["extra_generation_params"]["Lora hashes"]
    copies = list(server.cache.rglob("style.safetensors"))
    assert len(copies) == 1 and copies[0].read_bytes() == lora_files["style"].read_bytes()


def test_bad_input_is_a1111_style_4xx_and_the_server_keeps_serving(server):
    def check(response, status, *words):
        assert response.status_code == status, response.text
        data = response.json()
        assert set(data) == {"error", "detail", "body", "errors"}
        for word in words:
            assert word in data["detail"], data

    url = f"{server.url}/invocations"
    check(
        httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "not valid JSON",
    )
    check(httpx.post(url, json=["a", "list"]), 400, "not an object")
    check(httpx.post(url, json={"steps": "many"}), 422, "steps")
    check(
        httpx.post(url, json={"prompt": "<lora:nope:1>", **SMALL}),
        404,
        "<lora:nope>",
        "toy",
    )
    check(httpx.post(url, json={"prompt": "<lora:../etc/passwd:1>", **SMALL}), 404, "path")
    check(httpx.post(url, json={**SMALL, "steps": 10_000}), 422, "steps")
    check(
        httpx.post(
            url,
            content=b"x" * (2 * 1024 * 1024),
            headers={"content-type": "application/json"},
        ),
        413,
        "over",
    )
    check(
        httpx.get(f"{server.url}/sdapi/v1/options"),
        404,
        "not a SageMaker hosting route",
    )
    assert httpx.post(url, json={"prompt": "still fine", **SMALL}, timeout=120).status_code == 200


def test_sigterm_drains_queued_and_running_requests(server):
    """Last in this module: SIGTERM with one request running and one queued answers both, then exits 0."""
    body = {"prompt": "slow", "steps": 30, "width": 128, "height": 128}
    results: list[httpx.Response] = []

    def call(seed: int) -> None:
        results.append(httpx.post(f"{server.url}/invocations", json={**body, "seed": seed}, timeout=300))

    callers = [threading.Thread(target=call, args=(seed,)) for seed in (1, 2)]
    for caller in callers:
        caller.start()
        time.sleep(0.3)
    time.sleep(0.5)
    code = server.stop()
    for caller in callers:
        caller.join(300)
    assert code in CLEAN_EXIT, server.output()[-3000:]
    assert "Application shutdown complete" in server.output()
    assert [r.status_code for r in results] == [200, 200], [r.text[:300] for r in results]
    assert all(len(r.json()["images"]) == 1 for r in results)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/ping", timeout=2)


def test_malformed_model_folder_fails_ping_with_a_log_line_and_no_crash(tmp_path, tiny_model_dir):
    model_dir = tmp_path / "opt-ml" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / MANIFEST_NAME).write_text(
        json.dumps(
            {
                "format": "lorapipe-model/1",
                "base_model": str(tiny_model_dir),
                "loras": {"gone": {"file": "loras/gone.safetensors", "sha256": "0" * 64}},
            }
        )
    )
    serving = Serving(tmp_path / "opt-ml", tmp_path / "cache", {})
    try:
        serving.first_ping()
        deadline = time.monotonic() + 60
        while "model not loaded" not in serving.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        ping = httpx.get(f"{serving.url}/ping")
        assert ping.status_code == 503 and ping.json()["error"] == "ModelNotLoaded"
        assert "loras.gone" in ping.json()["detail"] and "missing" in ping.json()["detail"]
        log_line = next(line for line in serving.lines if "model not loaded" in line)
        assert "loras/gone.safetensors" in log_line and "Traceback" not in serving.output()
        invocation = httpx.post(f"{serving.url}/invocations", json={"prompt": "x", **SMALL})
        assert invocation.status_code == 503 and "loras.gone" in invocation.json()["detail"]
        time.sleep(1)
        assert serving.process.poll() is None, "a bad model folder must not end the process (no crash loop)"
    finally:
        assert serving.stop() in CLEAN_EXIT


def test_no_manifest_and_no_environment_names_both(tmp_path):
    serving = Serving(tmp_path / "opt-ml", tmp_path / "cache", {"LORAPIPE_BASE_MODEL": ""})
    try:
        serving.first_ping()
        deadline = time.monotonic() + 60
        while httpx.get(f"{serving.url}/ping").json().get("error") == "ModelLoading" and time.monotonic() < deadline:
            time.sleep(0.1)
        detail = httpx.get(f"{serving.url}/ping").json()["detail"]
        assert MANIFEST_NAME in detail and "LORAPIPE_BASE_MODEL" in detail
    finally:
        assert serving.stop() in CLEAN_EXIT
