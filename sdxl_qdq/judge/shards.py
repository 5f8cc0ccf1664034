"""Shards of a gate run: part k of N of the prompt set (``sdxl_qdq.models.prompts.Shard``) drawn on one machine, with
per-image records, and one judge that merges them.

A shard folder::

    manifest.json           what made it (build keys, model, recipe, EP, prompt set, backbones, reference, shard k/N,
                            its prompt ids, timing) and every file's size and sha256 (``sdxl_qdq.manifest``)
    images/<label>/         the gated sets float@1, qdq@1, float@2, qdq@2 (PNG, with the text responses) and the FID
                            reference set ``reference`` (PNG), named as the single run names them
    records.npz             per image, in the shard's prompt order: ``mse/<k>`` (qdq@k vs float@k),
                            ``clip_score/<label>``, ``clip/<label>`` (the CLIP backbone's image embedding),
                            ``fid/<label>`` (the FID backbone's features)

``merge`` refuses, with one line, a folder that is not a complete shard, a changed file, shards of other builds,
prompt sets, backbones, references or shard counts, a shard given twice, a missing shard, and prompts in two shards;
it returns the union in the prompt set's order. The judge (``sdxl_qdq.flows.judge_shards``, ``pytest -m quality
--qdq-shards``) computes the set metrics from the merged records: the backbones never run again on the judge.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.components import STEPS
from sdxl_qdq.errors import ConfigError, IntegrityError
from sdxl_qdq.judge.backbones import Backbones, clip_image_embeddings, clip_scores, fid_features, remember
from sdxl_qdq.judge.metrics import image_mse
from sdxl_qdq.manifest import read_manifest, write_manifest
from sdxl_qdq.models.prompts import Prompt, Shard
from sdxl_qdq.run.generate import image_name, load_png, response_name, save_png

KIND = "sdxl-qdq shard"
GATED = ("float@1", "qdq@1", "float@2", "qdq@2")
EMBEDDED = ("float@1", "qdq@1", "qdq@2", "reference")  # the sets FID, KID and CMMD read
SCORED = ("float@1", "qdq@1", "qdq@2")  # the sets with a CLIP score
SAME = ("model", "recipe", "keys", "ep", "soc", "prompt_set", "backbones", "reference")  # what every shard shares


def ids_digest(prompts: list[Prompt]) -> str:
    """The prompt set's ids in order, hashed: two shards of one set carry the same."""
    return hashlib.sha256("\n".join(p.id for p in prompts).encode()).hexdigest()


def records(images: dict[str, list[np.ndarray]], prompts: list[Prompt], backbones: Backbones) -> dict[str, np.ndarray]:
    """The per-image records of drawn ``images`` (label → images in ``prompts`` order, ``reference`` included)."""
    out: dict[str, np.ndarray] = {}
    for k in STEPS:
        out[f"mse/{k}"] = np.asarray([image_mse(f, q) for f, q in zip(images[f"float@{k}"], images[f"qdq@{k}"])])
    texts = [p.text for p in prompts]
    for label in SCORED:
        out[f"clip_score/{label}"] = np.asarray(clip_scores(images[label], texts, backbones.clip), dtype=np.float64)
    for label in EMBEDDED:
        out[f"fid/{label}"] = np.asarray(fid_features(images[label], backbones.fid))
        out[f"clip/{label}"] = np.asarray(clip_image_embeddings(images[label], backbones.clip))
    return out


def write_shard(
    out: Path,
    *,
    shard: Shard,
    prompts: list[Prompt],
    all_prompts: list[Prompt],
    dirs: dict[str, Path],
    reference: list[np.ndarray],
    backbones: Backbones,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write the shard folder ``out`` (aside, then renamed: a killed run leaves no half shard): the drawn sets'
    files for ``prompts`` copied from ``dirs`` (label → folder), the reference images, the records and the
    manifest (``meta``: model, recipe, keys, ep, soc, prompt_set, reference, seconds, versions)."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} exists; a shard is written to a new folder (remove it, or pick another --out)")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    for label in GATED:
        folder = tmp / "images" / label
        folder.mkdir()
        for p in prompts:
            for name in (image_name(p), response_name(p)):
                if (dirs[label] / name).is_file():
                    shutil.copyfile(dirs[label] / name, folder / name)
    (tmp / "images" / "reference").mkdir()
    images = {label: [load_png(dirs[label] / image_name(p)) for p in prompts] for label in GATED}
    images["reference"] = [np.asarray(image, dtype=np.uint8) for image in reference]  # PNG keeps uint8 exactly
    for p, image in zip(prompts, images["reference"]):
        save_png(image, tmp / "images" / "reference" / image_name(p))
    np.savez(tmp / "records.npz", **records(images, prompts, backbones))
    manifest = write_manifest(
        tmp,
        {
            "kind": KIND,
            "shard": str(shard),
            **meta,
            "backbones": backbones.record(),
            "prompt_set": {**meta["prompt_set"], "count": len(all_prompts), "ids_sha256": ids_digest(all_prompts)},
            "prompts": [p.id for p in prompts],
            "machine": {"node": platform.node(), "system": platform.system(), "machine": platform.machine()},
        },
    )
    os.replace(tmp, out)
    return manifest


@dataclass
class Merged:
    """Shards merged: their prompts in the set's order, the image folders of each label, the records."""

    shards: list[Path]
    manifest: dict[str, Any]  # the first shard's, less what is per shard
    prompts: list[Prompt]
    dirs: dict[str, Path]  # label → folder of every prompt's file (``reference`` included)
    records: dict[str, np.ndarray]
    seconds: dict[str, dict[str, float]]  # per shard


def read_shard(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = read_manifest(path, what="shard")
    except IntegrityError as e:
        raise ConfigError(str(e)) from None
    if manifest.get("kind") != KIND:
        raise ConfigError(
            f"{path} is not a shard folder (its manifest is a {manifest.get('kind')!r}); give the folders "
            "`sdxl-qdq shard --out` wrote"
        )
    return manifest


def merge(paths: list[Path], prompts: list[Prompt], out: Path) -> Merged:
    """The shards at ``paths`` checked and merged into ``out`` (links, else copies, of their files, in one folder per
    label); ``prompts``: the whole prompt set the judge expects (each shard must hold exactly its share of it)."""
    if not paths:
        raise ConfigError("no shard folders given; pass every shard's folder (sdxl-qdq shard --shard k/N --out DIR)")
    paths = [Path(p) for p in paths]
    manifests = [read_shard(p) for p in paths]
    first, first_path = manifests[0], paths[0]
    for path, m in zip(paths[1:], manifests[1:]):
        for field in SAME:
            if m.get(field) != first.get(field):
                raise ConfigError(
                    f"shard {path} differs from {first_path} in its {field} ({_short(m.get(field))} vs "
                    f"{_short(first.get(field))}): merge shards of one build, prompt set and backbones"
                )
    shards = [Shard.parse(m["shard"]) for m in manifests]
    count = {s.count for s in shards}
    if len(count) > 1:
        raise ConfigError(f"shards of different counts ({', '.join(sorted(map(str, shards)))}): draw all with one N")
    n = count.pop()
    seen: dict[int, Path] = {}
    for path, s in zip(paths, shards):
        if s.index in seen:
            raise ConfigError(f"shard {s} given twice ({seen[s.index]} and {path}): give each shard once")
        seen[s.index] = path
    missing = [k for k in range(1, n + 1) if k not in seen]
    if missing:
        raise ConfigError(
            f"shard {missing[0]}/{n} is missing ({len(missing)} of {n} missing): draw it with "
            f"`sdxl-qdq shard --shard {missing[0]}/{n}` and pass its folder too"
        )
    if first["prompt_set"]["ids_sha256"] != ids_digest(prompts):
        raise ConfigError(
            f"the shards were drawn on another prompt set ({first['prompt_set']['count']} prompts, ids sha256 "
            f"{first['prompt_set']['ids_sha256'][:12]}) than the judge's ({len(prompts)} prompts): judge with "
            "the prompt set they were drawn on (--prompt-set)"
        )
    owner: dict[str, Path] = {}
    for path, m, s in zip(paths, manifests, shards):
        for pid in m["prompts"]:
            if pid in owner:
                raise ConfigError(f"prompt {pid!r} is in two shards ({owner[pid]} and {path}): draw them again")
            owner[pid] = path
        expected = [p.id for p in s.select(prompts)]
        if m["prompts"] != expected:
            raise ConfigError(
                f"shard {path} ({s}) holds {len(m['prompts'])} prompts, not the {len(expected)} that shard {s} "
                "of this prompt set holds: draw it again with this version"
            )
    by_id = {p.id: p for p in prompts}
    loaded = {path: dict(np.load(path / "records.npz", allow_pickle=False)) for path in paths}
    order = sorted(
        ((by_id[pid], path, row) for path, m in zip(paths, manifests) for row, pid in enumerate(m["prompts"])),
        key=lambda t: t[0].index,
    )
    out = Path(out)
    dirs = {}
    for label in (*GATED, "reference"):
        dirs[label] = out / "images" / label
        dirs[label].mkdir(parents=True, exist_ok=True)
    for prompt, path, _ in order:
        for label in (*GATED, "reference"):
            for name in (image_name(prompt), response_name(prompt)):
                src = path / "images" / label / name
                if src.is_file() and not (dirs[label] / name).exists():
                    _link(src, dirs[label] / name)
    merged_records = {key: np.stack([loaded[path][key][row] for _, path, row in order]) for key in loaded[paths[0]]}
    common = {k: v for k, v in first.items() if k not in ("shard", "prompts", "files", "seconds", "machine")}
    return Merged(
        shards=paths,
        manifest=common,
        prompts=[p for p, _, _ in order],
        dirs=dirs,
        records=merged_records,
        seconds={str(s): m.get("seconds", {}) for s, m in zip(shards, manifests)},
    )


def remember_records(merged: Merged, images: dict[str, list[np.ndarray]], backbones: Backbones) -> None:
    """Hand the merged records to the backbones' per-process memory (``remember``), keyed by the merged images, so
    the judge's FID, KID and CMMD read them instead of running the backbones again."""
    for label in EMBEDDED:
        remember("fid", backbones.fid, images[label], merged.records[f"fid/{label}"])
        remember("clip", backbones.clip, images[label], merged.records[f"clip/{label}"])


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def set_metrics(records_: dict[str, np.ndarray], *, first: int | None = None) -> dict[str, Any]:
    """The set metrics of merged records (or of their ``first`` rows: the convergence of a large set), each with its
    95 % jackknife interval (``jackknife_ci``; past 200 prompts in 200 groups): FID and KID×1000 of the FID
    backbone's features, CMMD of the CLIP embeddings, each quantized set's and float@1's against the reference; the
    mean CLIP score (t interval) and the median MSE of each step count."""
    from sdxl_qdq.judge.backbones import fid_from_features
    from sdxl_qdq.judge.checks.cmmd import METRIC as CMMD
    from sdxl_qdq.judge.checks.kid import METRIC as KID
    from sdxl_qdq.judge.metrics import jackknife_ci, mmd2_jackknife, t_quantile

    rows = {k: v[:first] if first else v for k, v in records_.items()}
    n = len(rows["mse/1"])
    out: dict[str, Any] = {"prompts": n, "fid": {}, "kid": {}, "cmmd": {}, "clip_mean": {}, "mse_median": {}}
    for label in SCORED:
        x, ref = rows[f"fid/{label}"], rows["fid/reference"]
        out["fid"][label] = _interval(jackknife_ci(lambda keep, x=x, ref=ref: fid_from_features(x[keep], ref[keep]), n))
        out["kid"][label] = _interval([KID.scale * v for v in mmd2_jackknife(x, ref, KID.kernel)])
        c, cref = rows[f"clip/{label}"], rows["clip/reference"]
        out["cmmd"][label] = _interval([CMMD.scale * v for v in mmd2_jackknife(c, cref, CMMD.kernel)])
        scores = rows[f"clip_score/{label}"]
        half = t_quantile(0.975, n - 1) * float(np.std(scores, ddof=1)) / np.sqrt(n)
        mean = float(np.mean(scores))
        out["clip_mean"][label] = _interval((mean, mean - half, mean + half))
    for k in STEPS:
        out["mse_median"][f"qdq@{k}"] = float(np.median(rows[f"mse/{k}"]))
    return out


def _interval(values: Any) -> dict[str, Any]:
    value, low, high = (float(v) for v in values)
    return {"value": value, "interval": [low, high]}
