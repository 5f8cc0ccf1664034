"""Image generation for the gate: every prompt × variant, saved as PNG under names made safe from the prompt.

A variant is (components, steps, seed base, EP): ``float@1`` is the float model at 1 step, ``qdq@2`` the
QDQ model at 2 steps, ``float@1~s1`` the float model drawn with another seed base (the FID reference set
of an offline model, and the seed-to-seed noise that tolerances are derived from).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quant.cache import ArtifactCache, package_versions
from quant.models.prompts import Prompt, slugify
from quant.procs import Meter
from quant.run.pipeline import ComponentSet, OrtSDXLPipeline, prompt_seed
from quant.runtime import QnnOptions

GENERATE_REVISION = 1


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
    inputs = {
        **key,
        "variant": variant.label,
        "qnn": qnn.soc_model if (variant.ep == "qnn" and qnn) else None,
        "prompts": [[p.index, p.text] for p in prompts],
        "revision": GENERATE_REVISION,
        "versions": package_versions(),
    }

    def run(out: Path) -> None:
        pipe = OrtSDXLPipeline(components, ep=variant.ep, qnn=qnn)
        meter = Meter(f"{variant.label} images", len(prompts), progress)
        for prompt in prompts:
            image = pipe(prompt.text, steps=variant.steps, seed=prompt_seed(prompt.text, variant.seed_base))
            save_png(image, out / image_name(prompt))
            meter.step()

    return cache.get_or_build("images", inputs, run)
