"""The quality gate end to end, as data flows: a build's components are drawn (``quant.run.generate``), the
image sets judged (``quant.judge``), a baseline read or written. Used by the pytest plugin and the CLI."""

from __future__ import annotations

from pathlib import Path

from quant.build.stages import Build, recalibrated
from quant.cache import ArtifactCache
from quant.judge.backbones import resolve_backbones
from quant.judge.baseline import (
    BASELINES_DIR,
    baseline_from_evaluation,
    baseline_model_name,
    baseline_path,
    load_baseline,
    write_baseline,
)
from quant.judge.evaluation import (
    NOISE_SEEDS,
    REFERENCE_SEED,
    STEPS,
    evaluate,
    load_coco_reference,
    load_images,
    seed_noise,
)
from quant.judge.gate import Gate
from quant.models.prompts import Prompt, load_prompts
from quant.procs import Progress
from quant.run.generate import Variant, generate
from quant.runtime import QnnOptions, ep_description


def draw(build: Build, variant: Variant, prompts: list[Prompt], *, cache: ArtifactCache, qnn: QnnOptions | None = None,
         progress: Progress | None = None) -> Path:
    """The folder of ``variant``'s images of ``build`` (drawn once, then cached)."""
    return generate(build.components(variant.model), variant, prompts, key=build.image_key(variant.model), cache=cache,
                    qnn=qnn, progress=progress)


def reference_set(build: Build, prompts: list[Prompt], *, cache: ArtifactCache, coco_dir: str | Path | None,
                  progress: Progress) -> tuple[list, str]:
    """The FID reference images and their description: the COCO images (``coco_dir``), the model's own
    rendering of each caption (offline models that have one), else float@1 drawn from other noise."""
    if coco_dir:
        return load_coco_reference(Path(coco_dir), prompts), "COCO 2017 images of the prompts, center-cropped to 256"
    if build.source.reference is not None:
        return build.source.reference([p.text for p in prompts]), "the world's own rendering of each caption"
    folder = draw(build, Variant("float", 1, REFERENCE_SEED), prompts, cache=cache, progress=progress)
    return load_images(folder, prompts), f"float@1 images of the same prompts drawn with seed base {REFERENCE_SEED}"


def prepare_gate(
    build: Build,
    *,
    cache: ArtifactCache,
    ep: str = "cpu",
    qnn: QnnOptions | None = None,
    clip_backbone: str = "auto",
    fid_backbone: str = "auto",
    coco_dir: str | Path | None = None,
    update: bool = False,
    baselines_root: Path = BASELINES_DIR,
    progress: Progress = lambda _: None,
) -> Gate:
    """Draw ``build``'s variants on the 100 prompts (quantized ones on ``ep``), judge them and pair them with
    their baseline (re-derived from measured noise and written first when ``update``)."""
    backbones = resolve_backbones(clip_backbone, fid_backbone, model=build.source.name)
    prompts = load_prompts("all", path=build.source.prompts)
    if not update:
        baseline = load_baseline(build.source.name, backbones, baselines_root, ep=ep)  # fail before drawing anything
    reference, described = reference_set(build, prompts, cache=cache, coco_dir=coco_dir, progress=progress)
    variants = [Variant("float", 1), Variant("qdq", 1, ep=ep), Variant("float", 2), Variant("qdq", 2, ep=ep)]
    dirs = {v.label.split("[")[0]: draw(build, v, prompts, cache=cache, qnn=qnn, progress=progress) for v in variants}
    ev = evaluate(model=baseline_model_name(build.source.name), recipe=build.recipe_name, prompts=prompts, backbones=backbones,
                  image_dirs=dirs, reference_images=reference, reference_name=described, ep=ep,
                  ep_detail=ep_description(ep, qnn), progress=progress)
    if update:
        recal = recalibrated(build, cache=cache)
        ev.noise = seed_noise(
            ev,
            recalibrated={k: draw(recal, Variant("qdq", k, ep=ep), prompts, cache=cache, qnn=qnn, progress=progress) for k in STEPS},
            float1_seeds={s: draw(build, Variant("float", 1, s), prompts, cache=cache, progress=progress) for s in NOISE_SEEDS},
            float2_other_seed=draw(build, Variant("float", 2, NOISE_SEEDS[0]), prompts, cache=cache, progress=progress),
            reference_images=reference,
        )
        baseline = baseline_from_evaluation(ev)
        write_baseline(baseline, baseline_path(build.source.name, backbones, baselines_root, ep=ep))
    return Gate(ev, baseline)
