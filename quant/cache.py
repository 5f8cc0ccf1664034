"""Content-addressed artifact cache.

An artifact lives at ``<root>/<stage>/<key>/``; the key hashes every input of the stage. A build writes
into a temporary sibling directory and renames it into place when complete, under a file lock so that
parallel workers (pytest-xdist) build each artifact once. A directory that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock

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
    """Installed versions of ``names`` (``"absent"`` for a package that is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_key(inputs: dict[str, Any]) -> str:
    """A short stable hash of JSON-serialisable ``inputs`` (keys sorted)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class ArtifactCache:
    """``get_or_build(stage, inputs, build)`` returns the artifact directory, building it at most once."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.hits: list[str] = []
        self.misses: list[str] = []

    def path(self, stage: str, inputs: dict[str, Any]) -> Path:
        return self.root / stage / make_key(inputs)

    def get_or_build(self, stage: str, inputs: dict[str, Any], build: Callable[[Path], None]) -> Path:
        """Return ``<root>/<stage>/<key>``; on a miss call ``build(tmp_dir)`` and rename ``tmp_dir`` into place."""
        final = self.path(stage, inputs)
        if final.is_dir():
            self.hits.append(stage)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if final.is_dir():  # another worker finished it while we waited
                self.hits.append(stage)
                return final
            for stale in final.parent.glob(f".{final.name}.*"):  # left by a killed build (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
            try:
                build(tmp)
                (tmp / "key.json").write_text(json.dumps(inputs, sort_keys=True, indent=1, default=str))
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        self.misses.append(stage)
        return final
