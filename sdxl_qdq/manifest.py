"""Folders that say what they hold: ``manifest.json`` lists every file's size and sha256, plus what made them.

A reader checks sizes always (cheap) and digests unless told otherwise; a missing, resized or changed file
is an ``IntegrityError`` naming it. The manifest is written last, atomically: a folder without one is not
complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sdxl_qdq.errors import IntegrityError

MANIFEST = "manifest.json"
FORMAT = 1


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file below ``folder`` (POSIX relative paths, sorted), the manifest excepted."""
    return {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST
    }


def write_manifest(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``folder/manifest.json``: ``meta`` plus the files' sizes and digests. Returns the manifest."""
    manifest = {"format": FORMAT, **meta, "files": file_entries(folder)}
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(tmp, folder / MANIFEST)
    return manifest


def read_manifest(folder: Path, *, digests: bool = True, what: str = "folder", extra: bool = True) -> dict[str, Any]:
    """The manifest of ``folder``, after checking every listed file (sizes, and digests unless ``digests`` is
    False) and, with ``extra``, that no unlisted file was added; ``what`` names the folder in errors ("bundle")."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise IntegrityError(
            f"{what} {folder} has no {MANIFEST} (incomplete, or made by an older version); make it again"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{what} manifest {path} is not valid JSON ({e}); make the {what} again") from e
    if manifest.get("format") != FORMAT:
        raise IntegrityError(
            f"{what} manifest {path} has format {manifest.get('format')!r}, this code reads {FORMAT}; "
            f"make the {what} with this version"
        )
    for rel, entry in manifest["files"].items():
        file = folder / rel
        if not file.is_file():
            raise IntegrityError(f"{what} {folder}: {rel} is missing; copy the whole {what} again")
        if file.stat().st_size != entry["size"]:
            raise IntegrityError(
                f"{what} {folder}: {rel} is {file.stat().st_size} bytes, the manifest says {entry['size']}; "
                f"it was truncated or changed: copy the whole {what} again"
            )
        if digests and sha256(file) != entry["sha256"]:
            raise IntegrityError(
                f"{what} {folder}: {rel} does not match its sha256 in the manifest; it was changed: "
                f"copy the whole {what} again"
            )
    added = (
        []
        if not extra
        else sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.relative_to(folder).as_posix() not in manifest["files"] and p.name != MANIFEST
        )
    )
    if added:
        raise IntegrityError(
            f"{what} {folder} holds files its manifest does not list ({added[:3]}); it was changed: "
            f"copy the whole {what} again"
        )
    return manifest


def manifest_digest(folder: Path) -> str:
    """sha256 of ``folder``'s manifest file: names the folder's exact content."""
    return sha256(Path(folder) / MANIFEST)


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``, replacing what is there: the old one is renamed aside first, so
    ``out`` is never a half-deleted folder."""
    tmp, out = Path(tmp), Path(out)
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
