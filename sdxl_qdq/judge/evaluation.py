"""Metrics of finished image sets: per-image MSE of ``qdq@k`` vs ``float@k`` (the study's definition) and PSNR,
per-image CLIP score, FID of each variant against a reference set, and the noise that tolerances are derived
from. Nothing here draws an image: the sets come from ``sdxl_qdq.run.generate`` (through ``sdxl_qdq.flows``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.components import STEPS
from sdxl_qdq.errors import ConfigError
from sdxl_qdq.judge.backbones import Backbones, clip_scores
from sdxl_qdq.judge.backbones import fids as fid_sets
from sdxl_qdq.judge.checks import NoiseSets, registry
from sdxl_qdq.judge.metrics import image_mse
from sdxl_qdq.models.prompts import PROMPTS_COCO, Prompt
from sdxl_qdq.run.generate import image_name, load_png

VARIANTS = ("float@1", "qdq@1", "float@2", "qdq@2")
NOISE_SEEDS = (2, 3, 4)  # seed bases of extra float@1 sets that measure seed-to-seed noise (baseline updates)
REFERENCE_SEED = 1  # seed base of the offline FID reference set (float@1 drawn from other noise)
COCO_REFERENCE = "coco2017-crop256"  # the real model's FID reference: the prompts' COCO images, center-cropped to 256


@dataclass
class Evaluation:
    model: str
    backbones: Backbones
    prompts: list[Prompt]
    ep: str
    recipe: str
    image_dirs: dict[str, Path]
    mse: dict[int, list[float]]
    clip: dict[str, list[float]]
    fid: dict[str, float]
    fid_reference: str
    fid_reference_id: str = ""
    noise: dict[str, Any] | None = None
    ep_detail: str = ""  # what ran the quantized variants, in words (the float ones always run on the CPU EP)
    measured: dict[str, Any] = field(default_factory=dict)  # what registered metrics measure beyond MSE, CLIP, FID
    prompt_set: str = ""  # the prompt file, in words

    def image(self, label: str, prompt: Prompt) -> Path:
        return self.image_dirs[label] / image_name(prompt)

    def clip_delta(self, steps: int) -> np.ndarray:
        return np.asarray(self.clip[f"qdq@{steps}"]) - np.asarray(self.clip["float@1"])


def load_images(folder: Path, prompts: list[Prompt]) -> list[np.ndarray]:
    """The images of ``prompts`` in a drawn set's folder, in prompt order."""
    return [load_png(folder / image_name(p)) for p in prompts]


def evaluate(
    *,
    model: str,
    recipe: str,
    prompts: list[Prompt],
    backbones: Backbones,
    image_dirs: dict[str, Path],
    reference_images: list[np.ndarray],
    reference_name: str,
    reference_id: str,
    ep: str = "cpu",
    ep_detail: str = "",
    progress: Any = lambda _: None,
    prompt_set: str = "",
    images: dict[str, list[np.ndarray]] | None = None,
    clip: dict[str, list[float]] | None = None,
) -> Evaluation:
    """MSE, CLIP and FID of the drawn ``VARIANTS`` (``image_dirs``: label → folder) against ``reference_images``, and
    whatever else a registered metric (``sdxl_qdq.judge.checks``) measures. ``images`` (label → the sets, loaded
    already) and ``clip`` (label → per-image CLIP scores: merged shards' records) save loading and scoring again."""
    images = images or {label: load_images(image_dirs[label], prompts) for label in VARIANTS}
    mse = {k: [image_mse(f, q) for f, q in zip(images[f"float@{k}"], images[f"qdq@{k}"])] for k in STEPS}
    texts = [p.text for p in prompts]
    if clip is None:
        progress(f"CLIP scores with {backbones.clip}")
        clip = {label: clip_scores(images[label], texts, backbones.clip) for label in ("float@1", "qdq@1", "qdq@2")}
    progress(f"FID with {backbones.fid}")
    fids = fid_sets({label: images[label] for label in ("float@1", "qdq@1", "qdq@2")}, reference_images, backbones.fid)
    measured = {}
    for metric in registry():
        value = metric.measure(images, prompts, backbones, progress, dict(image_dirs), reference_images)
        if value is not None:
            measured[metric.name] = value
    return Evaluation(
        model=model,
        backbones=backbones,
        prompts=prompts,
        ep=ep,
        recipe=recipe,
        image_dirs=dict(image_dirs),
        mse=mse,
        clip=clip,
        fid=fids,
        fid_reference=reference_name,
        fid_reference_id=reference_id,
        ep_detail=ep_detail,
        measured=measured,
        prompt_set=prompt_set,
    )


def seed_noise(
    ev: Evaluation,
    *,
    recalibrated: dict[int, Path],
    float1_seeds: dict[int, Path],
    float2_other_seed: Path,
    reference_images: list[np.ndarray],
) -> dict[str, Any]:
    """What a user cannot call a regression: the float model's seed-to-seed variation (``float1_seeds``: seed
    base → float@1 set; ``float2_other_seed``: float@2 of the first of them), and how much the quantization
    error moves when the same recipe is calibrated on other, equally valid prompts (``recalibrated``: steps →
    its qdq@k set)."""
    prompts = ev.prompts
    sets = {seed: load_images(d, prompts) for seed, d in float1_seeds.items()}
    noise_sets = NoiseSets(
        float_sets={k: load_images(ev.image_dirs[f"float@{k}"], prompts) for k in STEPS},
        seed_sets=sets,
        float2_other_seed=load_images(float2_other_seed, prompts),
        recalibrated={k: load_images(d, prompts) for k, d in recalibrated.items()},
        reference_images=reference_images,
        recalibrated_dirs=dict(recalibrated),
    )
    noise: dict[str, Any] = {"seeds": list(float1_seeds)}
    for metric in registry():
        noise.update(metric.noise(ev, noise_sets))
    return noise


def check_coco_dir(coco_dir: Path) -> None:
    """Up front, before anything is built: ``coco_dir`` is a folder holding the image of every COCO prompt."""
    coco_dir = Path(coco_dir)
    if not coco_dir.is_dir():
        raise ConfigError(
            f"--coco-dir {coco_dir}: no such folder; `sdxl-qdq coco-images {coco_dir}` downloads the "
            "100 COCO 2017 images of the prompts into it"
        )
    rows = [json.loads(line) for line in PROMPTS_COCO.read_text().splitlines() if line.strip()]
    missing = [row["file_name"] for row in rows if not (coco_dir / row["file_name"]).is_file()]
    if missing:
        raise ConfigError(
            f"--coco-dir {coco_dir}: {len(missing)} of the {len(rows)} COCO images of the prompts are "
            f"missing (first: {missing[0]}); `sdxl-qdq coco-images {coco_dir}` completes the folder"
        )


def load_coco_reference(coco_dir: Path, prompts: list[Prompt], *, size: int = 256) -> list[np.ndarray]:
    """The COCO images of ``prompts`` (by file name from the prompt fixture), center-cropped and resized to ``size``."""
    from PIL import Image

    check_coco_dir(coco_dir)
    rows = [json.loads(line) for line in PROMPTS_COCO.read_text().splitlines() if line.strip()]
    images = []
    for prompt in prompts:
        path = Path(coco_dir) / rows[prompt.index]["file_name"]
        with Image.open(path) as opened:
            im = opened.convert("RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            images.append(np.asarray(im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)))
    return images


def download_coco_images(out: Path, *, progress: Any = lambda _: None) -> int:
    """Download the COCO 2017 train images of the 100 prompts (``coco_url`` of the prompt fixture) into ``out``,
    each written aside and renamed when complete; files already there are kept. Returns how many are there."""
    import urllib.request

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in PROMPTS_COCO.read_text().splitlines() if line.strip()]
    for n, row in enumerate(rows):
        dest = out / row["file_name"]
        if not dest.is_file():
            tmp = dest.with_name(f".{dest.name}.part")
            try:
                with urllib.request.urlopen(row["coco_url"], timeout=60) as response:
                    tmp.write_bytes(response.read())
            except OSError as e:
                raise ConfigError(
                    f"could not download {row['coco_url']} ({e}); on a machine with network, run "
                    f"`sdxl-qdq coco-images {out}` again (it keeps what it has)"
                ) from e
            tmp.replace(dest)
        if (n + 1) % 25 == 0:
            progress(f"COCO images: {n + 1}/{len(rows)}")
    return sum((out / r["file_name"]).is_file() for r in rows)
