"""Image generation for the gate: every prompt × variant, saved as PNG under names made safe from the prompt.

Beside each image of a gated set (seed base 0), the UNet's
response to its prompt at the first step (``<name>.response.npy``: the text-conditioning check's input).

A variant is (components, steps, seed base, EP): ``float@1`` is the float model at 1 step, ``qdq@2`` the
QDQ model at 2 steps, ``float@1~s1`` the float model drawn with another seed base (the FID reference set
of an offline model, and the seed-to-seed noise that tolerances are derived from).
"""

from __future__ import annotations

import os
import platform
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


def response_name(prompt: Prompt) -> str:
    """``<index>-<slug>.response.npy``: the prompt's text response (``OrtSDXLPipeline.text_response``) beside its
    image."""
    return f"{prompt.index:03d}-{slugify(prompt.text)}.response.npy"


def save_response(response: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        np.save(f, np.asarray(response, dtype=np.float32))
    tmp.replace(path)


def load_response(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


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


def _inputs(
    key: dict[str, Any], variant: Variant, prompts: list[Prompt], qnn: QnnOptions | None, threads: int | None = None
) -> dict[str, Any]:
    """The images' cache key. ``threads`` only when set: the CPU EP's sums depend on its thread count (qdq images
    drawn with 1 thread and with ORT's default differ by up to 4 levels; canary, 20 prompts), so a set drawn with a
    chosen count is not the default set."""
    more = {} if threads is None else {"threads": threads}
    return more | {
        **key,
        "variant": variant.label,
        "qnn": qnn.soc_model if (variant.ep == "qnn" and qnn) else None,
        "prompts": [[p.index, p.text] + ([] if p.seed is None else [p.seed]) for p in prompts],
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
    workers: int | None = None,
    threads: int | None = None,
) -> dict[Variant, Path]:
    """The image folders of ``variants`` of the same components, seed base and EP (each its own cached artifact, the
    same images as drawn alone), drawn in one pass over the prompts: every distinct model call runs once per prompt
    (the text encodings are shared by every step count; the 1-step image's UNet call is the 2-step one's first).
    ``timing``: filled, when they are drawn, with the sessions' load time and each prompt's seconds. ``workers``: how
    many processes draw (default ``draw_workers``: several only on the HTP simulator). ``threads``: the CPU EP's
    intra-op threads when one process draws (default: ONNX Runtime's, every core; a shard beside others passes its
    share)."""
    if len({(v.model, v.seed_base, v.ep) for v in variants}) > 1:
        raise ValueError(f"variants drawn together share components, seed base and EP: {[v.label for v in variants]}")
    folders = {v: cache.path("images", _inputs(key, v, prompts, qnn, threads)) for v in variants}
    missing = [v for v in variants if not (folders[v].is_dir() and cache.check(folders[v]) is None)]
    if not missing:
        return {v: cache.get_or_build("images", _inputs(key, v, prompts, qnn, threads), _never_built) for v in variants}
    workers = draw_workers(missing[0].ep, len(prompts)) if workers is None else max(1, min(workers, len(prompts)))
    with cache.scratch("drawing") as drawn:  # a killed run's drawings are swept by the next one
        meter = Meter(" + ".join(v.label for v in missing) + " images", len(prompts), progress)
        if workers == 1:
            drew = _draw(components, missing, prompts, qnn, drawn, step=meter.step, threads=threads)
        else:
            drew = _draw_in_processes(components, missing, prompts, qnn, drawn, workers, meter)
        if timing is not None:
            timing.update(drew, workers=workers)
        return {
            v: cache.get_or_build(
                "images", _inputs(key, v, prompts, qnn, threads), lambda out, v=v: _move_images(drawn / v.label, out)
            )
            for v in variants
        }


def draw_workers(ep: str, prompts: int) -> int:
    """How many processes draw at once: on the QNN EP of an x86-64 host (HTP's simulator, CPU-bound and
    single-threaded for most of a call) one per core, at most 4; else one (ORT's CPU EP already uses every core, and
    a device has one NPU)."""
    simulated = ep == "qnn" and platform.machine().lower() in ("x86_64", "amd64")
    return max(1, min(os.cpu_count() or 1, 4, prompts)) if simulated else 1


def _draw(
    components: ComponentSet,
    variants: list[Variant],
    prompts: list[Prompt],
    qnn: QnnOptions | None,
    drawn: Path,
    *,
    step: Callable[[], None] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Draw ``variants`` of ``prompts`` into ``drawn/<label>/`` with one pipeline (a drawing process's whole work).
    Returns the sessions' load time, each prompt's seconds (by prompt index) and the model runs."""
    start = time.perf_counter()
    pipe = OrtSDXLPipeline(components, ep=variants[0].ep, qnn=qnn, reuse=True, threads=threads)
    sessions_s, prompt_s = round(time.perf_counter() - start, 2), {}
    for prompt in prompts:
        start = time.perf_counter()
        for v in variants:
            image = pipe(prompt.text, steps=v.steps, seed=prompt_seed(prompt.seed_key, v.seed_base))
            (drawn / v.label).mkdir(exist_ok=True)
            save_png(image, drawn / v.label / image_name(prompt))
        if variants[0].seed_base == 0:  # the gated sets (not the noise sets): the UNet's response to the prompt
            response = pipe.text_response(prompt.text, seed=prompt_seed(prompt.seed_key))
            for v in variants:
                save_response(response, drawn / v.label / response_name(prompt))
        pipe.forget()  # a prompt's outputs are never reused by the next prompt
        prompt_s[prompt.index] = round(time.perf_counter() - start, 2)
        if step is not None:
            step()
    return {"sessions_s": sessions_s, "prompt_s": [prompt_s[p.index] for p in prompts], "executed": dict(pipe.executed)}


def _draw_in_processes(
    components: ComponentSet,
    variants: list[Variant],
    prompts: list[Prompt],
    qnn: QnnOptions | None,
    drawn: Path,
    workers: int,
    meter: Meter,
) -> dict[str, Any]:
    """``_draw`` over ``workers`` spawned processes (concurrent.futures), prompt i to process i mod ``workers``:
    each holds its own sessions (many QNN sessions in one process can crash it). A prompt's image depends on its
    text and seed only, so the images are those one process draws. Progress: the prompts whose every image is
    saved."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    shards = [prompts[i::workers] for i in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(_draw, components, variants, shard, qnn, drawn, threads=threads) for shard in shards}
        futures, counted = list(pending), 0
        while pending:
            finished, pending = wait(pending, timeout=2.0, return_when=FIRST_EXCEPTION)
            try:
                for f in finished:
                    f.result()  # a process's error, raised here
            except BrokenProcessPool as e:
                raise RuntimeError(
                    f"a drawing process died ({e}); {len(prompts)} prompts were split over {workers}"
                ) from e
            saved = [
                {p.name for p in (drawn / v.label).glob("*.png")} if (drawn / v.label).is_dir() else set()
                for v in variants
            ]
            complete = len(set.intersection(*saved))
            if complete > counted:
                meter.step(complete - counted)
                counted = complete
        results = [f.result() for f in futures]
    order = {p.index: n for n, p in enumerate(prompts)}
    seconds = [0.0] * len(prompts)
    for shard, r in zip(shards, results):
        for p, s in zip(shard, r["prompt_s"]):
            seconds[order[p.index]] = s
    executed = {c: sum(r["executed"][c] for r in results) for c in results[0]["executed"]}
    return {"sessions_s": max(r["sessions_s"] for r in results), "prompt_s": seconds, "executed": executed}


def _never_built(out: Path) -> None:
    raise RuntimeError(f"{out}: images checked present a moment ago are gone; run again")


def _move_images(src: Path, out: Path) -> None:
    for image in sorted(src.iterdir()):
        image.replace(out / image.name)
