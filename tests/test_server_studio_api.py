"""The studio's API on the tiny model: bad uploads refused by name with nothing written, a run started, refused
twice on a busy device, followed, cancelled, resumed from its state, listed by `lorapipe runs`, its checkpoint
published into the generator's LoRA folder; generation answered 503 (or held) while the run trains."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from generate_fixtures import load_generator
from studio_fixtures import files_under, huge_png_header, png_bytes, wait_for, zip_bytes

from lorapipe.server.app import create_app
from lorapipe.server.settings import ServerSettings
from lorapipe.server.studio_settings import StudioSettings

API = "/studio/api"
TINY_PRESET = Path(__file__).resolve().parents[1] / "examples" / "presets" / "tiny-cpu.toml"
TINY_TXT2IMG = {"prompt": "dwjz toy", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("studio-api")
    loras = root / "loras"
    loras.mkdir()
    return {
        "root": root,
        "home": root / "home",
        "loras": loras,
        "outside": root / "outside",
        "generator": load_generator(tiny_model_dir, loras),
        "model": tiny_model_dir,
    }


def _app(world, **studio):
    settings = ServerSettings(
        base_model=str(world["model"]),
        lora_dir=str(world["loras"]),
        studio=StudioSettings(home=str(world["home"]), **studio),
    )
    return create_app(settings, generator=world["generator"])


@pytest.fixture(scope="module")
def client(world):
    from fastapi.testclient import TestClient

    with TestClient(_app(world, max_photo_bytes=200_000, max_photos=8, presets=(str(TINY_PRESET),))) as test_client:
        yield test_client


def _install_prepared(world, client, sample_dataset_dir) -> str:
    """A studio dataset whose prepared folder is the sample dataset (as `dataset prepare` would leave it)."""
    meta = client.post(f"{API}/datasets", json={"trigger": "dwjz", "class_name": "toy"}).json()
    folder = world["home"] / "studio" / "datasets" / meta["id"]
    shutil.copytree(sample_dataset_dir, folder / "dataset")
    meta["prepared"] = {"preset": "sample", "steps": 8}
    (folder / "meta.json").write_text(json.dumps(meta))
    return meta["id"]


def test_bad_uploads_are_refused_by_name_and_write_nothing(world, client):
    dataset = client.post(f"{API}/datasets", json={"trigger": "dwjz", "class_name": "toy"}).json()["id"]
    before = files_under(world["root"])

    def upload(name, data, content_type="application/octet-stream"):
        return client.post(f"{API}/datasets/{dataset}/photos", files=[("files", (name, data, content_type))])

    cases = {
        "notes.png": (b"this is text, not a picture", "not a readable image"),
        "cut.png": (png_bytes()[:-40], "truncated"),
        "huge.png": (huge_png_header(), "decompression bomb"),
        "big.png": (b"\x89PNG" + b"\0" * 300_000, "larger than"),
        "evil.zip": (
            zip_bytes({"ok.png": png_bytes(), "../../outside/escape.png": png_bytes(seed=1)}),
            "outside the archive",
        ),
        "links.zip": (zip_bytes({"ok.png": png_bytes()}, symlinks={"link.png": "/etc/passwd"}), "symbolic link"),
        "broken.zip": (zip_bytes({"ok.png": png_bytes()})[:-30], "not a readable zip"),
    }
    for name, (data, reason) in cases.items():
        answer = upload(name, data)
        assert 400 <= answer.status_code < 500, (name, answer.text)
        detail = answer.json()["detail"]
        assert name in detail and reason in detail, (name, detail)
    # a multipart body cut off before its closing boundary: no file arrived, and the answer names the field
    head = b'--XX\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    cut = client.post(
        f"{API}/datasets/{dataset}/photos",
        content=head + png_bytes()[:-100],
        headers={"content-type": "multipart/form-data; boundary=XX"},
    )
    assert cut.status_code == 422 and cut.json()["detail"][0]["loc"] == ["body", "files"]
    # one bad file spoils the whole request: the good one beside it is not kept either
    mixed = client.post(
        f"{API}/datasets/{dataset}/photos",
        files=[
            ("files", ("good.png", png_bytes(), "image/png")),
            ("files", ("bad.jpg", b"GIF89a not really", "image/jpeg")),
        ],
    )
    assert mixed.status_code == 422 and "bad.jpg" in mixed.json()["detail"]
    assert files_under(world["root"]) == before
    assert not world["outside"].exists()
    assert client.get(f"{API}/datasets/{dataset}").json()["photos"] == []
    assert client.get("/sdapi/v1/samplers").status_code == 200  # still serving

    # A client's file name is a label, never a path; names on disk are the server's.
    stored = client.post(
        f"{API}/datasets/{dataset}/photos",
        files=[
            ("files", ("../../etc/passwd.png", png_bytes(), "image/png")),
            (
                "files",
                ("photos.zip", zip_bytes({"a/one.png": png_bytes(seed=2), "a/one.txt": b"caption"}), "application/zip"),
            ),
        ],
    )
    assert stored.status_code == 201, stored.text
    assert [(p["name"], p["label"]) for p in stored.json()] == [
        ("photo-0001.png", "passwd.png"),
        ("photo-0002.png", "photos.zip:one.png"),
    ]
    too_many = client.post(
        f"{API}/datasets/{dataset}/photos",
        files=[("files", (f"p{i}.png", png_bytes(seed=i), "image/png")) for i in range(7)],
    )
    assert too_many.status_code == 422 and "at most 8 photos" in too_many.json()["detail"]
    assert client.get(f"{API}/datasets/{dataset}/photos/..%2F..%2Fmeta.json").status_code == 404
    assert client.get(f"{API}/datasets/../../etc").status_code == 404


def test_photos_are_prepared_checked_and_captioned(world, client):
    dataset = client.post(f"{API}/datasets", json={"trigger": "sks", "class_name": "toy"}).json()["id"]
    photos = [("files", (f"IMG_{i}.png", png_bytes(96, 80, seed=i), "image/png")) for i in range(3)]
    assert client.post(f"{API}/datasets/{dataset}/photos", files=photos).status_code == 201
    assert client.get(f"{API}/datasets/{dataset}/captions").status_code == 422  # not prepared yet
    unknown = client.post(f"{API}/datasets/{dataset}/prepare", json={"preset": "../../etc/passwd"})
    assert unknown.status_code == 422 and "tiny-cpu" in unknown.json()["detail"]
    assert client.get(f"{API}/presets").json() == ["subject", "face", "style", "tiny-cpu"]
    prepared = client.post(f"{API}/datasets/{dataset}/prepare", json={"preset": "tiny-cpu"})
    assert prepared.status_code == 200, prepared.text
    assert [k["photo"] for k in prepared.json()["prepared"]["kept"]] == [
        "photo-0001.png",
        "photo-0002.png",
        "photo-0003.png",
    ]
    report = client.get(f"{API}/datasets/{dataset}/check").json()
    assert report["ok"] and set(report["photos"]) == {"photo-0001.png", "photo-0002.png", "photo-0003.png"}
    assert all(any("caption" in f["reason"] for f in found) for found in report["photos"].values())
    assert str(world["home"]) not in json.dumps(report)  # the server's folders are not shown to clients

    captions = client.get(f"{API}/datasets/{dataset}/captions").json()
    assert len(captions) == 3 and captions[0]["caption"] is None
    image = captions[0]["image"]
    edited = client.put(f"{API}/datasets/{dataset}/captions/{image}", json={"caption": "sks toy,  on a  table "})
    assert edited.status_code == 200 and edited.json()["caption"] == "sks toy, on a table"
    assert client.put(f"{API}/datasets/{dataset}/captions/{image}", json={"caption": "  "}).status_code == 422
    assert client.put(f"{API}/datasets/{dataset}/captions/../meta.json", json={"caption": "x"}).status_code == 404
    # one more photo makes the prepared folder stale; preparing again keeps the caption written for the same photo
    more = [("files", ("IMG_9.png", png_bytes(96, 80, seed=9), "image/png"))]
    assert client.post(f"{API}/datasets/{dataset}/photos", files=more).status_code == 201
    assert "prepare it first" in client.get(f"{API}/datasets/{dataset}/captions").json()["detail"]
    assert client.post(f"{API}/datasets/{dataset}/prepare", json={"preset": "tiny-cpu", "steps": 12}).status_code == 200
    captions = client.get(f"{API}/datasets/{dataset}/captions").json()
    assert len(captions) == 4 and captions[0]["caption"] == "sks toy, on a table"
    toml = client.post(f"{API}/datasets/{dataset}/config", json={"steps": 8, "rank": 2, "checkpoints": 2}).text
    assert "max_train_steps = 8" in toml and "network_dim = 2" in toml and "save_every_n_steps = 4" in toml
    assert "\n#max_train_epochs" in toml  # epochs would win over steps in sd-scripts: commented out, with why


def test_every_route_asks_for_credentials_and_no_cors(world):
    from fastapi.testclient import TestClient

    settings = ServerSettings(
        base_model=str(world["model"]),
        lora_dir=str(world["loras"]),
        api_auth=(("ann", "secret"),),
        studio=StudioSettings(home=str(world["home"])),
    )
    with TestClient(create_app(settings, generator=world["generator"])) as guarded:
        for path in (f"{API}/runs", f"{API}/datasets", f"{API}/presets", f"{API}/runs/20260101-000000-abcdef"):
            answer = guarded.get(path)
            assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Basic"), path
        assert guarded.get("/studio/").status_code == 200  # the page loads and asks for credentials in its form
        assert guarded.get("/ui/studio.js").status_code == 200
        assert guarded.post(f"{API}/datasets", json={"trigger": "abc"}).status_code == 401
        assert guarded.get(f"{API}/presets", auth=("ann", "secret")).status_code == 200
        preflight = guarded.options(
            f"{API}/runs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_bad_ids_and_configs_are_4xx_naming_what(world, client, sample_dataset_dir):
    assert client.get(f"{API}/runs/not-a-run").status_code == 404
    assert "no such run" in client.get(f"{API}/runs/20200101-000000-abcdef").json()["detail"]
    assert client.post(f"{API}/datasets", json={"trigger": "../x"}).status_code == 422
    dataset = _install_prepared(world, client, sample_dataset_dir)
    bad = client.post(
        f"{API}/runs",
        json={"dataset": dataset, "steps": 8, "config_toml": "learning_rate = 'fast'\nnetwork_dimm = 4\n"},
    )
    assert bad.status_code == 422, bad.text
    assert "learning_rate" in bad.json()["detail"] and "network_dimm" in bad.json()["detail"]
    broken = client.post(f"{API}/runs", json={"dataset": dataset, "config_toml": "resolution = [1024,"})
    assert broken.status_code == 422 and "config_toml: not valid TOML" in broken.json()["detail"]
    assert client.post(f"{API}/runs", json={"dataset": dataset, "steps": 0}).status_code == 422
    unprepared = client.post(f"{API}/datasets", json={"trigger": "abc"}).json()["id"]
    answer = client.post(f"{API}/runs", json={"dataset": unprepared})
    assert answer.status_code == 422 and "prepare it first" in answer.json()["detail"]
    assert not (world["home"] / "runs").exists() or not any((world["home"] / "runs").iterdir())


def test_run_is_followed_cancelled_resumed_and_published(world, client, sample_dataset_dir):
    from fastapi.testclient import TestClient

    from lorapipe.pipeline.records import RunStore

    dataset = _install_prepared(world, client, sample_dataset_dir)
    started = client.post(
        f"{API}/runs",
        json={
            "dataset": dataset,
            "steps": 8,
            "checkpoints": 4,
            "rank": 2,
            "learning_rate": 0.002,
            "lora_name": "studio-toy",
        },
    )
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    config = Path(RunStore(world["home"] / "runs.sqlite").get(run_id).request["config"]).read_text()
    assert "max_train_steps = 8" in config and "network_dim = 2" in config and "save_every_n_steps = 2" in config
    assert "\n#save_every_n_epochs" in config  # the epoch cadence is commented out, with the reason

    # One device: a second training is refused, generation gets 503 + Retry-After naming the run.
    again = client.post(f"{API}/runs", json={"dataset": dataset, "steps": 8})
    assert again.status_code == 409 and run_id in again.json()["detail"]
    busy = client.post("/sdapi/v1/txt2img", json=TINY_TXT2IMG)
    assert busy.status_code == 503 and run_id in busy.json()["detail"]
    assert int(busy.headers["Retry-After"]) >= 1
    device = client.get("/studio/api/device").json()  # what the generate page shows
    assert (device["busy_policy"], device["training_run"]) == ("refuse", run_id) and device["retry_after_s"] >= 1
    assert "refused (503)" in device["generation"]
    with TestClient(_app(world, busy_policy="wait")) as waiting:
        assert waiting.get("/studio/api/device").json()["busy_policy"] == "wait"
        held = {}
        request = threading.Thread(target=lambda: held.update(r=waiting.post("/sdapi/v1/txt2img", json=TINY_TXT2IMG)))
        request.start()

        # Follow by polling until a checkpoint is written, then cancel: the trainer saves its state.
        wait_for(lambda: client.get(f"{API}/runs/{run_id}").json()["progress"]["step"] >= 2, 120, "step 2")
        assert request.is_alive()  # the waiting policy holds the request while the run trains
        assert client.post(f"{API}/runs/{run_id}/cancel").json()["status"] == "cancelled"
        request.join(180)
    assert held["r"].status_code == 200, held["r"].text
    answer = client.get(f"{API}/runs/{run_id}")
    stopped = answer.json()
    assert stopped["status"] == "cancelled" and stopped["progress"]["losses"]
    # Polling is cheap: the page sends the ETag back and gets 304 with no body until the run changes.
    assert answer.headers["cache-control"] == "no-cache"
    unchanged = client.get(f"{API}/runs/{run_id}", headers={"If-None-Match": f'"x", W/{answer.headers["etag"]}'})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged.headers["etag"] == answer.headers["etag"]
    assert client.get(f"{API}/runs/{run_id}", headers={"If-None-Match": '"other"'}).status_code == 200
    followed = client.get(f"{API}/runs/{run_id}/events")
    assert followed.status_code == 410 and "cancelled" in followed.json()["detail"]
    assert client.post(f"{API}/runs/{run_id}/cancel").status_code == 409
    wait_for(lambda: client.get("/studio/api/device").json()["training_run"] is None or None, 30, "device shown free")

    wait_for(lambda: client.post(f"{API}/runs/{run_id}/resume").status_code != 409 or None, 120, "device free")
    runs = client.get(f"{API}/runs").json()
    resumed = runs[0]["id"]
    assert resumed != run_id and runs[0]["status"] in ("queued", "running")

    # Server-sent events while it trains: snapshots with growing steps, then the end.
    steps_seen, ended = [], None
    with client.stream("GET", f"{API}/runs/{resumed}/events") as events:
        for line in events.iter_lines():
            if line.startswith("data: ") and '"progress"' in line:
                steps_seen.append(json.loads(line[6:])["progress"]["step"])
            if line.startswith("event: end"):
                ended = True
            if ended and line.startswith("data: "):
                assert json.loads(line[6:])["status"] == "succeeded"
                break
    assert ended and steps_seen[-1] == 8 and steps_seen == sorted(steps_seen)
    final = client.get(f"{API}/runs/{resumed}").json()
    assert min(step for step, _ in final["progress"]["losses"]) > 2  # went on from the saved state, not step 1
    checkpoints = client.get(f"{API}/runs/{resumed}/files").json()
    saved_at = [c["step"] for c in checkpoints if not c["final"]]
    assert saved_at[-1] == 8 and set(saved_at) <= {4, 6, 8}  # every 2 steps after the step it resumed from
    assert all(c["samples"] for c in checkpoints)
    sample = client.get(f"{API}/runs/{resumed}/files/{checkpoints[0]['samples'][0]}")
    assert sample.status_code == 200 and sample.content[:4] == b"\x89PNG"
    assert client.get(f"{API}/runs/{resumed}/files/../../runs.sqlite").status_code == 404
    download = client.get(f"{API}/runs/{resumed}/files/{checkpoints[0]['name']}")
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]

    # `lorapipe runs list` shows the same runs.
    listing = subprocess.run(
        [sys.executable, "-m", "lorapipe", "runs", "list", "--home", str(world["home"]), "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert {run_id, resumed} <= {r["id"] for r in json.loads(listing.stdout)}
    assert (world["loras"] / "studio-toy.safetensors").is_file()  # the run's own publish step

    published = client.post(f"{API}/runs/{resumed}/publish", json={"checkpoint": checkpoints[0]["name"]})
    assert published.status_code == 200, published.text
    tag = published.json()["tag"]
    name = published.json()["name"]
    assert tag == f"<lora:{name}:1>" and name in {e["name"] for e in client.get("/sdapi/v1/loras").json()}
    generated = client.post("/sdapi/v1/txt2img", json={**TINY_TXT2IMG, "prompt": f"dwjz toy {tag}"})
    assert generated.status_code == 200
    assert f'Lora hashes: "{name}: ' in json.loads(generated.json()["info"])["infotexts"][0]
    refused = client.post(f"{API}/runs/{resumed}/publish", json={"checkpoint": "../../runs.sqlite"})
    assert refused.status_code == 404

    shutil.rmtree(world["home"] / "runs" / resumed)
    assert "deleted" in client.get(f"{API}/runs/{resumed}/events").json()["detail"]


def test_a_run_template_sends_runs_to_sagemaker_without_holding_the_device(world, sample_dataset_dir, monkeypatch):
    """With `--studio-run-template` naming the sagemaker backend, runs are recorded for it (the job itself is the
    pipeline's business, tested there) and the local device stays free for generation."""
    from fastapi.testclient import TestClient

    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    template = world["root"] / "sagemaker-run.json"
    template.write_text(
        json.dumps(
            {
                "backend": "sagemaker",
                "output": "s3://models/studio",
                "s3_endpoint_url": "http://127.0.0.1:9",  # nothing listens: the upload fails
                "sagemaker": {"image": "lorapipe:test", "role_arn": "arn:aws:iam::1:role/x"},
            }
        )
    )
    with TestClient(_app(world, run_template=str(template))) as remote:
        dataset = _install_prepared(world, remote, sample_dataset_dir)
        started = remote.post(f"{API}/runs", json={"dataset": dataset, "steps": 4})
        assert started.status_code == 201, started.text
        from lorapipe.pipeline.records import RunStore

        record = RunStore(world["home"] / "runs.sqlite").get(started.json()["id"])
        assert record.backend == "sagemaker" and record.output == "s3://models/studio"
        assert record.request["base_model"] == str(world["model"])
        assert remote.post("/sdapi/v1/txt2img", json=TINY_TXT2IMG).status_code == 200  # no local training
        final = wait_for(
            lambda: (
                (r := remote.get(f"{API}/runs/{record.id}").json())["status"] in ("failed", "succeeded", "cancelled")
                and r
            ),
            120,
            "the run to end",
        )
        assert final["status"] == "failed" and "cannot reach the S3 endpoint" in final["error"]
