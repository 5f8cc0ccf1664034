"""The nightly rehearsed offline on stand-ins: the real model's path, end to end, with nothing downloaded.

What a team with the weights has is laid out where the real loaders look: ``stabilityai/sdxl-turbo`` as a Hugging
Face cache snapshot (its folders, file names and fp16 variants; seeded random weights, tiny or real width),
``openai/clip-vit-base-patch16`` likewise (ViT-B/16's architecture), torch-fidelity's Inception weights file in torch
hub's cache, and a COCO-like folder of the prompts' reference images. Then the nightly's three jobs run their own
commands in order, each in its own process: build (``sdxl-qdq bundle``), device (``device-check``, ``device-test``,
``device-run``) and judge (``pytest -m quality --qdq-from-device``), each timed with its peak memory, into
``<work>/rehearsal.json``.

``tiny`` (CI): every command as the nightly runs it; placement, parity and latency (``device-test``) on the HTP
simulator, the 100 prompts (``device-run``) on the CPU EP (the simulator takes 24 s a prompt even at tiny width), the
judge on all 100 against the study's baseline (stand-in weights fail its checks: the judge must reach a verdict).
``real`` (``make real-size-gate``): the same build and bundle at real size; the device job's code on the CPU EP
(the simulator runs about 4 s per GMAC: one real UNet call would take half an hour) on the first K prompts; the
judge's own code (host float images, CLIP, FID, MSE with the real backbones' architectures) on those K prompts, since
a gate verdict needs the baseline's 100.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxl_qdq.errors import BuildError, ConfigError
from sdxl_qdq.paths import IN_CHECKOUT, REPO_DIR
from sdxl_qdq.procs import Progress, run_measured, stage_log, total_memory_bytes

SIZES = ("tiny", "real")
REAL_MODEL = "stabilityai/sdxl-turbo"
SOC = "60"


@dataclass
class Step:
    job: str
    name: str
    argv: list[str]
    ok_codes: tuple[int, ...] = (0,)
    measured: dict[str, Any] = field(default_factory=dict)


def environment(work: Path, cache_dir: Path | None = None) -> dict[str, str]:
    """Where the stand-ins are (the real loaders' own variables) and where the artifacts go; offline."""
    return {
        "HF_HUB_CACHE": str(work / "hf" / "hub"),
        "TORCH_HOME": str(work / "torch"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "SDXL_QDQ_CACHE_DIR": str(cache_dir or work / "cache"),
    }


def stage_standins(work: Path, size: str, *, progress: Progress = print) -> dict[str, Any]:
    """Lay out the stand-ins under ``work`` (kept when already there); returns what was written."""
    from sdxl_qdq.judge.inception import weights_path, write_random_weights
    from sdxl_qdq.models import sdxl
    from sdxl_qdq.models.prompts import PROMPTS_COCO
    from sdxl_qdq.models.standin import repo_folder_name, write_clip_snapshot, write_hub_snapshot, write_random_pipeline

    if size not in SIZES:
        raise ConfigError(f"rehearsal size {size!r} is not one of {SIZES}")
    hub = work / "hf" / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    if not (hub / repo_folder_name(REAL_MODEL) / "refs" / "main").is_file():
        configs = (
            {
                "text_encoder": sdxl.TINY_TEXT_ENCODER,
                "text_encoder_2": sdxl.TINY_TEXT_ENCODER_2,
                "unet": sdxl.TINY_UNET,
                "vae": sdxl.TINY_VAE,
            }
            if size == "tiny"
            else {
                "text_encoder": sdxl.REAL_TEXT_ENCODER,
                "text_encoder_2": sdxl.REAL_TEXT_ENCODER_2,
                "unet": sdxl.REAL_UNET,
                "vae": sdxl.REAL_VAE,
            }
        )
        with stage_log(work / "logs" / "standins.log"):  # transformers' and diffusers' bars and notices
            folder = write_random_pipeline(
                work / "pipeline", configs, seed=sdxl.REAL_RANDOM_SEED, fp16_variants=size == "tiny", progress=progress
            )
        write_hub_snapshot(folder, repo_id=REAL_MODEL, hub_cache=hub, move=True)
        shutil.rmtree(work / "pipeline", ignore_errors=True)
    if not (hub / repo_folder_name("openai/clip-vit-base-patch16") / "refs" / "main").is_file():
        with stage_log(work / "logs" / "standins.log"):
            write_clip_snapshot(hub, width="small" if size == "tiny" else "real")
    inception = weights_path(work / "torch")
    if not inception.is_file():
        write_random_weights(inception)
    coco = work / "coco"
    rows = [json.loads(line) for line in PROMPTS_COCO.read_text().splitlines() if line.strip()]
    if not all((coco / r["file_name"]).is_file() for r in rows):
        _write_coco_like(coco, rows)
    return {"hub": str(hub), "inception": str(inception), "coco": str(coco)}


def _write_coco_like(folder: Path, rows: list[dict[str, Any]]) -> None:
    """Seeded JPEGs of COCO's sizes under the prompts' COCO file names (smooth colour fields with a few shapes)."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        rng = np.random.default_rng(i)
        w, h = (640, 480) if i % 3 else (480, 640)
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, 3) * 0.6 + 0.4 * np.stack(
            [255 * xx / w, 255 * yy / h, 255 * (xx + yy) / (w + h)], -1
        )
        im = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            draw.ellipse(
                (x0, y0, x0 + int(rng.integers(30, 200)), y0 + int(rng.integers(30, 200))),
                fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
            )
        tmp = folder / f".{row['file_name']}.part"
        im.save(tmp, format="JPEG", quality=90)
        tmp.replace(folder / row["file_name"])


def night_steps(work: Path, size: str, *, prompts: int | None, context: bool) -> list[Step]:
    """The nightly's commands (.github/workflows/nightly-npu.yml) for this rehearsal, in order."""
    cli = [sys.executable, "-m", "sdxl_qdq"]
    bundle, out = work / "bundle", work / "out"
    some = ["--prompts", str(prompts)] if prompts else []
    steps = [
        Step(
            "build",
            "sdxl-qdq bundle",
            [
                *cli,
                "bundle",
                "--model",
                REAL_MODEL,
                "--qnn-soc",
                SOC,
                *some,
                *([] if context else ["--no-context"]),
                str(bundle),
            ],
        )
    ]
    steps.append(Step("device", "sdxl-qdq device-check", [*cli, "device-check", "--allow-emulation"]))
    if size == "tiny":
        steps.append(
            Step(
                "device",
                "sdxl-qdq device-test",
                [
                    *cli,
                    "device-test",
                    "--bundle",
                    str(bundle),
                    "--qnn-soc",
                    SOC,
                    "--out",
                    str(out / "device"),
                    "--benchmark-storage",
                    str(work / "benchmarks"),
                    "--",
                    "-q",
                    "-p",
                    "no:randomly",
                    "--benchmark-min-rounds=1",
                    "--benchmark-max-time=0.1",
                    "--benchmark-warmup=off",
                ],
            )
        )
    # the prompts drawn on the CPU EP: the simulator takes 24 s a prompt even at tiny width (its 512×512 decoder)
    steps.append(
        Step(
            "device",
            "sdxl-qdq device-run",
            [
                *cli,
                "device-run",
                "--bundle",
                str(bundle),
                "--qnn-soc",
                SOC,
                "--out",
                str(out / "results"),
                *some,
                "--ep",
                "cpu",
                "--no-context",
            ],
        )
    )
    if size == "tiny":
        # stand-in weights against the study's baseline: failed checks (exit 1) are the expected verdict
        steps.append(
            Step(
                "judge",
                "pytest -m quality --qdq-from-device",
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:randomly",
                    "-m",
                    "quality",
                    "--qdq-model",
                    REAL_MODEL,
                    "--qdq-ep",
                    "cpu",
                    "--qdq-qnn-soc",
                    SOC,
                    # paths after "=": pytest would take an existing one outside the checkout for a test path
                    f"--qdq-from-device={out / 'results'}",
                    f"--qdq-coco-dir={work / 'coco'}",
                    f"--qdq-report={work / 'report'}",
                ],
                ok_codes=(0, 1),
            )
        )
        # the night's summary to the history branch: here a bare repository in the work folder stands in for GitHub
        steps.append(
            Step(
                "history",
                "sdxl-qdq history publish",
                [
                    *cli,
                    "history",
                    "publish",
                    str(work / "report" / "summary.json"),
                    "--branch",
                    "gate-history",
                    "--remote",
                    str(work / "history.git"),
                    "--device",
                    f"{SOC}-rehearsal",
                ],
            )
        )
    else:
        steps.append(
            Step(
                "judge",
                "judge on the device's K prompts",
                [
                    *cli,
                    "_judge-subset",
                    "--results",
                    str(out / "results"),
                    "--coco-dir",
                    str(work / "coco"),
                    "--out",
                    str(work / "judge.json"),
                ],
            )
        )
    return steps


def rehearse(
    work: Path,
    size: str,
    *,
    prompts: int | None = None,
    context: bool = True,
    cache_dir: Path | None = None,
    progress: Progress = print,
) -> dict[str, Any]:
    """Stand-ins, then every step of the night; writes and returns ``<work>/rehearsal.json``."""
    if not IN_CHECKOUT:
        raise ConfigError(
            "sdxl-qdq rehearse runs the repository's device and quality tests (tests/): run it from a "
            "checkout of the repository, installed with `make setup`"
        )
    work = Path(work).resolve()
    env = environment(work, cache_dir)
    from sdxl_qdq.cache import package_versions

    record: dict[str, Any] = {
        "size": size,
        "prompts": prompts,
        "commit": commit(),
        "versions": package_versions(),
        "machine": machine(),
        "steps": [],
    }
    started = time.perf_counter()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # this process's children only: restored below
    try:
        t = time.perf_counter()
        record["standins"] = stage_standins(work, size, progress=progress)
        record["steps"].append({"job": "setup", "name": "stand-ins", "seconds": round(time.perf_counter() - t, 1)})
        if not (work / "history.git").is_dir():  # the history branch's remote (GitHub's repository in the night)
            subprocess.run(["git", "init", "-q", "--bare", str(work / "history.git")], check=True)
        for step in night_steps(work, size, prompts=prompts, context=context):
            progress(f"== {step.job}: {step.name}")
            step.measured = _run(step, progress)
            record["steps"].append({"job": step.job, "name": step.name, **step.measured})
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    record["wall_min"] = round((time.perf_counter() - started) / 60, 1)
    summary = work / "report" / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        record["judge"] = {"verdict": data["verdict"], "counts": data.get("counts"), "backbones": data["backbones"]}
    elif (work / "judge.json").is_file():
        record["judge"] = json.loads((work / "judge.json").read_text())
        figures = json.loads((work / "out" / "results" / "figures.json").read_text())
        record["extrapolated"] = extrapolate(figures["timing"], record["judge"], record["steps"])
    if "judge" not in record:
        raise BuildError(f"rehearsal: the judge left no verdict in {work} (no report/summary.json, no judge.json)")
    tmp = work / ".rehearsal.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(work / "rehearsal.json")
    return record


def _per_prompt(timing: dict[str, Any]) -> float:
    """A prompt's seconds once the sessions are warm: the median of every prompt after the first."""
    import statistics

    times = timing["prompt_s"][1:] or timing["prompt_s"]
    return statistics.median(times)


def extrapolate(
    device: dict[str, Any], judge: dict[str, Any], steps: list[dict[str, Any]], counts: tuple[int, ...] = (100, 5000)
) -> dict[str, Any]:
    """Hours for N prompts from the per-prompt costs measured on K: the QDQ model's images (the device job's code on
    the CPU EP: text encoders once, two UNet calls, two decodes a prompt), the float images the judge draws (the
    same calls of the float model) and the judge's metrics; and what `make real-baseline` draws on top (the
    recalibrated model's images, three more float@1 seeds and a float@2 one)."""
    qdq, flt = _per_prompt(device), _per_prompt(judge["float_timing"])
    k = judge["prompts"]
    metrics = judge["seconds"]["metrics"] / k
    fixed = device["sessions_s"] + judge["float_timing"]["sessions_s"]
    bundle = next(s["seconds"] for s in steps if s["name"] == "sdxl-qdq bundle")
    out: dict[str, Any] = {
        "per_prompt_s": {"qdq_images": round(qdq, 1), "float_images": round(flt, 1), "metrics": round(metrics, 1)}
    }
    for n in counts:
        gate = (fixed + n * (qdq + flt + metrics)) / 3600
        # baseline: + recalibrated qdq@1+@2, float@1+@2 at seed 2, float@1 at seeds 3 and 4 (about half a float@1+@2)
        baseline = gate + n * (qdq + flt + flt) / 3600
        out[str(n)] = {
            "gate_images_and_judge_h": round(gate, 2),
            "real_baseline_draws_h": round(baseline, 2),
            "bundle_h": round(bundle / 3600, 2),
        }
    return out


def _run(step: Step, progress: Progress) -> dict[str, Any]:
    try:
        measured = run_measured(step.argv, progress=progress, ok_codes=step.ok_codes, tree=True, cwd=REPO_DIR)
    except BuildError as e:
        raise BuildError(f"rehearsal step {step.job}: {step.name} failed: {e}") from None
    return measured


def commit() -> str | None:
    """The checkout's commit, ``+`` when it has uncommitted changes; None outside a git checkout."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "memory_gb": round(total_memory_bytes() / 1e9, 1), "system": platform.platform()}
