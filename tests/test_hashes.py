"""The persistent hash cache: a file is read once while its size and mtime stay, and a bad cache file is harmless."""

from __future__ import annotations

import hashlib
import json
import os

from lorapipe.file_names import CACHE_DIR_ENV, user_cache_dir
from lorapipe.generate.model_info import describe_model
from lorapipe.hashes import HASH_CACHE_NAME, HashCache


def _rewrite_keeping_stamp(path, data: bytes) -> None:
    """Change the bytes but restore size and mtime: only a cached value can still give the old hash."""
    info = path.stat()
    assert len(data) == info.st_size
    path.write_bytes(data)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_second_call_returns_the_cached_value_without_reading_the_file(tmp_path):
    model = tmp_path / "base.safetensors"
    model.write_bytes(b"a" * 5000)
    cache = HashCache(tmp_path / "cache")
    first = cache.sha256(model)
    assert first == hashlib.sha256(b"a" * 5000).hexdigest()

    _rewrite_keeping_stamp(model, b"b" * 5000)
    assert HashCache(tmp_path / "cache").sha256(model) == first  # a new instance: the value came from disk

    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache.sha256(model) == hashlib.sha256(b"b" * 5000).hexdigest()  # mtime changed: read again


def test_changed_size_is_hashed_again_and_entries_of_other_files_are_kept(tmp_path):
    one, two = tmp_path / "one.bin", tmp_path / "two.bin"
    one.write_bytes(b"1" * 10)
    two.write_bytes(b"2" * 10)
    cache = HashCache(tmp_path)
    cache.sha256(one)
    cache.sha256(two)
    stat = one.stat()
    one.write_bytes(b"1" * 11)
    os.utime(one, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.sha256(one) == hashlib.sha256(b"1" * 11).hexdigest()
    entries = json.loads((tmp_path / HASH_CACHE_NAME).read_text())["hashes"]
    assert set(entries) == {str(one.resolve()), str(two.resolve())}


def test_corrupt_cache_file_is_ignored_and_rewritten(tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"xyz" * 100)
    (tmp_path / HASH_CACHE_NAME).write_text('{"version": 1, "hashes": [tru')
    assert HashCache(tmp_path).sha256(model) == hashlib.sha256(b"xyz" * 100).hexdigest()
    stored = json.loads((tmp_path / HASH_CACHE_NAME).read_text())
    assert stored["hashes"][str(model.resolve())]["sha256"] == hashlib.sha256(b"xyz" * 100).hexdigest()

    (tmp_path / HASH_CACHE_NAME).write_text(json.dumps({"version": 1, "hashes": {str(model.resolve()): "nope"}}))
    assert HashCache(tmp_path).sha256(model) == hashlib.sha256(b"xyz" * 100).hexdigest()


def test_unwritable_cache_folder_still_answers(tmp_path):
    model = tmp_path / "m.bin"
    model.write_bytes(b"q" * 64)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    assert HashCache(blocker / "cache").sha256(model) == hashlib.sha256(b"q" * 64).hexdigest()


def test_describe_model_hashes_a_folder_once_and_notices_a_changed_weight_file(tmp_path):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "w.safetensors").write_bytes(b"u" * 300)
    (folder / "vae.safetensors").write_bytes(b"v" * 200)
    (folder / "model_index.json").write_text("{}")  # not a weight file: not hashed
    cache = HashCache(tmp_path / "cache")
    info = describe_model(str(folder), hash_cache=cache)
    assert info.sha256 == hashlib.sha256(b"u" * 300 + b"v" * 200).hexdigest()

    _rewrite_keeping_stamp(folder / "vae.safetensors", b"w" * 200)
    assert describe_model(str(folder), hash_cache=cache).sha256 == info.sha256
    (folder / "vae.safetensors").write_bytes(b"w" * 201)
    assert describe_model(str(folder), hash_cache=cache).sha256 == hashlib.sha256(b"u" * 300 + b"w" * 201).hexdigest()


def test_cache_folder_follows_lorapipe_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert HashCache().file == tmp_path / "mine" / HASH_CACHE_NAME
    monkeypatch.delenv(CACHE_DIR_ENV)
    assert user_cache_dir() == tmp_path / "xdg" / "lorapipe"
