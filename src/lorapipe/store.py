"""One store interface (fsspec) over local folders and `s3://bucket/prefix` on any S3-compatible endpoint.

- `list_datasets()`: the `NNNN-dataset` folders/prefixes under the store root.
- `fetch_dataset(name, cache_dir)`: a local copy verified by sha256; unchanged files (same size and ETag, intact
  local copy) are not downloaded again; the new copy is built in a hidden staging folder and swapped in, so the
  cache never holds half a dataset. Local stores return the folder itself (nothing to copy).
- `upload_file(local, dest)`: readers never see a partial object: the bytes go to a temporary key/file first and
  are then copied/renamed onto `dest`, followed by `dest.sha256` ("<hex>  <name>").

Credentials come from the standard AWS chain (env, profile, instance role); the endpoint from `endpoint_url`,
else `AWS_ENDPOINT_URL`. Every failure is a `StoreError` naming the URL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorapipe.atomic import atomic_copy, atomic_target, atomic_write_bytes
from lorapipe.errors import StoreError
from lorapipe.hashes import sha256_file

DATASET_NAME_RE = re.compile(r"^\d+-dataset$")
MANIFEST_NAME = ".lorapipe-manifest.json"
SHA256_SUFFIX = ".sha256"


@dataclass(frozen=True)
class FetchResult:
    path: Path
    downloaded: int
    reused: int


def _classify(exc: BaseException, url: str) -> StoreError:
    """Turn botocore/s3fs/OS exceptions into one-line StoreErrors that say what to do."""
    name = type(exc).__name__
    text = str(exc)
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return StoreError(f"{url}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile")
    if isinstance(exc, PermissionError) or any(
        code in text for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden")
    ):
        return StoreError(f"{url}: access denied (wrong credentials or missing permission); check the AWS credentials")
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return StoreError(f"{url}: bucket does not exist; create it or fix the URL")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or isinstance(
        exc, (ConnectionError, TimeoutError)
    ):
        return StoreError(f"{url}: cannot reach the S3 endpoint; check --s3-endpoint / AWS_ENDPOINT_URL ({name})")
    if isinstance(exc, FileNotFoundError):
        return StoreError(f"{url}: not found; check the URL")
    return StoreError(f"{url}: store operation failed ({name}: {text.splitlines()[0] if text else ''})")


class Store:
    """A store rooted at one URL; paths given to its methods are relative to that root ("a/b.txt")."""

    def __init__(self, url: str, fs: Any, root: str, *, local: bool):
        self.url = url.rstrip("/")
        self._fs = fs
        self._root = root.rstrip("/")
        self.is_local = local

    def _path(self, rel: str = "") -> str:
        rel = rel.strip("/")
        return f"{self._root}/{rel}" if rel else self._root

    def url_of(self, rel: str = "") -> str:
        rel = rel.strip("/")
        return f"{self.url}/{rel}" if rel else self.url

    @contextlib.contextmanager
    def _errors(self, rel: str = "") -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:  # botocore, aiohttp and OS errors all end up here
            if isinstance(exc, FileNotFoundError) and not self.is_local:
                raise self._missing(rel) from None
            raise _classify(exc, self.url_of(rel)) from None

    def _missing(self, rel: str) -> StoreError:
        bucket = self._root.split("/", 1)[0]
        try:
            bucket_exists = self._fs.exists(bucket)
        except Exception as exc:  # noqa: BLE001 - the bucket probe itself failed: report that instead
            return _classify(exc, self.url_of(rel))
        if not bucket_exists:
            return StoreError(f"s3://{bucket}: bucket does not exist; create it or fix the URL")
        return StoreError(f"{self.url_of(rel)}: not found; check the URL")

    def exists(self, rel: str) -> bool:
        with self._errors(rel):
            return bool(self._fs.exists(self._path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        with self._errors(rel):
            return self._fs.cat_file(self._path(rel))

    def delete(self, rel: str) -> None:
        """Remove `rel` and its `.sha256` sidecar if present (used to roll back a partial publish)."""
        for target in (rel, rel + SHA256_SUFFIX):
            with self._errors(target):
                if self._fs.exists(self._path(target)):
                    self._fs.rm_file(self._path(target))

    def list_datasets(self) -> list[str]:
        """Names of the `NNNN-dataset` folders directly under the root, sorted."""
        with self._errors():
            if not self.is_local:
                self._fs.invalidate_cache()
            entries = self._fs.ls(self._path(), detail=True)
        names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"]
        return sorted(n for n in names if DATASET_NAME_RE.match(n))

    def _remote_files(self, name: str) -> dict[str, dict[str, Any]]:
        base = self._path(name)
        with self._errors(name):
            if not self.is_local:
                self._fs.invalidate_cache()
            found = self._fs.find(base, detail=True)
        files = {}
        for path, info in found.items():
            if info.get("type") == "directory":
                continue
            rel = path[len(base) :].lstrip("/")
            if rel and rel != MANIFEST_NAME:
                files[rel] = info
        if not files:
            raise self._missing(name)
        return files

    def fetch_dataset(self, name: str, cache_dir: Path) -> Path:
        return self.fetch_dataset_with_stats(name, cache_dir).path

    def fetch_dataset_with_stats(self, name: str, cache_dir: Path) -> FetchResult:
        """Local copy of dataset `name` under `cache_dir/name`, re-using intact unchanged files."""
        if "/" in name or name in ("", ".", ".."):
            raise StoreError(f"{self.url_of(name)}: dataset name must be one folder name like 0001-dataset")
        if self.is_local:
            path = Path(self._path(name))
            if not path.is_dir():
                raise StoreError(f"{path}: dataset folder does not exist")
            return FetchResult(path, 0, 0)
        remote = self._remote_files(name)
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        target = cache_dir / name
        previous = self._read_manifest(target)
        staging = cache_dir / f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        manifest: dict[str, dict[str, Any]] = {}
        downloaded = reused = 0
        try:
            for rel, info in sorted(remote.items()):
                version = {"size": int(info.get("size") or 0), "etag": str(info.get("ETag") or info.get("mtime"))}
                local = staging / rel
                local.parent.mkdir(parents=True, exist_ok=True)
                old = previous.get(rel)
                cached = target / rel
                if (
                    old
                    and {k: old.get(k) for k in version} == version
                    and cached.is_file()
                    and sha256_file(cached) == old.get("sha256")
                ):
                    shutil.copy2(cached, local)
                    manifest[rel] = old
                    reused += 1
                    continue
                with self._errors(f"{name}/{rel}"):
                    self._fs.get_file(self._path(f"{name}/{rel}"), str(local))
                digest = sha256_file(local)
                self._verify_sidecar(name, rel, digest, remote)
                manifest[rel] = {**version, "sha256": digest}
                downloaded += 1
            atomic_write_bytes(staging / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True).encode())
            self._swap_in(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return FetchResult(target, downloaded, reused)

    def _verify_sidecar(self, name: str, rel: str, digest: str, remote: dict[str, dict[str, Any]]) -> None:
        sidecar = rel + SHA256_SUFFIX
        if sidecar not in remote:
            return
        with self._errors(f"{name}/{sidecar}"):
            expected = self._fs.cat_file(self._path(f"{name}/{sidecar}"))
        self._compare_sidecar(f"{name}/{rel}", expected, digest)

    @staticmethod
    def _read_manifest(target: Path) -> dict[str, dict[str, Any]]:
        try:
            return json.loads((target / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _swap_in(staging: Path, target: Path) -> None:
        if not target.exists():
            os.replace(staging, target)
            return
        retired = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)

    def fetch_file(self, rel: str, target: Path) -> Path:
        """A local copy of one object at `target`, verified against its `.sha256` sidecar when there is one.

        A copy made earlier from the same version (size and ETag, recorded in a hidden file beside it) and not
        touched since is reused after one metadata request, so a republished object is picked up at once.
        """
        with self._errors(rel):
            info = self._fs.info(self._path(rel))
        version = {"size": int(info.get("size") or 0), "etag": str(info.get("ETag") or info.get("mtime"))}
        record_path = target.with_name(f".{target.name}.version")
        record = self._read_record(record_path)
        if (
            target.is_file()
            and {k: record.get(k) for k in version} == version
            and record.get("local") == [target.stat().st_size, target.stat().st_mtime_ns]
        ):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(target) as scratch:
            with self._errors(rel):
                self._fs.get_file(self._path(rel), str(scratch))
            digest = sha256_file(scratch)
            self._check_sidecar(rel, digest)
        stat = target.stat()
        atomic_write_bytes(
            record_path, json.dumps({**version, "sha256": digest, "local": [stat.st_size, stat.st_mtime_ns]}).encode()
        )
        return target

    def _check_sidecar(self, rel: str, digest: str) -> None:
        sidecar = rel + SHA256_SUFFIX
        with self._errors(sidecar):
            if not self._fs.exists(self._path(sidecar)):
                return
            expected = self._fs.cat_file(self._path(sidecar))
        self._compare_sidecar(rel, expected, digest)

    def _compare_sidecar(self, rel: str, sidecar: bytes, digest: str) -> None:
        """Raise when a `.sha256` sidecar (`sha256sum` output: the hex digest first) names another digest."""
        expected = sidecar.decode("utf-8", "replace").split()
        if expected and expected[0].lower() != digest:
            raise StoreError(
                f"{self.url_of(rel)}: sha256 {digest[:12]}... does not match its .sha256 file "
                f"({expected[0][:12]}...); re-upload it"
            )

    @staticmethod
    def _read_record(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def upload_file(self, local: Path, dest: str) -> str:
        """Upload `local` to `dest` (relative to the root) plus `dest.sha256`; return the URL of `dest`."""
        local = Path(local)
        if not local.is_file():
            raise StoreError(f"{local}: file to upload does not exist")
        digest = sha256_file(local)
        sidecar = f"{digest}  {Path(dest).name}\n".encode()
        if self.is_local:
            target = Path(self._path(dest))
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_copy(local, target)
            atomic_write_bytes(target.with_name(target.name + SHA256_SUFFIX), sidecar)
            return self.url_of(dest)
        tmp_key = f"{dest}.tmp-{uuid.uuid4().hex}"
        with self._errors(dest):
            try:
                self._fs.put_file(str(local), self._path(tmp_key))
                self._fs.copy(self._path(tmp_key), self._path(dest))  # server-side copy: appears whole
            finally:
                with contextlib.suppress(Exception):
                    self._fs.rm_file(self._path(tmp_key))
            self._fs.pipe_file(self._path(dest + SHA256_SUFFIX), sidecar)
        return self.url_of(dest)


def open_store(url: str, *, endpoint_url: str | None = None) -> Store:
    """A Store for a local path / `file://` URL (the default) or an `s3://bucket[/prefix]` URL."""
    if url.startswith("s3://"):
        import s3fs

        root = url[len("s3://") :].strip("/")
        if not root:
            raise StoreError(f"{url}: missing bucket name; use s3://bucket/prefix")
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
        fs = s3fs.S3FileSystem(
            client_kwargs=client_kwargs,
            skip_instance_cache=True,
            use_listings_cache=False,
            config_kwargs={"retries": {"max_attempts": 2}, "connect_timeout": 5, "read_timeout": 30},
        )
        return Store(f"s3://{root}", fs, root, local=False)
    if "://" in url and not url.startswith("file://"):
        raise StoreError(f"{url}: unsupported URL scheme; use a local path or s3://bucket/prefix")
    from fsspec.implementations.local import LocalFileSystem

    path = Path(url[len("file://") :] if url.startswith("file://") else url).expanduser().resolve()
    if not path.exists():
        raise StoreError(f"{path}: folder does not exist")
    return Store(str(path), LocalFileSystem(), str(path), local=True)
