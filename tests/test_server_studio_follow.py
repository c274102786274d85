"""Following a run costs the run next to nothing: its snapshot is rebuilt only when its files change, and every
server-sent-event follower of a run shares one watcher. A queued run record (no worker) whose log the test writes."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from lorapipe.pipeline.request import PipelineHome, RunRequest
from lorapipe.pipeline.runs import create_run
from lorapipe.server import studio_runs
from lorapipe.server.api_errors import ApiError
from lorapipe.server.studio_follow import RunFeeds
from lorapipe.server.studio_runs import StudioRuns
from lorapipe.server.studio_state import call_in_thread


@pytest.fixture()
def queued(tmp_path, sample_dataset_dir, monkeypatch):
    monkeypatch.setattr(studio_runs, "SNAPSHOT_TTL_S", 0.0)  # every call looks at the files
    home = PipelineHome.resolve(tmp_path / "home")
    record = create_run(RunRequest(dataset=str(sample_dataset_dir), base_model="tiny"), home)
    return StudioRuns(home, base_model="tiny", lora_dir=None), record


def _log(record, line: str) -> None:
    with open(record.run_dir / "run.log", "a", encoding="utf-8") as log:
        log.write(line + "\n")


def test_a_snapshot_is_rebuilt_only_when_the_run_files_change(queued):
    runs, record = queued
    first = runs.current_snapshot(record.id)
    assert runs.current_snapshot(record.id) is first  # nothing changed: the same bytes, no rebuild
    _log(record, "step=3 loss=0.25 lr=0.001 epoch=1")
    changed = runs.current_snapshot(record.id)
    assert changed.etag != first.etag and changed.step == 3 and b'"loss":0.25' in changed.body
    assert runs.current_snapshot(record.id) is changed
    shutil.rmtree(record.run_dir)
    with pytest.raises(studio_runs.RunNotFound, match="deleted"):
        runs.current_snapshot(record.id)
    with pytest.raises(studio_runs.RunNotFound, match="not a run id"):
        runs.current_snapshot("..")


def test_followers_of_a_run_share_one_watcher(queued):
    runs, record = queued
    looks = []

    async def look(run_id: str):
        looks.append(run_id)
        return await call_in_thread(runs.current_snapshot, run_id)

    async def scenario():
        feeds = RunFeeds(look, interval_s=0.05, keepalive_s=5)

        async def follow(count: int) -> list[int]:
            steps = []
            async for snapshot in feeds.follow(record.id):
                steps.append(snapshot.step)
                if len(steps) == count:
                    return steps
            return steps

        followers = [asyncio.create_task(follow(2)) for _ in range(10)]
        await asyncio.sleep(0.3)
        quiet_looks = len(looks)
        _log(record, "step=5 loss=0.5 lr=0.001 epoch=1")
        seen = await asyncio.wait_for(asyncio.gather(*followers), 10)
        await feeds.close()
        return seen, quiet_looks

    seen, quiet_looks = asyncio.run(scenario())
    assert seen == [[0, 5]] * 10  # each follower got the first snapshot and the change, nothing in between
    assert 2 <= quiet_looks <= 12  # ~one look per interval for the run, not one per follower (10 would give 60)


def test_a_run_deleted_while_followed_ends_the_feed_with_its_reason(queued):
    runs, record = queued

    async def scenario():
        feeds = RunFeeds(lambda run_id: call_in_thread(runs.current_snapshot, run_id), interval_s=0.05)
        got = []
        with pytest.raises(ApiError) as refused:
            async for snapshot in feeds.follow(record.id):
                got.append(snapshot)
                runs.home.database.unlink()  # the record goes (as `lorapipe runs` cleanup would make it)
        return got, refused.value

    got, refused = asyncio.run(scenario())
    assert len(got) == 1 and refused.status_code == 404
