"""Content-addressed artifact cache, verified on every hit.

An artifact lives at ``<root>/<stage>/<key>/``; the key hashes every input of the stage. A build writes into
a temporary sibling directory, its third-party output in ``build.log`` there, then a ``manifest.json`` (size
and sha256 of every file), and renames the directory into place when complete, under a file lock so that
parallel workers build each artifact once. A hit checks every listed file's size (cheap) and the digest of each
file whose size, mtime or inode differ from its last verification (``<key>.verified.json`` beside the
artifact: a fresh copy or a touched file is hashed again, an untouched one is not); ``verify="full"`` hashes
everything. A bad artifact (missing, resized or changed file, no manifest) is moved aside to
``<key>.bad-<time>`` and rebuilt, with one line naming it; nothing of it is used.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock

from sdxl_qdq.errors import IntegrityError, QuantError
from sdxl_qdq.manifest import FORMAT as MANIFEST_FORMAT
from sdxl_qdq.manifest import MANIFEST, read_manifest, sha256, write_manifest
from sdxl_qdq.stage_table import check_inputs

ENV_CACHE_DIR = "SDXL_QDQ_CACHE_DIR"

# Packages whose version can change an artifact; recorded in every key and every baseline.
TOOLCHAIN: tuple[str, ...] = (
    "torch",
    "diffusers",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxruntime-qnn",
    "olive-ai",
    "numpy",
)


def default_root() -> Path:
    if env := os.environ.get(ENV_CACHE_DIR):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdxl-qdq-gate"


def package_versions(names: tuple[str, ...] = TOOLCHAIN) -> dict[str, str]:
    """Installed versions of ``names`` (``"absent"`` for a package that is not installed); read once per process."""
    return dict(_package_versions(names))


@functools.lru_cache(maxsize=8)
def _package_versions(names: tuple[str, ...]) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


file_digest = sha256  # sha256 of a file's bytes
_HEX = frozenset("0123456789abcdef")


def content_digest(path: Path, *, memo: Path | None = None) -> str:
    """A digest of what ``path`` holds, cheap on a warm run. A file of a Hugging Face cache snapshot is a link to a
    blob named by its digest (sha256 for LFS files, git's sha1 for small ones): that name. Any other file: its
    sha256, remembered in ``memo`` (default: ``<cache root>/digests``) per path, size, mtime and inode, so that a
    warm run does not hash gigabytes of weights again; the digest, not the memo, enters keys."""
    target = Path(path).resolve()
    if target.parent.name == "blobs" and len(target.name) in (40, 64) and set(target.name) <= _HEX:
        return target.name
    st = target.stat()
    memo = memo if memo is not None else default_root() / "digests"
    entry = memo / make_key({"path": str(target), "size": st.st_size, "mtime": st.st_mtime_ns, "inode": st.st_ino})
    with contextlib.suppress(OSError):
        return entry.read_text()
    digest = sha256(target)
    with contextlib.suppress(OSError):  # a read-only cache only costs the hashing next time
        memo.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        tmp.write_text(digest)
        tmp.replace(entry)
    return digest


class CacheError(QuantError):
    """The artifact cache cannot be written (permissions, a full disk)."""


def make_key(inputs: dict[str, Any]) -> str:
    """A short stable hash of JSON-serialisable ``inputs`` (keys sorted)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class ArtifactCache:
    """``get_or_build(stage, inputs, build)`` returns the artifact directory, building it at most once.

    ``verify``: "auto" (sizes always, digests of files changed since their last verification) or "full" (every
    digest on every hit). ``notice``: where the one-line notices go (a bad artifact moved aside, a failed build's
    log); stderr by default."""

    def __init__(
        self, root: Path | None = None, *, verify: str = "auto", notice: Callable[[str], None] | None = None
    ) -> None:
        if verify not in ("auto", "full"):
            raise ValueError(f"verify must be 'auto' or 'full', not {verify!r}")
        self.root = Path(root) if root is not None else default_root()
        self.verify = verify
        self.notice = notice or (lambda message: print(message, file=sys.stderr, flush=True))
        self.hits: list[str] = []
        self.misses: list[str] = []

    def path(self, stage: str, inputs: dict[str, Any]) -> Path:
        check_inputs(stage, inputs)  # a declared stage's key hashes all its key fields
        return self.root / stage / make_key(inputs)

    def get_or_build(self, stage: str, inputs: dict[str, Any], build: Callable[[Path], None]) -> Path:
        """Return ``<root>/<stage>/<key>``; on a miss (or a bad artifact) call ``build(tmp_dir)`` and rename
        ``tmp_dir`` into place once its manifest is written."""
        final = self.path(stage, inputs)
        if final.is_dir() and self.check(final) is None:
            self.hits.append(stage)
            return final
        self._writable(final.parent)
        with FileLock(str(final) + ".lock"):
            if final.is_dir():  # another worker finished it while we waited, or it is bad
                problem = self.check(final)
                if problem is None:
                    self.hits.append(stage)
                    return final
                self._move_aside(final, stage, problem)
            for stale in final.parent.glob(f".{final.name}.*"):  # left by a killed build (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
            self._build(stage, inputs, build, final)
        self.misses.append(stage)
        return final

    @contextlib.contextmanager
    def scratch(self, what: str) -> Iterator[Path]:
        """A private working folder under ``<root>/.scratch`` for work that ends in several artifacts (images drawn
        for several variants in one pass), removed on exit. Its owner holds ``<folder>.lock`` while it lives; a
        folder whose lock is free was left by a killed process and is swept by the next ``scratch``."""
        base = self.root / ".scratch"
        self._writable(base)
        for lock_path in base.glob("*.lock"):
            lock = FileLock(str(lock_path))
            try:
                lock.acquire(timeout=0)
            except TimeoutError:
                continue  # a live owner
            try:
                shutil.rmtree(lock_path.with_suffix(""), ignore_errors=True)
                lock_path.unlink(missing_ok=True)
            finally:
                lock.release()
        try:
            folder = Path(tempfile.mkdtemp(prefix=f"{what}.", dir=base))
        except OSError as e:
            raise self._error(e, base) from e
        lock = FileLock(str(folder) + ".lock")
        lock.acquire()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            Path(str(folder) + ".lock").unlink(missing_ok=True)
            lock.release()

    def check(self, folder: Path) -> str | None:
        """Why the artifact at ``folder`` must not be used, or None. Every file's size is checked (one ``stat``
        each, on plain strings: a warm hit of the tiny model's 1,100 calibration files costs a few ms); a file
        is hashed when its size, mtime or inode changed since it was last verified (the stamp beside the
        artifact), or every file with ``verify="full"``, which also refuses files the manifest does not list."""
        if self.verify == "full":
            try:
                read_manifest(folder, digests=False, what="artifact", extra=True)
            except IntegrityError as e:
                return str(e)
        raw_path = os.path.join(folder, MANIFEST)
        try:
            with open(raw_path, "rb") as f:
                raw = f.read()
            manifest = json.loads(raw)
            files = manifest["files"]
        except FileNotFoundError:
            return f"artifact {folder} has no {MANIFEST} (incomplete, or made by an older version)"
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"artifact manifest {raw_path} is unreadable ({e})"
        if manifest.get("format") != MANIFEST_FORMAT:
            return (
                f"artifact manifest {raw_path} has format {manifest.get('format')!r}, this code reads {MANIFEST_FORMAT}"
            )
        stamp_path = folder.with_name(f"{folder.name}.verified.json")
        digest = hashlib.sha256(raw).hexdigest()
        try:
            stamp = json.loads(stamp_path.read_text())
        except (OSError, json.JSONDecodeError):
            stamp = {}
        known = stamp.get("files", {}) if stamp.get("manifest") == digest and self.verify == "auto" else {}
        base, seen, hashed = str(folder) + os.sep, {}, 0
        for rel, entry in files.items():
            try:
                st = os.stat(base + rel)
            except FileNotFoundError:
                return f"artifact {folder}: {rel} is missing"
            if st.st_size != entry["size"]:
                return (
                    f"artifact {folder}: {rel} is {st.st_size} bytes, the manifest says {entry['size']} "
                    "(truncated or changed)"
                )
            seen[rel] = [st.st_size, st.st_mtime_ns, st.st_ino]
            if known.get(rel) != seen[rel]:
                hashed += 1
                if sha256(Path(base + rel)) != entry["sha256"]:
                    return f"artifact {folder}: {rel} does not match its sha256 in the manifest (it was changed)"
        if hashed:
            self._write_json(stamp_path, {"manifest": digest, "files": seen})
        return None

    def _build(self, stage: str, inputs: dict[str, Any], build: Callable[[Path], None], final: Path) -> None:
        from sdxl_qdq.procs import log_tail, stage_log

        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        except OSError as e:
            raise self._error(e, final) from e
        log = tmp / "build.log"
        try:
            with stage_log(log):
                build(tmp)
            (tmp / "key.json").write_text(json.dumps(inputs, sort_keys=True, indent=1, default=str))
            write_manifest(tmp, {"stage": stage, "key": final.name})
            os.replace(tmp, final)
        except BaseException as e:
            kept = final.with_name(f"{final.name}.failed.log")
            if log.is_file() and not isinstance(e, KeyboardInterrupt):
                shutil.copyfile(log, kept)
                tail = log_tail(log)
                self.notice(
                    f"cache: building {stage}/{final.name} failed; its log: {kept}" + (f"\n{tail}" if tail else "")
                )
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.errno in (
                errno.ENOSPC,
                errno.EDQUOT,
                errno.EACCES,
                errno.EROFS,
                errno.EPERM,
            ):
                raise self._error(e, final) from e
            raise

    def _move_aside(self, final: Path, stage: str, problem: str) -> None:
        aside = self.quarantine(final, problem, say=False)
        self.notice(f"cache: {stage}/{final.name} is bad ({problem}); moved aside to {aside.name} and rebuilt")

    def quarantine(self, folder: Path, problem: str, *, say: bool = True) -> Path:
        """Move a bad artifact aside (``<key>.bad-<time>``: kept for inspection, never used); return where."""
        aside = folder.with_name(f"{folder.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.replace(folder, aside)
        folder.with_name(f"{folder.name}.verified.json").unlink(missing_ok=True)
        if say:
            self.notice(f"cache: {folder.parent.name}/{folder.name} is bad ({problem}); moved aside to {aside.name}")
        return aside

    def _writable(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error(e, folder) from e

    def _error(self, e: OSError, where: Path) -> CacheError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return CacheError(
                f"no space left in the artifact cache {self.root} (writing {where}): free some space, or pass "
                f"--cache-dir DIR (or set {ENV_CACHE_DIR}) on a disk with room; nothing was left half-written"
            )
        return CacheError(
            f"the artifact cache {self.root} cannot be written ({e.strerror or e} at {where}): pass --cache-dir "
            f"DIR (or set {ENV_CACHE_DIR}) to a folder you can write"
        )

    @staticmethod
    def _write_json(path: Path, data: Any) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except OSError:  # a stamp is a speed-up: a cache we cannot write it in is still verified each time
            tmp.unlink(missing_ok=True)

    def verify_all(self, *, stages: tuple[str, ...] | None = None) -> list[tuple[Path, str | None]]:
        """Every artifact under the cache (or under ``stages``), with its problem or None; "full" checks."""
        full = ArtifactCache(self.root, verify="full", notice=self.notice)
        found = []
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []:
            if stages and stage_dir.name not in stages:
                continue
            for folder in sorted(
                p for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and ".bad-" not in p.name
            ):
                found.append((folder, full.check(folder)))
        return found
