"""Image generation for the gate: every prompt × variant, saved as PNG under names made safe from the prompt.

A variant is (components, steps, seed base, EP): ``float@1`` is the float model at 1 step, ``qdq@2`` the
QDQ model at 2 steps, ``float@1~s1`` the float model drawn with another seed base (the FID reference set
of an offline model, and the seed-to-seed noise that tolerances are derived from).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.cache import ArtifactCache, package_versions
from sdxl_qdq.models.prompts import Prompt, slugify
from sdxl_qdq.procs import Meter
from sdxl_qdq.run.pipeline import ComponentSet, OrtSDXLPipeline, prompt_seed
from sdxl_qdq.runtime import QnnOptions
from sdxl_qdq.stage_table import STAGES


@dataclass(frozen=True)
class Variant:
    model: str  # "float" or "qdq"
    steps: int
    seed_base: int = 0
    ep: str = "cpu"

    @property
    def label(self) -> str:
        suffix = f"~s{self.seed_base}" if self.seed_base else ""
        return f"{self.model}@{self.steps}{suffix}" + ("" if self.ep == "cpu" else f"[{self.ep}]")


def image_name(prompt: Prompt) -> str:
    """``<index>-<slug>.png``: the prompt never reaches the file system unsanitized."""
    return f"{prompt.index:03d}-{slugify(prompt.text)}.png"


def save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    tmp = path.with_suffix(".tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)


def load_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def generate(
    components: ComponentSet,
    variant: Variant,
    prompts: list[Prompt],
    *,
    key: dict[str, Any],
    cache: ArtifactCache,
    qnn: QnnOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Folder of ``variant``'s images of ``components`` for ``prompts`` (cached; drawn once). ``key`` identifies
    the components (the keys of the artifacts they were built from)."""
    return generate_together(components, [variant], prompts, key=key, cache=cache, qnn=qnn, progress=progress)[variant]


def _inputs(key: dict[str, Any], variant: Variant, prompts: list[Prompt], qnn: QnnOptions | None) -> dict[str, Any]:
    return {
        **key,
        "variant": variant.label,
        "qnn": qnn.soc_model if (variant.ep == "qnn" and qnn) else None,
        "prompts": [[p.index, p.text] for p in prompts],
        "revision": STAGES["images"].revision,
        "versions": package_versions(),
    }


def generate_together(
    components: ComponentSet,
    variants: list[Variant],
    prompts: list[Prompt],
    *,
    key: dict[str, Any],
    cache: ArtifactCache,
    qnn: QnnOptions | None = None,
    progress: Callable[[str], None] | None = None,
    timing: dict[str, Any] | None = None,
) -> dict[Variant, Path]:
    """The image folders of ``variants`` of the same components, seed base and EP (each its own cached artifact, the
    same images as drawn alone), drawn in one pass over the prompts: every distinct model call runs once per prompt
    (the text encodings are shared by every step count; the 1-step image's UNet call is the 2-step one's first).
    ``timing``: filled, when they are drawn, with the sessions' load time and each prompt's seconds."""
    if len({(v.model, v.seed_base, v.ep) for v in variants}) > 1:
        raise ValueError(f"variants drawn together share components, seed base and EP: {[v.label for v in variants]}")
    folders = {v: cache.path("images", _inputs(key, v, prompts, qnn)) for v in variants}
    missing = [v for v in variants if not (folders[v].is_dir() and cache.check(folders[v]) is None)]
    if not missing:
        return {v: cache.get_or_build("images", _inputs(key, v, prompts, qnn), _never_built) for v in variants}
    with cache.scratch("drawing") as drawn:  # a killed run's drawings are swept by the next one
        start = time.perf_counter()
        pipe = OrtSDXLPipeline(components, ep=missing[0].ep, qnn=qnn, reuse=True)
        timing = timing if timing is not None else {}
        timing.update(sessions_s=round(time.perf_counter() - start, 2), prompt_s=[])
        meter = Meter(" + ".join(v.label for v in missing) + " images", len(prompts), progress)
        for prompt in prompts:
            start = time.perf_counter()
            for v in missing:
                image = pipe(prompt.text, steps=v.steps, seed=prompt_seed(prompt.text, v.seed_base))
                (drawn / v.label).mkdir(exist_ok=True)
                save_png(image, drawn / v.label / image_name(prompt))
            pipe.forget()  # a prompt's outputs are never reused by the next prompt
            timing["prompt_s"].append(round(time.perf_counter() - start, 2))
            meter.step()
        timing["executed"] = dict(pipe.executed)
        return {
            v: cache.get_or_build(
                "images", _inputs(key, v, prompts, qnn), lambda out, v=v: _move_images(drawn / v.label, out)
            )
            for v in variants
        }


def _never_built(out: Path) -> None:
    raise RuntimeError(f"{out}: images checked present a moment ago are gone; run again")


def _move_images(src: Path, out: Path) -> None:
    for image in sorted(src.iterdir()):
        image.replace(out / image.name)
