"""The quality gate end to end, as data flows: a build's components are drawn (``sdxl_qdq.run.generate``), the
image sets judged (``sdxl_qdq.judge``), a baseline read or written. Used by the pytest plugin and the CLI."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from sdxl_qdq.cache import ArtifactCache, package_versions
from sdxl_qdq.convert.stages import Build, recalibrated
from sdxl_qdq.device.night import DeviceResults
from sdxl_qdq.errors import ConfigError
from sdxl_qdq.judge.backbones import resolve_backbones
from sdxl_qdq.judge.baseline import (
    BASELINES_DIR,
    baseline_from_evaluation,
    baseline_model_name,
    baseline_path,
    load_baseline,
    write_baseline,
)
from sdxl_qdq.judge.compare import Difference, compare
from sdxl_qdq.judge.evaluation import (
    COCO_REFERENCE,
    NOISE_SEEDS,
    REFERENCE_SEED,
    STEPS,
    VARIANTS,
    Evaluation,
    evaluate,
    load_coco_reference,
    load_images,
    seed_noise,
)
from sdxl_qdq.judge.gate import Gate
from sdxl_qdq.judge.shards import GATED, Merged, merge, remember_records, write_shard
from sdxl_qdq.models.prompts import Prompt, Shard, load_prompts
from sdxl_qdq.procs import Progress
from sdxl_qdq.run.generate import Variant, generate, generate_together
from sdxl_qdq.runtime import QnnOptions, ep_description


def draw(
    build: Build,
    variant: Variant,
    prompts: list[Prompt],
    *,
    cache: ArtifactCache,
    qnn: QnnOptions | None = None,
    progress: Progress | None = None,
) -> Path:
    """The folder of ``variant``'s images of ``build`` (drawn once, then cached)."""
    return generate(
        build.components(variant.model),
        variant,
        prompts,
        key=build.image_key(variant.model),
        cache=cache,
        qnn=qnn,
        progress=progress,
    )


def draw_together(
    build: Build,
    variants: list[Variant],
    prompts: list[Prompt],
    *,
    cache: ArtifactCache,
    qnn: QnnOptions | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> dict[str, Path]:
    """Image folders of ``variants`` by label (without the EP), each group of the same components, seed base and EP
    drawn in one pass (every distinct model call once per prompt; ``sdxl_qdq.run.generate.generate_together``)."""
    groups: dict[tuple, list[Variant]] = {}
    for v in variants:
        groups.setdefault((v.model, v.seed_base, v.ep), []).append(v)
    folders: dict[Variant, Path] = {}
    for (model, _, _), group in groups.items():
        folders.update(
            generate_together(
                build.components(model),
                group,
                prompts,
                key=build.image_key(model),
                cache=cache,
                qnn=qnn,
                progress=progress,
                threads=threads,
            )
        )
    return {v.label.split("[")[0]: folders[v] for v in variants}


OWN_PROMPTS = "the model's own prompts"


def prompt_set_name(build: Build) -> str:
    """The prompt set of ``build``, in words (its file, and its tag or the model's own)."""
    return f"{Path(build.source.prompts).name} ({build.source.prompt_set or OWN_PROMPTS})"


def build_keys(build: Build) -> dict:
    """``build``'s keys as JSON reads them back (what a shard's manifest holds, and what the merge compares)."""
    return json.loads(json.dumps(build.keys))


def _evaluate(
    build: Build,
    prompts: list[Prompt],
    backbones,
    dirs: dict[str, Path],
    reference: tuple[list, str, str],
    *,
    ep: str,
    detail: str,
    progress: Progress,
) -> Evaluation:
    """``evaluate`` of ``build``'s image folders ``dirs`` (label → folder); ``reference``: the FID reference images,
    their description and id (``reference_set``, ``reference_id``)."""
    images, described, ref_id = reference
    return evaluate(
        model=baseline_model_name(build.source.name),
        recipe=build.recipe_name,
        prompts=prompts,
        backbones=backbones,
        image_dirs=dirs,
        reference_images=images,
        reference_name=described,
        reference_id=ref_id,
        ep=ep,
        ep_detail=detail,
        progress=progress,
        prompt_set=prompt_set_name(build),
    )


def reference_id(build: Build, coco_dir: str | Path | None) -> str:
    """The name of the FID reference set a run uses (part of its baseline's key)."""
    if coco_dir:
        return COCO_REFERENCE
    return "world-render" if build.source.reference is not None else f"float1-seed{REFERENCE_SEED}"


def reference_set(
    build: Build, prompts: list[Prompt], *, cache: ArtifactCache, coco_dir: str | Path | None, progress: Progress
) -> tuple[list, str]:
    """The FID reference images and their description: the COCO images (``coco_dir``), the model's own
    rendering of each caption (offline models that have one), else float@1 drawn from other noise."""
    if coco_dir:
        return load_coco_reference(Path(coco_dir), prompts), "COCO 2017 images of the prompts, center-cropped to 256"
    if build.source.reference is not None:
        return build.source.reference([p.text for p in prompts]), "the world's own rendering of each caption"
    folder = draw(build, Variant("float", 1, REFERENCE_SEED), prompts, cache=cache, progress=progress)
    return load_images(folder, prompts), f"float@1 images of the same prompts drawn with seed base {REFERENCE_SEED}"


def device_results(
    path: str | Path, build: Build, *, ep: str, qnn: QnnOptions | None, prompts: list[Prompt]
) -> DeviceResults:
    """The device's results for ``build``, verified (manifest digests) and matched to this build, chip and prompts."""
    results = DeviceResults.load(path)
    if results.manifest["ep"] != ep:
        raise ConfigError(
            f"device results {path} were drawn on the {results.manifest['ep']} EP; judge them with "
            f"--ep {results.manifest['ep']} (against the baseline made on that EP), not --ep {ep}"
        )
    results.check_matches(build.keys, model=build.source.name, soc=(qnn or QnnOptions()).soc_model)
    missing = [p.id for p in prompts if p.id not in results.manifest["prompts"]]
    if missing:
        raise ConfigError(
            f"device results {path} hold {len(results.manifest['prompts'])} prompts; the gate needs all "
            f"{len(prompts)} (missing {missing[:3]}…): run `sdxl-qdq device-run` without --prompts"
        )
    return results


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
    from_device: str | Path | None = None,
    baseline_ep: str | None = None,
    baselines_root: Path = BASELINES_DIR,
    allow_download: bool = False,
    from_shards: list[str | Path] | None = None,
    merged_dir: str | Path | None = None,
    progress: Progress = lambda _: None,
) -> Gate:
    """Draw ``build``'s variants on the 100 prompts (quantized ones on ``ep``), judge them and pair them with
    their baseline (re-derived from measured noise and written first when ``update``). ``from_device``: a device
    results folder whose qdq@1 and qdq@2 images, drawn on the NPU, are judged instead of drawing them here.
    ``baseline_ep``: gate by the baseline made on another EP than ``ep`` (an explicit cross-EP rule, stated in
    the report; by default a run is gated by its own EP's baseline only). ``allow_download``: fetch the real backbones'
    weights when ``auto`` would otherwise fall back to a proxy. ``from_shards``: shard folders (``run_shard``) merged
    into ``merged_dir`` and judged as one run: nothing is drawn here, the backbones do not run again."""
    backbones = resolve_backbones(clip_backbone, fid_backbone, model=build.source.name, allow_download=allow_download)
    for line in backbones.why:
        progress(line)
    prompts = load_prompts("all", path=build.source.prompts)
    if from_shards and (update or from_device is not None):
        raise ConfigError(
            "--qdq-shards judges shards drawn elsewhere: it takes neither --qdq-update-baselines (the baseline's "
            "noise sets are drawn here) nor --qdq-from-device (draw device shards into the shard folders instead)"
        )
    if update and from_device is not None:
        raise ConfigError(
            "--update-baselines derives tolerances from images this host draws (the re-calibrated model "
            "too); it cannot take them --from-device: make the baseline here with --ep qnn"
        )
    if update and baseline_ep not in (None, ep):
        raise ConfigError(
            f"--update-baselines writes the baseline of the EP that drew the images ({ep}); drop "
            f"--baseline-ep {baseline_ep}"
        )
    ref_id = reference_id(build, coco_dir)
    if not update:  # fail before drawing anything
        baseline = load_baseline(
            build.source.name,
            backbones,
            baselines_root,
            ep=baseline_ep or ep,
            reference=ref_id,
            prompts=prompts,
            prompt_set=build.source.prompt_set,
        )
    if from_shards:
        if merged_dir is None:  # one per session (xdist workers each merge): links to the shards' files, not copies
            import tempfile

            (cache.root / "merged-shards").mkdir(parents=True, exist_ok=True)
            merged_dir = tempfile.mkdtemp(prefix="merged-", dir=cache.root / "merged-shards")
        merged = merge_shards(build, list(from_shards), merged_dir, backbones=backbones)
        if merged.manifest["ep"] != ep or merged.manifest["reference"]["id"] != ref_id:
            raise ConfigError(
                f"the shards were drawn on the {merged.manifest['ep']} EP with FID reference "
                f"{merged.manifest['reference']['id']}; judge them with --qdq-ep {merged.manifest['ep']} (and the same "
                f"--qdq-coco-dir), not --qdq-ep {ep} with reference {ref_id}"
            )
        return Gate(evaluate_merged(build, merged, backbones, progress=progress), baseline)
    reference, described = reference_set(build, prompts, cache=cache, coco_dir=coco_dir, progress=progress)
    variants = [Variant("float", 1), Variant("float", 2)]
    detail = ep_description(ep, qnn)
    if from_device is None:
        variants += [Variant("qdq", 1, ep=ep), Variant("qdq", 2, ep=ep)]
    dirs = draw_together(build, variants, prompts, cache=cache, qnn=qnn, progress=progress)
    if from_device is not None:
        results = device_results(from_device, build, ep=ep, qnn=qnn, prompts=prompts)
        dirs.update(results.images_by_label())
        detail = results.describe()
    if baseline_ep not in (None, ep):
        detail += f"; gated by the {baseline_ep}-EP baseline by explicit request (--baseline-ep {baseline_ep})"
    ev = _evaluate(
        build, prompts, backbones, dirs, (reference, described, ref_id), ep=ep, detail=detail, progress=progress
    )
    if update:
        recal = recalibrated(build, cache=cache)
        noise = draw_together(
            build,
            [*(Variant("float", 1, s) for s in NOISE_SEEDS), Variant("float", 2, NOISE_SEEDS[0])],
            prompts,
            cache=cache,
            progress=progress,
        )
        ev.noise = seed_noise(
            ev,
            recalibrated=dict(
                zip(
                    STEPS,
                    draw_together(
                        recal,
                        [Variant("qdq", k, ep=ep) for k in STEPS],
                        prompts,
                        cache=cache,
                        qnn=qnn,
                        progress=progress,
                    ).values(),
                )
            ),
            float1_seeds={s: noise[f"float@1~s{s}"] for s in NOISE_SEEDS},
            float2_other_seed=noise[f"float@2~s{NOISE_SEEDS[0]}"],
            reference_images=reference,
        )
        baseline = baseline_from_evaluation(ev)
        path = baseline_path(
            build.source.name, backbones, baselines_root, ep=ep, reference=ref_id, prompt_set=build.source.prompt_set
        )
        write_baseline(baseline, path)
    return Gate(ev, baseline)


def evaluate_build(
    build: Build,
    *,
    cache: ArtifactCache,
    ep: str = "cpu",
    qnn: QnnOptions | None = None,
    clip_backbone: str = "auto",
    fid_backbone: str = "auto",
    coco_dir: str | Path | None = None,
    progress: Progress = lambda _: None,
) -> tuple[Evaluation, list]:
    """``build``'s four variants drawn on its 100 prompts (quantized ones on ``ep``) and judged, with no baseline;
    and the FID reference images."""
    backbones = resolve_backbones(clip_backbone, fid_backbone, model=build.source.name)
    prompts = load_prompts("all", path=build.source.prompts)
    reference, described = reference_set(build, prompts, cache=cache, coco_dir=coco_dir, progress=progress)
    variants = [Variant("float", 1), Variant("float", 2), Variant("qdq", 1, ep=ep), Variant("qdq", 2, ep=ep)]
    dirs = draw_together(build, variants, prompts, cache=cache, qnn=qnn, progress=progress)
    ref = (reference, described, reference_id(build, coco_dir))
    ev = _evaluate(build, prompts, backbones, dirs, ref, ep=ep, detail=ep_description(ep, qnn), progress=progress)
    return ev, reference


def compare_builds(
    a: Build,
    b: Build,
    *,
    cache: ArtifactCache,
    ep: str = "cpu",
    qnn: QnnOptions | None = None,
    clip_backbone: str = "auto",
    fid_backbone: str = "auto",
    coco_dir: str | Path | None = None,
    progress: Progress = lambda _: None,
) -> tuple[Evaluation, Evaluation, list[Difference]]:
    """Two builds of one model (two recipes) on the same prompts, noise and backbones: B against A per metric."""
    if a.source.name != b.source.name:
        raise ConfigError(f"compare needs two recipes of one model, got {a.source.name!r} and {b.source.name!r}")
    options = dict(
        cache=cache,
        ep=ep,
        qnn=qnn,
        clip_backbone=clip_backbone,
        fid_backbone=fid_backbone,
        coco_dir=coco_dir,
        progress=progress,
    )
    ev_a, reference = evaluate_build(a, **options)
    ev_b, _ = evaluate_build(b, **options)
    return ev_a, ev_b, compare(ev_a, ev_b, reference)


def judge_subset(
    build: Build,
    from_device: str | Path,
    *,
    cache: ArtifactCache,
    coco_dir: str | Path | None = None,
    clip_backbone: str = "auto",
    fid_backbone: str = "auto",
    progress: Progress = lambda _: None,
) -> dict:
    """The judge's own work on the prompts a device drew (fewer than a baseline's 100: no verdict): the host's float
    images of those prompts, then MSE, CLIP and FID of the device's images; each part timed (seconds)."""
    import time

    results = DeviceResults.load(from_device)
    ep = results.manifest["ep"]
    results.check_matches(build.keys, model=build.source.name, soc=results.manifest["soc"])
    wanted = set(results.manifest["prompts"])
    prompts = [p for p in load_prompts("all", path=build.source.prompts) if p.id in wanted]
    backbones = resolve_backbones(clip_backbone, fid_backbone, model=build.source.name)
    for line in backbones.why:
        progress(line)
    seconds = {}
    t = time.perf_counter()
    timing: dict = {}
    dirs = {
        f"float@{k}": folder
        for k, folder in zip(
            STEPS,
            generate_together(
                build.float,
                [Variant("float", k) for k in STEPS],
                prompts,
                key=build.image_key("float"),
                cache=cache,
                progress=progress,
                timing=timing,
            ).values(),
        )
    }
    seconds["float_images"] = time.perf_counter() - t
    dirs.update(results.images_by_label())
    t = time.perf_counter()
    reference, described = reference_set(build, prompts, cache=cache, coco_dir=coco_dir, progress=progress)
    ref = (reference, described, reference_id(build, coco_dir))
    ev = _evaluate(build, prompts, backbones, dirs, ref, ep=ep, detail=results.describe(), progress=progress)
    seconds["metrics"] = time.perf_counter() - t
    return {
        "prompts": len(prompts),
        "verdict": f"not gated: {len(prompts)} prompts (a baseline holds 100)",
        "backbones": backbones.record(),
        "why": list(backbones.why),
        "ep": ep,
        "mse": {k: [float(x) for x in v] for k, v in ev.mse.items()},
        "clip_mean": {k: float(sum(v) / len(v)) for k, v in ev.clip.items()},
        "fid": {k: float(v) for k, v in ev.fid.items()},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "float_timing": timing,
    }


def compare_results(
    build: Build,
    a: str | Path,
    b: str | Path,
    *,
    cache: ArtifactCache,
    clip_backbone: str = "auto",
    fid_backbone: str = "auto",
    coco_dir: str | Path | None = None,
    progress: Progress = lambda _: None,
) -> tuple[Evaluation, Evaluation, list[Difference], dict]:
    """Two device results folders of the same bundle (two toolchains, e.g. onnxruntime-qnn 2.6.0 and 2.7.0, or two
    devices), judged against the same float images here: B against A per metric, as the recipe A/B does, and each
    side's placement, QNN-vs-CPU parity and versions (``toolchains``)."""
    prompts = load_prompts("all", path=build.source.prompts)
    results = [DeviceResults.load(p) for p in (a, b)]
    eps = {r.manifest["ep"] for r in results}
    if len(eps) > 1:
        raise ConfigError(f"results {a} and {b} were drawn on different EPs ({sorted(eps)}): compare like with like")
    ep = eps.pop()
    for r in results:
        device_results(r.path, build, ep=ep, qnn=QnnOptions(soc_model=r.manifest["soc"]), prompts=prompts)
    if results[0].manifest["bundle"]["digest"] != results[1].manifest["bundle"]["digest"]:
        raise ConfigError(f"results {a} and {b} come from different bundles: run both toolchains on one bundle")
    backbones = resolve_backbones(clip_backbone, fid_backbone, model=build.source.name)
    reference, described = reference_set(build, prompts, cache=cache, coco_dir=coco_dir, progress=progress)
    floats = draw_together(build, [Variant("float", k) for k in STEPS], prompts, cache=cache, progress=progress)
    ref = (reference, described, reference_id(build, coco_dir))
    evaluations = [
        _evaluate(
            build,
            prompts,
            backbones,
            {**floats, **r.images_by_label()},
            ref,
            ep=ep,
            detail=r.describe(),
            progress=progress,
        )
        for r in results
    ]
    toolchains = {
        "a": _toolchain(results[0]),
        "b": _toolchain(results[1]),
    }
    return evaluations[0], evaluations[1], compare(evaluations[0], evaluations[1], reference), toolchains


def _toolchain(results: DeviceResults) -> dict:
    """What a results folder says of the toolchain that drew it: versions, backend, placement, parity."""
    figures_file = results.path / "figures.json"
    figures = json.loads(figures_file.read_text()) if figures_file.is_file() else {}
    return {
        "path": str(results.path),
        "versions": results.manifest["versions"],
        "backend": results.manifest["machine"].get("qnn_backend"),
        "placement": {c: sum(ops.values()) for c, ops in figures.get("placement", {}).items()},
        "parity_db": {
            c: min(o["qnn_vs_cpu_db"] for o in outs.values()) for c, outs in figures.get("parity", {}).items()
        },
    }


def run_shard(
    build: Build,
    shard: Shard,
    out: str | Path,
    *,
    cache: ArtifactCache,
    ep: str = "cpu",
    qnn: QnnOptions | None = None,
    clip_backbone: str = "auto",
    fid_backbone: str = "auto",
    coco_dir: str | Path | None = None,
    allow_download: bool = False,
    threads: int | None = None,
    progress: Progress = lambda _: None,
) -> dict:
    """Shard ``shard`` of the gate's work: the four gated sets and the FID reference drawn for the shard's prompts only
    (the same images the whole run draws for them), their per-image records, written to the shard folder ``out``
    (``sdxl_qdq.judge.shards``). Returns its manifest."""
    start = time.perf_counter()
    all_prompts = load_prompts("all", path=build.source.prompts)
    prompts = shard.select(all_prompts)
    backbones = resolve_backbones(clip_backbone, fid_backbone, model=build.source.name, allow_download=allow_download)
    progress(f"shard {shard}: {len(prompts)} of {len(all_prompts)} prompts")
    reference, described = reference_set(build, prompts, cache=cache, coco_dir=coco_dir, progress=progress)
    variants = [Variant("float", 1), Variant("float", 2), Variant("qdq", 1, ep=ep), Variant("qdq", 2, ep=ep)]
    dirs = draw_together(build, variants, prompts, cache=cache, qnn=qnn, progress=progress, threads=threads)
    drawn = time.perf_counter()
    progress(f"shard {shard}: per-image records with {backbones.clip} and {backbones.fid}")
    meta = {
        "model": build.source.name,
        "recipe": build.recipe_name,
        "keys": build_keys(build),
        "ep": ep,
        "soc": (qnn or QnnOptions()).soc_model if ep == "qnn" else None,
        "ep_detail": ep_description(ep, qnn),
        "prompt_set": {"name": prompt_set_name(build)},
        "reference": {"id": reference_id(build, coco_dir), "described": described},
        "versions": package_versions(),
        "seconds": {"draw_s": round(drawn - start, 2)},
    }
    manifest = write_shard(
        Path(out),
        shard=shard,
        prompts=prompts,
        all_prompts=all_prompts,
        dirs=dirs,
        reference=reference,
        backbones=backbones,
        meta=meta,
    )
    progress(
        f"shard {shard}: {len(prompts)} prompts in {time.perf_counter() - start:.1f}s "
        f"(drawing {meta['seconds']['draw_s']:.1f}s) -> {out}"
    )
    return manifest


def merge_shards(build: Build, paths: list[str | Path], out: str | Path, *, backbones) -> Merged:
    """The shards at ``paths`` merged into ``out`` (emptied first), checked against ``build`` and ``backbones``."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    prompts = load_prompts("all", path=build.source.prompts)
    merged = merge([Path(p) for p in paths], prompts, out)
    m = merged.manifest
    if m["model"] != build.source.name or m["keys"] != build_keys(build):
        raise ConfigError(
            f"the shards were drawn from another build ({m['model']}, recipe {m['recipe']!r}) than this one "
            f"({build.source.name}, recipe {build.recipe_name!r}); judge them with the model and recipe they were "
            "drawn from"
        )
    if m["backbones"] != backbones.record():
        raise ConfigError(
            f"the shards' records were made with backbones {m['backbones']}, the judge resolved {backbones.record()}: "
            f"judge with --clip-backbone {m['backbones']['clip']} --fid-backbone {m['backbones']['fid']}"
        )
    return merged


def evaluate_merged(build: Build, merged: Merged, backbones, *, progress: Progress = lambda _: None) -> Evaluation:
    """The evaluation of merged shards: the set metrics from their records (the backbones do not run again)."""
    prompts = merged.prompts
    images = {label: load_images(merged.dirs[label], prompts) for label in GATED}
    reference = load_images(merged.dirs["reference"], prompts)
    remember_records(merged, {**images, "reference": reference}, backbones)
    m = merged.manifest
    return evaluate(
        model=baseline_model_name(build.source.name),
        recipe=build.recipe_name,
        prompts=prompts,
        backbones=backbones,
        image_dirs={label: merged.dirs[label] for label in VARIANTS},
        reference_images=reference,
        reference_name=m["reference"]["described"],
        reference_id=m["reference"]["id"],
        ep=m["ep"],
        ep_detail=f"{m['ep_detail']}; {len(merged.shards)} shards merged",
        progress=progress,
        prompt_set=m["prompt_set"]["name"],
        images=images,
        clip={
            label: [float(x) for x in merged.records[f"clip_score/{label}"]] for label in ("float@1", "qdq@1", "qdq@2")
        },
    )
