"""Stand-ins for what a user with the weights has: a diffusers folder laid out as the Hugging Face cache holds a
downloaded snapshot, so that the real loaders (``huggingface_hub.snapshot_download``, ``from_pretrained``) read it
offline exactly as they read the real one.

The cache layout (``huggingface_hub`` 1.x and later): ``<hub>/models--<owner>--<name>/blobs/<etag>`` holds each
file once, named by its digest; ``snapshots/<commit>/<path>`` are relative symlinks to the blobs; ``refs/main``
holds the commit. Used by the real-layout rehearsals and their tests; nothing here downloads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from quant.manifest import sha256


def repo_folder_name(repo_id: str, kind: str = "model") -> str:
    """``stabilityai/sdxl-turbo`` → ``models--stabilityai--sdxl-turbo`` (huggingface_hub's naming)."""
    return "--".join([f"{kind}s", *repo_id.split("/")])


def write_hub_snapshot(folder: Path, *, repo_id: str, hub_cache: Path, revision: str | None = None,
                       extra: dict[str, Path] | None = None) -> Path:
    """Lay out every file below ``folder`` (plus ``extra``: repo path → file) as the snapshot of ``repo_id`` in
    ``hub_cache``; return the snapshot folder. ``revision``: the commit id (default: a digest of the files, so the
    same files give the same revision). Files are copied into ``blobs/`` (named by sha256, as the hub names LFS
    files) and linked from the snapshot; where symlinks are not allowed they are copied, as huggingface_hub does."""
    files = {p.relative_to(folder).as_posix(): p for p in sorted(Path(folder).rglob("*")) if p.is_file()}
    files.update(extra or {})
    digests = {rel: sha256(p) for rel, p in files.items()}
    revision = revision or hashlib.sha1("".join(f"{r}\0{d}\n" for r, d in sorted(digests.items())).encode()).hexdigest()
    repo = Path(hub_cache) / repo_folder_name(repo_id)
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for rel, src in files.items():
        blob = repo / "blobs" / digests[rel]
        if not blob.exists():
            tmp = blob.with_name(blob.name + ".incomplete")
            shutil.copyfile(src, tmp)
            tmp.replace(blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:
            shutil.copyfile(blob, link)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
