"""The gate itself: checks, baselines by backbone, and that a degraded recipe fails it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quant.build.recipe import DEFAULT_RECIPE
from quant.errors import ConfigError
from quant.flows import prepare_gate
from quant.judge.backbones import PROXY_CLIP, PROXY_FID, Backbones
from quant.judge.baseline import baseline_path, load_baseline
from quant.judge.gate import Check


def test_check_message_has_value_baseline_limit_and_direction() -> None:
    check = Check("MSE qdq@1 vs float@1 [000-a]", 12.5, 1.0, 2.0, "max", "PSNR 37 dB")
    assert check.failure == ("MSE qdq@1 vs float@1 [000-a]: measured 12.5, baseline 1, limit 2 "
                             "(must be at most the limit) — PSNR 37 dB")
    assert Check("m", 1.5, 1.0, 2.0, "max").failure is None
    assert "at least" in Check("clip", 0.5, 1.0, 0.8, "min").failure
    assert Check("clip", 0.9, 1.0, 0.8, "min").failure is None


def test_baseline_of_another_backbone_never_gates(tmp_path: Path) -> None:
    proxy = Backbones(PROXY_CLIP, PROXY_FID)
    real = Backbones("openai/clip-vit-base-patch16", "inception-v3-2048")
    path = baseline_path("tiny", real, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"backbones": {"clip": real.clip, "fid": real.fid}}))
    with pytest.raises(ConfigError, match="other EPs or backbones only.*never gate this one.*--update-baselines"):
        load_baseline("tiny", proxy, tmp_path)


def test_baseline_of_another_ep_never_gates(tmp_path: Path) -> None:
    """A QNN-EP run needs a baseline made on the QNN EP: the CPU one is refused, and a file whose recorded EP
    is not its folder's is refused too."""
    proxy = Backbones(PROXY_CLIP, PROXY_FID)
    cpu = baseline_path("tiny", proxy, tmp_path, ep="cpu")
    cpu.parent.mkdir(parents=True)
    cpu.write_text(json.dumps({"backbones": {"clip": proxy.clip, "fid": proxy.fid}, "ep": "cpu"}))
    assert load_baseline("tiny", proxy, tmp_path, ep="cpu")["ep"] == "cpu"
    with pytest.raises(ConfigError, match=r"on the qnn EP.*other EPs or backbones only \(cpu/.*--ep qnn --update-baselines"):
        load_baseline("tiny", proxy, tmp_path, ep="qnn")
    moved = baseline_path("tiny", proxy, tmp_path, ep="qnn")
    moved.parent.mkdir(parents=True)
    moved.write_text(cpu.read_text())
    with pytest.raises(ConfigError, match="made on the 'cpu' EP, not 'qnn'"):
        load_baseline("tiny", proxy, tmp_path, ep="qnn")


def test_shipped_baselines_record_versions_and_backbones() -> None:
    files = sorted((Path(__file__).resolve().parent.parent / "baselines").glob("*/*/*__*.json"))
    assert files, "no baselines shipped"
    for path in files:
        data = json.loads(path.read_text())
        assert set(data["backbones"]) == {"clip", "fid"} and data["versions"], path
        assert path.stem == Backbones(data["backbones"]["clip"], data["backbones"]["fid"]).name
        assert path.parent.name == data["ep"] and data["ep"] in ("cpu", "qnn"), path


@pytest.fixture(scope="module")
def degraded(artifacts, cache, tmp_path_factory):
    """The seed recipe with uint8 activations instead of uint16, built and gated against the tiny baseline."""
    from quant.build.stages import build

    recipe = json.loads(DEFAULT_RECIPE.read_text())
    for workflow in recipe["workflows"].values():
        workflow["passes"]["quantization"]["activation_type"] = "uint8"
    path = tmp_path_factory.mktemp("recipe") / "uint8_activations.json"
    path.write_text(json.dumps(recipe))
    return prepare_gate(build("tiny", recipe=path, cache=cache), cache=cache, clip_backbone=PROXY_CLIP, fid_backbone=PROXY_FID)


def test_gate_fails_a_recipe_with_uint8_activations(degraded) -> None:
    failures = [c.failure for c in degraded.all_checks() if c.failure]
    mse_failures = [f for f in failures if f.startswith("MSE")]
    assert len(mse_failures) >= 100, f"only {len(mse_failures)} of 200 MSE checks failed:\n" + "\n".join(failures[:5])
    assert all("measured" in f and "baseline" in f and "limit" in f and "at most" in f for f in mse_failures)
