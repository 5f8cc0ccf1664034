"""Baselines: one JSON file per model, EP and backbone pair, with tolerances derived from measured noise."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

from sdxl_qdq.cache import package_versions
from sdxl_qdq.errors import ConfigError
from sdxl_qdq.judge.backbones import Backbones
from sdxl_qdq.judge.checks import registry
from sdxl_qdq.judge.evaluation import NOISE_SEEDS, Evaluation
from sdxl_qdq.models.prompts import Prompt
from sdxl_qdq.paths import BASELINES_DIR


def baseline_model_name(model: str) -> str:
    """The folder under baselines/ for ``--model``: ``stabilityai/sdxl-turbo`` → ``sdxl-turbo``; a variant
    (``canary:no-xattn``) is gated by its parent's baseline."""
    return Path(model.rstrip("/")).name.split(":")[0]


REQUIRED = (
    "backbones",
    "ep",
    "fid_reference_id",
    "prompts",
    "prompts_sha256",
    *(key for metric in registry() if metric.required for key in metric.baseline_keys),
)


def prompts_sha256(prompts: list[Prompt]) -> str:
    """A digest of the prompt set: ids and texts, in order."""
    return hashlib.sha256(json.dumps([[p.id, p.text] for p in prompts]).encode()).hexdigest()


def baseline_path(
    model: str,
    backbones: Backbones,
    root: Path = BASELINES_DIR,
    *,
    ep: str = "cpu",
    reference: str,
    prompt_set: str = "",
) -> Path:
    """``<root>/<model>/<ep>/<clip>__<fid>__<reference>[__<prompt set>].json``: everything that changes a number is in
    the key: the EP that drew the quantized variants (QNN does not compute what the CPU EP computes), both backbones,
    the FID reference set (``coco2017-crop256``, ``world-render``, ``float1-seed1``), and a team's own prompt set
    (``--prompts``; the model's own prompts add nothing)."""
    tail = f"__{prompt_set}" if prompt_set else ""
    return root / baseline_model_name(model) / ep / f"{backbones.name}__{reference}{tail}.json"


def load_baseline(
    model: str,
    backbones: Backbones,
    root: Path = BASELINES_DIR,
    *,
    ep: str = "cpu",
    reference: str,
    prompts: list[Prompt] | None = None,
    prompt_set: str = "",
) -> dict[str, Any]:
    """The baseline of ``model`` for exactly this EP, these backbones, this FID reference and prompt set (and
    ``prompts``, when given); a one-line error naming both sides and the fix when there is none or it does not
    match."""
    path = baseline_path(model, backbones, root, ep=ep, reference=reference, prompt_set=prompt_set)
    if not path.is_file():
        raise ConfigError(_missing(path, model, backbones, ep, reference))
    try:
        baseline = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"baseline {path} is not valid JSON ({e}); restore it (`git checkout -- {path.name}`) or "
            "regenerate it with --update-baselines"
        ) from None
    missing = [k for k in REQUIRED if not isinstance(baseline, dict) or k not in baseline]
    if missing:
        raise ConfigError(
            f"baseline {path} lacks {missing} (hand-edited, or written by an older version); restore it "
            "or regenerate it with --update-baselines"
        )
    found = {"backbones": baseline["backbones"], "ep": baseline["ep"], "FID reference": baseline["fid_reference_id"]}
    wanted = {"backbones": backbones.record(), "ep": ep, "FID reference": reference}
    for what, value in wanted.items():
        if found[what] != value:
            raise ConfigError(
                f"baseline {path} records {what} {found[what]!r}, this run's is {value!r}: it must not gate "
                "this run; regenerate it with --update-baselines"
            )
    if prompts is not None and baseline["prompts_sha256"] != prompts_sha256(prompts):
        raise ConfigError(
            f"baseline {path} was made for another prompt set (sha256 {baseline['prompts_sha256'][:12]}), "
            f"this run's prompts have {prompts_sha256(prompts)[:12]}: regenerate it with --update-baselines"
        )
    return baseline


def _missing(path: Path, model: str, backbones: Backbones, ep: str, reference: str) -> str:
    folder = path.parent.parent
    others = sorted(f"{p.parent.name}/{p.stem}" for p in folder.glob("*/*__*.json")) if folder.is_dir() else []
    hint = ""
    same = [o for o in others if o.startswith(f"{ep}/{backbones.name}__")]
    if same:
        theirs = same[0].rsplit("__", 1)[1]
        how = {
            "coco2017-crop256": "pass --coco-dir DIR with the 100 COCO images (`sdxl-qdq coco-images DIR` fetches them)"
        }
        hint = (
            f"the baseline with these backbones on this EP uses FID reference {theirs!r}, this run {reference!r}: "
            f"{how.get(theirs, 'use that reference')}, or "
        )
    elif others:
        hint = (
            f"baselines exist for other EPs, backbones or FID references only ({', '.join(others)}), "
            "which never gate this one; "
        )
    return (
        f"no baseline for model {baseline_model_name(model)!r} on the {ep} EP with backbones clip={backbones.clip}, "
        f"fid={backbones.fid}, FID reference {reference!r} (looked for {path}); {hint}create it with "
        f"`pytest -m quality{'' if ep == 'cpu' else f' --qdq-ep {ep}'} --qdq-update-baselines`"
    )


def baseline_from_evaluation(ev: Evaluation) -> dict[str, Any]:
    """A baseline with tolerances derived from the seed noise measured in ``ev`` (needs ``with_noise``)."""
    if ev.noise is None:
        raise ValueError("deriving tolerances needs an evaluation with seed noise (evaluate(..., with_noise=True))")
    texts, noise, entries = [], {}, {}
    for metric in registry():
        text, figures = metric.derivation(ev)
        texts.append(text)
        noise.update(figures)
        entries.update(metric.baseline_entries(ev))
    return {
        "model": ev.model,
        "backbones": ev.backbones.record(),
        "fid_reference": ev.fid_reference,
        "fid_reference_id": ev.fid_reference_id,
        "recipe": ev.recipe,
        "ep": ev.ep,
        "versions": package_versions(),
        "source": "measured with `pytest -m quality --qdq-update-baselines`",
        "derivation": {
            "text": " ".join(
                [f"Tolerances come from the float model's seed-to-seed noise (seed bases 0 vs {NOISE_SEEDS}).", *texts]
            ),
            "noise": noise,
        },
        "prompts": [p.id for p in ev.prompts],
        "prompts_sha256": prompts_sha256(ev.prompts),
        **entries,
    }


def write_baseline(baseline: dict[str, Any], path: Path) -> None:
    """Atomic write (temp file, then rename) under a lock beside the file; a temp left by a killed writer is
    removed first, so a kill at any point leaves the previous baseline whole and nothing else behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(f".{path.name}.lock"))):
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(baseline, f, indent=1, sort_keys=False)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ------------------------------------------------------------------------------------------------ checks
