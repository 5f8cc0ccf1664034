"""The gate itself: checks, baselines by backbone, and that a degraded recipe fails it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdxl_qdq.convert.recipe import DEFAULT_RECIPE
from sdxl_qdq.errors import ConfigError
from sdxl_qdq.flows import prepare_gate
from sdxl_qdq.judge.backbones import PROXY_CLIP, PROXY_FID, Backbones
from sdxl_qdq.judge.baseline import REQUIRED, baseline_path, load_baseline
from sdxl_qdq.judge.gate import Check


def test_check_message_has_value_baseline_limit_and_direction() -> None:
    check = Check("MSE qdq@1 vs float@1 [000-a]", 12.5, 1.0, 2.0, "max", "PSNR 37 dB")
    assert check.failure == (
        "MSE qdq@1 vs float@1 [000-a]: measured 12.5, baseline 1, limit 2 (must be at most the limit) — PSNR 37 dB"
    )
    assert Check("m", 1.5, 1.0, 2.0, "max").failure is None
    assert "at least" in Check("clip", 0.5, 1.0, 0.8, "min").failure
    assert Check("clip", 0.9, 1.0, 0.8, "min").failure is None


def test_baseline_of_another_backbone_never_gates(tmp_path: Path) -> None:
    proxy = Backbones(PROXY_CLIP, PROXY_FID)
    real = Backbones("openai/clip-vit-base-patch16", "inception-v3-2048")
    path = baseline_path("tiny", real, tmp_path, reference="float1-seed1")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"backbones": {"clip": real.clip, "fid": real.fid}}))
    with pytest.raises(
        ConfigError, match=r"other EPs, backbones or FID references only.*never gate this one.*--qdq-update-baselines"
    ):
        load_baseline("tiny", proxy, tmp_path, reference="float1-seed1")


def _write(path: Path, **fields) -> None:
    base = {
        "backbones": {"clip": PROXY_CLIP, "fid": PROXY_FID},
        "ep": "cpu",
        "fid_reference_id": "float1-seed1",
        "prompts": [],
        "prompts_sha256": "",
        "mse": {},
        "clip": {},
        "clip_delta": {},
        "clip_floor": {},
        "fid": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**base, **fields}))


def test_baseline_of_another_ep_never_gates(tmp_path: Path) -> None:
    """A QNN-EP run needs a baseline made on the QNN EP: the CPU one is refused, and a file whose recorded EP
    is not its folder's is refused too."""
    proxy = Backbones(PROXY_CLIP, PROXY_FID)
    cpu = baseline_path("tiny", proxy, tmp_path, ep="cpu", reference="float1-seed1")
    _write(cpu)
    assert load_baseline("tiny", proxy, tmp_path, ep="cpu", reference="float1-seed1")["ep"] == "cpu"
    with pytest.raises(
        ConfigError,
        match=r"on the qnn EP.*other EPs, backbones or FID references only \(cpu/.*--qdq-ep qnn --qdq-update-baselines",
    ):
        load_baseline("tiny", proxy, tmp_path, ep="qnn", reference="float1-seed1")
    moved = baseline_path("tiny", proxy, tmp_path, ep="qnn", reference="float1-seed1")
    moved.parent.mkdir(parents=True)
    moved.write_text(cpu.read_text())
    with pytest.raises(ConfigError, match="records ep 'cpu', this run's is 'qnn'"):
        load_baseline("tiny", proxy, tmp_path, ep="qnn", reference="float1-seed1")


def test_baseline_of_another_fid_reference_never_gates(tmp_path: Path) -> None:
    """A real-model run without --coco-dir would compare float-seed FID with a COCO-reference FID: refused, naming
    both references and how to get the COCO images."""
    proxy = Backbones(PROXY_CLIP, PROXY_FID)
    _write(
        baseline_path("sdxl-turbo", proxy, tmp_path, reference="coco2017-crop256"), fid_reference_id="coco2017-crop256"
    )
    with pytest.raises(
        ConfigError, match=r"uses FID reference 'coco2017-crop256', this run 'float1-seed1': pass --coco-dir DIR"
    ):
        load_baseline("sdxl-turbo", proxy, tmp_path, reference="float1-seed1")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        (json.dumps({"backbones": {}}), "lacks"),
    ],
    ids=["corrupt", "hand-edited"],
)
def test_a_broken_baseline_file_is_one_line_with_the_fix(tmp_path: Path, content: str, message: str) -> None:
    proxy = Backbones(PROXY_CLIP, PROXY_FID)
    path = baseline_path("tiny", proxy, tmp_path, reference="float1-seed1")
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_baseline("tiny", proxy, tmp_path, reference="float1-seed1")
    assert "--update-baselines" in str(info.value) and "\n" not in str(info.value)


def test_baseline_of_another_prompt_set_never_gates(tmp_path: Path) -> None:
    from sdxl_qdq.models.prompts import load_prompts

    proxy = Backbones(PROXY_CLIP, PROXY_FID)
    _write(baseline_path("tiny", proxy, tmp_path, reference="float1-seed1"), prompts_sha256="0" * 64)
    with pytest.raises(ConfigError, match="made for another prompt set"):
        load_baseline("tiny", proxy, tmp_path, reference="float1-seed1", prompts=load_prompts("all"))


def test_shipped_baselines_record_versions_and_backbones() -> None:
    files = sorted((Path(__file__).resolve().parent.parent / "baselines").glob("*/*/*__*.json"))
    assert files, "no baselines shipped"
    for path in files:
        data = json.loads(path.read_text())
        pair = Backbones(data["backbones"]["clip"], data["backbones"]["fid"])
        assert data["backbones"] == pair.record() and data["versions"], path
        assert path.stem == f"{pair.name}__{data['fid_reference_id']}"
        assert path.parent.name == data["ep"] and data["ep"] in ("cpu", "qnn"), path
        assert set(REQUIRED) <= set(data), path


@pytest.fixture(scope="module")
def degraded(qdq_artifacts, qdq_cache, tmp_path_factory):
    """The seed recipe with uint8 activations instead of uint16, built and gated against the tiny baseline."""
    from sdxl_qdq.convert.stages import build

    recipe = json.loads(DEFAULT_RECIPE.read_text())
    for workflow in recipe["workflows"].values():
        workflow["passes"]["quantization"]["activation_type"] = "uint8"
    path = tmp_path_factory.mktemp("recipe") / "uint8_activations.json"
    path.write_text(json.dumps(recipe))
    return prepare_gate(
        build("tiny", recipe=path, cache=qdq_cache), cache=qdq_cache, clip_backbone=PROXY_CLIP, fid_backbone=PROXY_FID
    )


def test_uint8_activations_leave_the_noise_window_of_the_tiny_model(degraded) -> None:
    """On the random tiny model the MSE noise windows have the power (its images mean nothing, so the harm floors,
    set for images that do, are the canary's to test: tests/test_verdicts.py). uint8 activations move its images
    far outside them but stay above 30 dB PSNR vs float: `changed`, which fails under --strict-gate."""
    from sdxl_qdq.judge.summary import verdict

    checks = degraded.all_checks()
    moved = [c for c in checks if c.metric.startswith("MSE") and c.status != "pass"]
    assert len(moved) >= 100, f"only {len(moved)} of 200 MSE checks left their noise window"
    assert all(
        "measured" in m and "baseline" in m and "limit" in m and "at most" in m
        for m in (c.verdict(strict=True) for c in moved)
    )
    assert verdict(checks, strict=True) == "failed"
