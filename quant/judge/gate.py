"""The quality gate: evaluate float vs quantized images, compare with baselines, derive tolerances.

Variants: ``float@1``, ``qdq@1``, ``float@2``, ``qdq@2`` over the 100 prompts. Metrics: per-image MSE of
``qdq@k`` vs ``float@k`` (the study's definition) and PSNR; per-image CLIP score; mean paired CLIP
difference vs ``float@1`` with a bootstrap interval; FID of each variant against a reference set.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quant.build.stages import Build
from quant.cache import ArtifactCache, package_versions
from quant.errors import ConfigError
from quant.judge.backbones import Backbones, clip_scores, fid
from quant.judge.metrics import bootstrap_mean_ci, image_mse, psnr_db
from quant.models.prompts import Prompt
from quant.paths import BASELINES_DIR
from quant.run.generate import Variant, generate, image_name, load_png
from quant.runtime import QnnOptions

STEPS = (1, 2)
NOISE_SEEDS = (2, 3, 4)  # seed bases of extra float@1 sets that measure seed-to-seed noise (baseline updates)
REFERENCE_SEED = 1  # seed base of the offline FID reference set (float@1 drawn from other noise)
MSE_RECAL_SIGMA = 3.0  # a prompt fails when its error grows by > 3 σ of what re-calibrating moves it
CLIP_DELTA_SE = 2.0  # mean CLIP difference: tolerance of 2 standard errors of the seed-resampling noise
CLIP_FLOOR_SIGMA = 3.0  # per-image CLIP floor: 3 σ of the per-prompt seed-to-seed CLIP difference
FID_SIGMA = 3.0  # FID: 3 σ of FID over the float sets drawn with different seeds


def baseline_model_name(model: str) -> str:
    """The folder under baselines/ for ``--model``: ``stabilityai/sdxl-turbo`` → ``sdxl-turbo``; a variant
    (``canary:no-xattn``) is gated by its parent's baseline."""
    return Path(model.rstrip("/")).name.split(":")[0]


@dataclass(frozen=True)
class Check:
    """One comparison: ``direction`` "max" means the measured value must stay ≤ limit, "min" ≥ limit."""

    metric: str
    measured: float
    baseline: float
    limit: float
    direction: str
    detail: str = ""

    @property
    def failure(self) -> str | None:
        ok = self.measured <= self.limit if self.direction == "max" else self.measured >= self.limit
        if ok:
            return None
        word = "at most" if self.direction == "max" else "at least"
        return (f"{self.metric}: measured {self.measured:.6g}, baseline {self.baseline:.6g}, limit {self.limit:.6g} "
                f"(must be {word} the limit){' — ' + self.detail if self.detail else ''}")


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
    noise: dict[str, Any] | None = None
    ep_detail: str = ""  # what ran the quantized variants, in words (the float ones always run on the CPU EP)

    def image(self, label: str, prompt: Prompt) -> Path:
        return self.image_dirs[label] / image_name(prompt)

    def clip_delta(self, steps: int) -> np.ndarray:
        return np.asarray(self.clip[f"qdq@{steps}"]) - np.asarray(self.clip["float@1"])


def evaluate(
    build: Build,
    prompts: list[Prompt],
    backbones: Backbones,
    *,
    cache: ArtifactCache,
    ep: str = "cpu",
    qnn: QnnOptions | None = None,
    with_noise: bool = False,
    reference_images: list[np.ndarray] | None = None,
    reference_name: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Evaluation:
    """Generate every variant (cached), then compute MSE, CLIP and FID. ``with_noise`` adds seed-noise sets."""
    variants = [Variant("float", 1), Variant("qdq", 1, ep=ep), Variant("float", 2), Variant("qdq", 2, ep=ep)]
    dirs = {v.label.split("[")[0]: generate(build, v, prompts, cache=cache, qnn=qnn, progress=progress) for v in variants}
    images = {label: [load_png(d / image_name(p)) for p in prompts] for label, d in dirs.items()}
    mse = {k: [image_mse(f, q) for f, q in zip(images[f"float@{k}"], images[f"qdq@{k}"])] for k in STEPS}
    texts = [p.text for p in prompts]
    progress(f"CLIP scores with {backbones.clip}")
    clip = {label: clip_scores(images[label], texts, backbones.clip) for label in ("float@1", "qdq@1", "qdq@2")}
    if reference_images is None:
        ref_dir = generate(build, Variant("float", 1, REFERENCE_SEED), prompts, cache=cache, progress=progress)
        reference_images = [load_png(ref_dir / image_name(p)) for p in prompts]
        reference = f"float@1 images of the same prompts drawn with seed base {REFERENCE_SEED}"
    else:
        reference = reference_name or "given reference images"
    progress(f"FID with {backbones.fid}")
    fids = {label: fid(images[label], reference_images, backbones.fid) for label in ("float@1", "qdq@1", "qdq@2")}
    noise = None
    if with_noise:
        noise = _seed_noise(build, prompts, backbones, images, reference_images, clip["float@1"], fids["float@1"],
                            cache=cache, ep=ep, qnn=qnn, progress=progress)
    return Evaluation(
        model=baseline_model_name(build.source.name), backbones=backbones, prompts=prompts, ep=ep,
        recipe=build.recipe_name, image_dirs=dirs, mse=mse, clip=clip, fid=fids, fid_reference=reference, noise=noise,
        ep_detail=ep_description(ep, qnn),
    )


def ep_description(ep: str, qnn: QnnOptions | None) -> str:
    """The EP in words: for QNN, the chip and whether HTP is the x86 simulator or the NPU."""
    import platform

    from quant.runtime import DEFAULT_QNN_SOC, QNN_SOCS, qnn_is_simulated

    if ep != "qnn":
        return f"CPU EP ({platform.machine()})"
    soc = (qnn or QnnOptions()).soc_model or DEFAULT_QNN_SOC
    return f"QNN EP, HTP {'simulator on ' + platform.machine() if qnn_is_simulated() else 'NPU'}, soc {soc} ({QNN_SOCS.get(soc, '?')})"


def _seed_noise(build, prompts, backbones, images, reference_images, float_clip, float_fid, *, cache, ep, qnn,
                progress) -> dict[str, Any]:
    """What a user cannot call a regression: the float model's seed-to-seed variation, and how much the
    quantization error moves when the same recipe is calibrated on other, equally valid prompts."""
    from quant.build.stages import build as build_model
    from quant.models.prompts import load_prompts

    texts = [p.text for p in prompts]
    noise: dict[str, Any] = {"seeds": list(NOISE_SEEDS)}
    recal = build_model(build.source.name, recipe=build.recipe_path, cache=cache,
                        calibration_prompts=load_prompts("test", path=build.source.prompts))
    noise["recalibrated_mse"] = {}
    for k in STEPS:
        d = generate(recal, Variant("qdq", k, ep=ep), prompts, cache=cache, qnn=qnn, progress=progress)
        noise["recalibrated_mse"][k] = [image_mse(f, load_png(d / image_name(p))) for f, p in zip(images[f"float@{k}"], prompts)]
    sets = {}
    for seed in NOISE_SEEDS:
        d = generate(build, Variant("float", 1, seed), prompts, cache=cache, progress=progress)
        sets[seed] = [load_png(d / image_name(p)) for p in prompts]
    d2 = generate(build, Variant("float", 2, NOISE_SEEDS[0]), prompts, cache=cache, progress=progress)
    other2 = [load_png(d2 / image_name(p)) for p in prompts]
    first = sets[NOISE_SEEDS[0]]
    noise["mse"] = {
        1: [image_mse(a, b) for a, b in zip(images["float@1"], first)],
        2: [image_mse(a, b) for a, b in zip(images["float@2"], other2)],
    }
    clip_other = clip_scores(first, texts, backbones.clip)
    noise["clip_diff_std"] = float(np.std(np.asarray(clip_other) - np.asarray(float_clip), ddof=1))
    fids = [float_fid] + [fid(sets[s], reference_images, backbones.fid) for s in NOISE_SEEDS]
    noise["fid_values"] = fids
    noise["fid_std"] = float(np.std(fids, ddof=1))
    return noise


# -------------------------------------------------------------------------------------------- baselines
def baseline_path(model: str, backbones: Backbones, root: Path = BASELINES_DIR, *, ep: str = "cpu") -> Path:
    """``<root>/<model>/<ep>/<clip>__<fid>.json``: the EP that ran the quantized variants is part of the key (the
    QNN EP does not compute what the CPU EP computes, so one never gates the other)."""
    return root / baseline_model_name(model) / ep / f"{backbones.name}.json"


def load_baseline(model: str, backbones: Backbones, root: Path = BASELINES_DIR, *, ep: str = "cpu") -> dict[str, Any]:
    """The baseline of ``model`` for exactly these backbones and this EP; a clear error when there is none."""
    path = baseline_path(model, backbones, root, ep=ep)
    if not path.is_file():
        folder = path.parent.parent
        others = sorted(f"{p.parent.name}/{p.stem}" for p in folder.glob("*/*__*.json")) if folder.is_dir() else []
        hint = (f"baselines exist for other EPs or backbones only ({', '.join(others)}), which never gate this one; "
                if others else "")
        raise ConfigError(
            f"no baseline for model {baseline_model_name(model)!r} on the {ep} EP with backbones clip={backbones.clip}, "
            f"fid={backbones.fid} (looked for {path}); {hint}create it with "
            f"`pytest -m quality{'' if ep == 'cpu' else f' --ep {ep}'} --update-baselines`"
        )
    baseline = json.loads(path.read_text())
    if baseline["backbones"] != {"clip": backbones.clip, "fid": backbones.fid}:
        raise ConfigError(f"baseline {path} was made with backbones {baseline['backbones']}, not {backbones}")
    if baseline.get("ep") != ep:
        raise ConfigError(f"baseline {path} was made on the {baseline.get('ep')!r} EP, not {ep!r}; it must not gate this "
                          f"run: regenerate it with `pytest -m quality --ep {ep} --update-baselines`")
    return baseline


def baseline_from_evaluation(ev: Evaluation) -> dict[str, Any]:
    """A baseline with tolerances derived from the seed noise measured in ``ev`` (needs ``with_noise``)."""
    if ev.noise is None:
        raise ValueError("deriving tolerances needs an evaluation with seed noise (evaluate(..., with_noise=True))")
    n = len(ev.prompts)
    clip_sd = ev.noise["clip_diff_std"]
    recal_sd = {k: float(np.std(np.asarray(ev.noise["recalibrated_mse"][k]) - np.asarray(ev.mse[k]), ddof=1)) for k in STEPS}
    return {
        "model": ev.model,
        "backbones": {"clip": ev.backbones.clip, "fid": ev.backbones.fid},
        "fid_reference": ev.fid_reference,
        "recipe": ev.recipe,
        "ep": ev.ep,
        "versions": package_versions(),
        "source": "measured with `pytest -m quality --update-baselines`",
        "derivation": {
            "text": (
                f"Tolerances come from the float model's seed-to-seed noise (seed bases 0 vs {NOISE_SEEDS}). "
                f"MSE: limit_i = baseline_i + {MSE_RECAL_SIGMA} σ_k, σ_k = std over prompts of the change in per-image "
                "MSE when the same recipe is calibrated on the 50 test prompts instead of the 50 train prompts. "
                f"Mean CLIP difference vs float@1: tolerance = {CLIP_DELTA_SE} × σ/√n, σ = std of per-prompt "
                f"seed-to-seed CLIP differences. Per-image CLIP floor: baseline_i − {CLIP_FLOOR_SIGMA} σ. "
                f"FID: tolerance = {FID_SIGMA} × std of FID over float@1 sets of {1 + len(NOISE_SEEDS)} seeds."
            ),
            "noise": {"clip_diff_std": clip_sd, "fid_values": ev.noise["fid_values"], "fid_std": ev.noise["fid_std"],
                      "mse_seed_mean": {str(k): float(np.mean(v)) for k, v in ev.noise["mse"].items()},
                      "mse_recalibration_std": {str(k): recal_sd[k] for k in STEPS}},
        },
        "prompts": [p.id for p in ev.prompts],
        "mse": {
            str(k): {"values": ev.mse[k], "tolerance": [MSE_RECAL_SIGMA * recal_sd[k]] * n}
            for k in STEPS
        },
        "clip": ev.clip,
        "clip_delta": {str(k): {"value": float(np.mean(ev.clip_delta(k))), "tolerance": CLIP_DELTA_SE * clip_sd / math.sqrt(n)}
                       for k in STEPS},
        "clip_floor": {str(k): {"tolerance": CLIP_FLOOR_SIGMA * clip_sd} for k in STEPS},
        "fid": {label: {"value": value, "tolerance": FID_SIGMA * ev.noise["fid_std"]} for label, value in ev.fid.items()},
    }


def write_baseline(baseline: dict[str, Any], path: Path) -> None:
    """Atomic write (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(baseline, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ checks
@dataclass
class Gate:
    """An evaluation and its baseline; each method returns the ``Check`` a test asserts on."""

    evaluation: Evaluation
    baseline: dict[str, Any]
    _index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {pid: i for i, pid in enumerate(self.baseline["prompts"])}
        missing = [p.id for p in self.evaluation.prompts if p.id not in self._index]
        if missing:
            raise ConfigError(f"baseline has no entry for prompts {missing[:3]}…; prompts changed: update the baseline")

    def has(self, metric: str, key: str) -> bool:
        return key in self.baseline.get(metric, {})

    def mse(self, prompt: Prompt, steps: int) -> Check:
        i, entry = self._index[prompt.id], self.baseline["mse"][str(steps)]
        measured = self.evaluation.mse[steps][self.evaluation.prompts.index(prompt)]
        base, tol = entry["values"][i], entry["tolerance"][i]
        return Check(f"MSE qdq@{steps} vs float@{steps} [{prompt.id}]", measured, base, base + tol, "max",
                     f"PSNR {psnr_db(measured):.2f} dB")

    def clip_delta(self, steps: int) -> Check:
        delta = self.evaluation.clip_delta(steps)
        low, high = bootstrap_mean_ci(delta)
        entry = self.baseline["clip_delta"][str(steps)]
        # fail only when the whole 95 % interval of the paired mean lies below baseline − tolerance
        return Check(f"mean CLIP(qdq@{steps}) − CLIP(float@1), 95% CI upper bound [{self.evaluation.backbones.clip}]",
                     high, entry["value"], entry["value"] - entry["tolerance"], "min",
                     f"mean {float(delta.mean()):+.4f}, CI [{low:+.4f}, {high:+.4f}]")

    def clip_floor(self, prompt: Prompt, steps: int) -> Check:
        i = self._index[prompt.id]
        base = self.baseline["clip"][f"qdq@{steps}"][i]
        tol = self.baseline["clip_floor"][str(steps)]["tolerance"]
        measured = self.evaluation.clip[f"qdq@{steps}"][self.evaluation.prompts.index(prompt)]
        return Check(f"CLIP qdq@{steps} [{prompt.id}] [{self.evaluation.backbones.clip}]", measured, base, base - tol, "min")

    def fid(self, label: str) -> Check:
        entry = self.baseline["fid"][label]
        return Check(f"FID {label} [{self.evaluation.backbones.fid}]", self.evaluation.fid[label], entry["value"],
                     entry["value"] + entry["tolerance"], "max", f"reference: {self.baseline.get('fid_reference')}")

    def all_checks(self) -> list[Check]:
        checks = []
        for k in STEPS:
            if self.has("mse", str(k)):
                checks += [self.mse(p, k) for p in self.evaluation.prompts]
            if self.has("clip_delta", str(k)):
                checks.append(self.clip_delta(k))
            if self.has("clip_floor", str(k)):
                checks += [self.clip_floor(p, k) for p in self.evaluation.prompts]
        checks += [self.fid(label) for label in ("qdq@1", "qdq@2") if self.has("fid", label)]
        return checks


def load_coco_reference(coco_dir: Path, prompts: list[Prompt], *, size: int = 256) -> list[np.ndarray]:
    """The COCO images of ``prompts`` (by file name from the prompt fixture), center-cropped and resized to ``size``."""
    from PIL import Image

    from quant.models.prompts import PROMPTS_COCO

    rows = [json.loads(line) for line in PROMPTS_COCO.read_text().splitlines() if line.strip()]
    images = []
    for prompt in prompts:
        path = Path(coco_dir) / rows[prompt.index]["file_name"]
        if not path.is_file():
            raise ConfigError(f"--coco-dir {coco_dir}: {path.name} (prompt {prompt.id}) is missing; it needs the COCO "
                              "2017 train images listed in fixtures/prompts/coco2017_first100.jsonl")
        with Image.open(path) as im:
            im = im.convert("RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            images.append(np.asarray(im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)))
    return images


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
    progress: Callable[[str], None] = lambda _: None,
) -> Gate:
    """Evaluate ``build`` on the 100 prompts and pair it with its baseline (written first when ``update``)."""
    from quant.judge.backbones import resolve_backbones
    from quant.models.prompts import load_prompts

    backbones = resolve_backbones(clip_backbone, fid_backbone, model=build.source.name)
    prompts = load_prompts("all", path=build.source.prompts)
    if not update:
        baseline = load_baseline(build.source.name, backbones, baselines_root, ep=ep)  # fail before generating anything
    reference, described = None, None
    if coco_dir:
        reference, described = load_coco_reference(Path(coco_dir), prompts), "COCO 2017 images of the prompts, center-cropped to 256"
    elif build.source.reference is not None:
        reference, described = build.source.reference([p.text for p in prompts]), "the world's own rendering of each caption"
    ev = evaluate(build, prompts, backbones, cache=cache, ep=ep, qnn=qnn, with_noise=update,
                  reference_images=reference, reference_name=described, progress=progress)
    if update:
        baseline = baseline_from_evaluation(ev)
        write_baseline(baseline, baseline_path(build.source.name, backbones, baselines_root, ep=ep))
    return Gate(ev, baseline)
