"""`pipeline watch`: a run for every new or changed NNNN-dataset (by content), in a folder or an S3 bucket."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

from lorapipe.pipeline.records import RunStore
from lorapipe.pipeline.request import PipelineHome, RunRequest
from lorapipe.pipeline.watch import DatasetWatcher


def _watcher(home, store_url, **request) -> DatasetWatcher:
    template = RunRequest(dataset=f"{store_url}/0000-template", **request)
    return DatasetWatcher(home, store_url, template, detach=False)  # records runs; the test does not train


def test_new_and_changed_datasets_start_runs_once(tmp_path, sample_dataset_dir, capsys):
    store = tmp_path / "bucket"
    shutil.copytree(sample_dataset_dir, store / "0001-dataset")
    (store / "not-a-dataset").mkdir()
    home = PipelineHome.resolve(tmp_path / "home")
    watcher = _watcher(home, str(store), base_model="/models/tiny", overrides=("max_train_steps=2",))

    first = watcher.poll_once(sys.stdout)
    assert len(first) == 1
    record = RunStore(home.database).get(first[0])
    assert record.dataset == str(store / "0001-dataset") and record.status == "queued"
    assert record.request["overrides"] == ["max_train_steps=2"] and record.request["base_model"] == "/models/tiny"

    assert watcher.poll_once(sys.stdout) == [], "unchanged: no new run"
    caption = sorted((store / "0001-dataset" / "20_dwjz toy").glob("*.txt"))[0]
    os.utime(caption, (1, 1))
    assert watcher.poll_once(sys.stdout) == [], "touched is not changed"
    caption.write_text("dwjz toy, upside down")
    changed = watcher.poll_once(sys.stdout)
    assert len(changed) == 1 and changed != first
    shutil.copytree(sample_dataset_dir, store / "0002-dataset")
    added = watcher.poll_once(sys.stdout)
    assert [RunStore(home.database).get(run_id).dataset for run_id in added] == [str(store / "0002-dataset")]
    assert "0002-dataset is new or changed" in capsys.readouterr().out


def test_watch_once_cli_starts_and_waits_for_a_run(tmp_path, sample_dataset_dir):
    """Through the CLI with a dataset that fails its check: the run is started detached, fails fast, exit 1."""
    store = tmp_path / "store"
    bad = store / "0003-dataset"
    (bad / "no_repeats").mkdir(parents=True)
    shutil.copy(sample_dataset_dir / "kohya-sdxl-config.toml", bad)
    home = tmp_path / "home"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorapipe",
            "pipeline",
            "watch",
            str(store),
            "--once",
            "--wait",
            "--home",
            str(home),
            "--lora-dir",
            str(tmp_path / "loras"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0003-dataset is new or changed" in result.stdout
    runs = RunStore(home / "runs.sqlite").list_runs()
    assert len(runs) == 1 and runs[0].status == "failed" and "0003-dataset" in runs[0].error
    again = subprocess.run(
        [sys.executable, "-m", "lorapipe", "pipeline", "watch", str(store), "--once", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and "new or changed" not in again.stdout


def test_watch_an_s3_bucket(seaweed_s3, sample_dataset_dir, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed_s3.secret_key)
    client = seaweed_s3.client()
    bucket = f"watch-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    for path in sorted(sample_dataset_dir.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"incoming/0001-dataset/{path.relative_to(sample_dataset_dir)}")
    home = PipelineHome.resolve(tmp_path / "home")
    watcher = _watcher(home, f"s3://{bucket}/incoming", s3_endpoint_url=seaweed_s3.endpoint_url)
    started = watcher.poll_once(sys.stdout)
    assert len(started) == 1
    assert RunStore(home.database).get(started[0]).dataset == f"s3://{bucket}/incoming/0001-dataset/"
    assert watcher.poll_once(sys.stdout) == []
    client.put_object(Bucket=bucket, Key="incoming/0001-dataset/20_dwjz toy/extra.txt", Body=b"dwjz toy")
    assert len(watcher.poll_once(sys.stdout)) == 1, "a changed object in the bucket is a changed dataset"
