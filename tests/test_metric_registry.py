"""The gated-metric registry (sdxl_qdq/judge/checks/): a metric is one module, and everything that gates, records,
reports or compares reads it from there. Shown with a small real metric added as one file (per-image SSIM of qdq@k
against float@k, torchmetrics' functional SSIM): it is measured, its noise drawn, its baseline entry written, its
checks made, its harm floor and rows reported, its A/B rows compared and its quality tests collected, with no other
file changed."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sdxl_qdq.judge.checks as checks_pkg
from sdxl_qdq.judge.backbones import Backbones
from sdxl_qdq.judge.checks import GatedMetric, harm_floors, registry
from sdxl_qdq.judge.evaluation import STEPS, VARIANTS, evaluate, seed_noise
from sdxl_qdq.models.prompts import Prompt
from sdxl_qdq.paths import PACKAGE_DIR
from sdxl_qdq.run.generate import image_name, response_name, save_response

SSIM = '''"""Per-image SSIM of qdq@k against float@k (higher is better): window 3 σ of what re-calibrating moves it."""

from __future__ import annotations

import numpy as np

from sdxl_qdq.judge.checks import CheckKind, GatedMetric

SSIM_DROP = 0.2  # harm: an image's SSIM more than 0.2 under its baseline


def ssim(a, b) -> float:
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, y = (torch.from_numpy(np.asarray(i, dtype=np.float32) / 255).permute(2, 0, 1)[None] for i in (a, b))
    return float(structural_similarity_index_measure(y, x, data_range=1.0))


class Ssim(GatedMetric):
    name = "ssim"
    order = 15
    kinds = (CheckKind("ssim", per_prompt=True),)
    better_is = "higher"
    harm = {"ssim_drop": SSIM_DROP}
    baseline_keys = ("ssim",)
    required = False

    def measure(self, images, prompts, backbones, progress, dirs, reference):
        return {k: [ssim(f, q) for f, q in zip(images[f"float@{k}"], images[f"qdq@{k}"])] for k in (1, 2)}

    def noise(self, ev, sets):
        return {
            "ssim_recalibrated": {
                k: [ssim(f, q) for f, q in zip(sets.float_sets[k], images)] for k, images in sets.recalibrated.items()
            }
        }

    def _sd(self, ev):
        return {
            k: float(np.std(np.subtract(ev.noise["ssim_recalibrated"][k], ev.measured["ssim"][k]), ddof=1))
            for k in ev.measured["ssim"]
        }

    def baseline_entries(self, ev):
        sd = self._sd(ev)
        return {"ssim": {str(k): {"values": v, "tolerance": 3 * sd[k]} for k, v in ev.measured["ssim"].items()}}

    def derivation(self, ev):
        return "SSIM: limit_i = baseline_i - 3 σ_k of re-calibration.", {"ssim_recalibration_std": self._sd(ev)}

    def check(self, gate, kind, key, prompt=None):
        from sdxl_qdq.judge.gate import Check

        entry, i = gate.baseline["ssim"][key], gate.index(prompt)
        measured = gate.evaluation.measured["ssim"][int(key)][gate.evaluation.prompts.index(prompt)]
        base = entry["values"][i]
        return Check(f"SSIM qdq@{key} vs float@{key} [{prompt.id}]", measured, base, base - entry["tolerance"], "min",
                     harm=base - SSIM_DROP, per_prompt=True)

    def report_rows(self, gate):
        ev = gate.evaluation
        return [(f"mean SSIM qdq@{k}", float(np.mean(v)), float("nan"), "") for k, v in ev.measured["ssim"].items()]

    def differences(self, a, b, key, reference):
        from sdxl_qdq.judge.compare import paired

        k = int(key)
        return [paired(f"SSIM qdq@{k}", a.measured["ssim"][k], b.measured["ssim"][k], "higher")]


METRIC = Ssim()
'''


def test_the_registry_holds_the_gates_metrics_in_their_order() -> None:
    metrics = registry()
    assert [m.name for m in metrics] == ["mse", "clip", "fid", "kid", "cmmd", "text_response"]
    assert [k.key for m in metrics for k in m.kinds] == [
        *("mse", "clip_delta", "clip_floor", "fid", "kid", "cmmd", "text_cosine", "text_gain")
    ]
    assert list(harm_floors()) == [
        *("psnr_floor_db", "psnr_drop_db", "clip_drop", "clip_mean_drop", "fid_rise"),
        *("kid_harm_windows", "cmmd_harm_windows"),
        *("text_cosine_floor", "text_cosine_drop", "text_gain_floor", "text_gain_rise"),
    ]
    modules = sorted(p.stem for p in (PACKAGE_DIR / "judge" / "checks").glob("*.py") if p.stem != "__init__")
    assert modules == sorted(m.name for m in metrics), "every module in sdxl_qdq/judge/checks/ is one metric"


def test_only_the_metric_modules_name_metrics() -> None:
    """The gate, the summary, the baseline writer and the A/B read metrics from the registry: none of them names a
    check kind in its code (docstrings, and the backbones' own "clip"/"fid" keys, aside)."""
    kinds = {k.key for m in registry() for k in m.kinds}
    for name in ("gate.py", "summary.py", "baseline.py", "compare.py"):
        tree = ast.parse((PACKAGE_DIR / "judge" / name).read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        backbone_keys = {
            id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript) and "backbones" in ast.unparse(n.value)
        }
        strings = {
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant)
            and isinstance(n.value, str)
            and id(n) not in docstrings
            and id(n) not in backbone_keys
        }
        assert not strings & kinds, f"sdxl_qdq/judge/{name} names {sorted(strings & kinds)}: ask the registry instead"


@pytest.fixture
def ssim_added(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The SSIM metric as one more file of the checks folder (a second folder on the package's path, so nothing of
    the installed package is touched); the registry forgets it afterwards."""
    folder = tmp_path / "more_checks"
    folder.mkdir()
    (folder / "ssim.py").write_text(SSIM)
    monkeypatch.setattr(checks_pkg, "__path__", [*checks_pkg.__path__, str(folder)])
    monkeypatch.delitem(sys.modules, "sdxl_qdq.judge.checks.ssim", raising=False)
    registry.cache_clear()
    yield folder
    registry.cache_clear()


def _images(folder: Path, prompts: list[Prompt], seed: int, base: np.ndarray | None = None) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, p in enumerate(prompts):
        image = rng.integers(0, 256, (64, 64, 3)) if base is None else base[i] + rng.integers(-12, 13, base[i].shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / image_name(p))
        # the text response drawn beside each image: the same for every set but for small seeded noise
        response = np.random.default_rng(100 + i).standard_normal((4, 8, 8)) + 0.1 * rng.standard_normal((4, 8, 8))
        save_response(response, folder / response_name(p))
    return folder


def test_a_metric_is_one_file(ssim_added: Path, tmp_path: Path) -> None:
    from sdxl_qdq.judge.baseline import baseline_from_evaluation
    from sdxl_qdq.judge.compare import compare
    from sdxl_qdq.judge.gate import Gate
    from sdxl_qdq.judge.report import _summary_rows
    from sdxl_qdq.judge.summary import summary, validate

    assert [m.name for m in registry()] == ["mse", "ssim", "clip", "fid", "kid", "cmmd", "text_response"]
    prompts = [Prompt(index=i, text=f"a red circle number {i}", split="test") for i in range(6)]
    base = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3))
    dirs = {label: _images(tmp_path / label, prompts, seed, base) for seed, label in enumerate(VARIANTS)}
    reference = [np.asarray(x, dtype=np.uint8) for x in base]
    backbones = Backbones("proxy-clip-s0-v1", "proxy-conv64-s0-v2")
    ev = evaluate(
        model="tiny",
        recipe="r",
        prompts=prompts,
        backbones=backbones,
        image_dirs=dirs,
        reference_images=reference,
        reference_name="ref",
        reference_id="ref-id",
    )
    assert set(ev.measured) == {"ssim", "kid", "cmmd", "text_response"}
    assert all(0 < s < 1 for k in STEPS for s in ev.measured["ssim"][k])

    ev.noise = seed_noise(
        ev,
        recalibrated={k: _images(tmp_path / f"recal{k}", prompts, 10 + k, base) for k in STEPS},
        float1_seeds={s: _images(tmp_path / f"seed{s}", prompts, 20 + s, base) for s in (2, 3)},
        float2_other_seed=_images(tmp_path / "f2", prompts, 30, base),
        reference_images=reference,
    )
    assert {"ssim_recalibrated", "recalibrated_mse", "clip_diff_std", "fid_std"} <= set(ev.noise)
    baseline = baseline_from_evaluation(ev)
    assert list(baseline["ssim"]) == ["1", "2"] and "SSIM" in baseline["derivation"]["text"]
    assert "ssim_recalibration_std" in baseline["derivation"]["noise"]

    gate = Gate(ev, baseline)
    names = [c.metric for c in gate.all_checks()]
    assert sum(n.startswith("SSIM qdq@1") for n in names) == len(prompts)
    assert names.index(f"SSIM qdq@1 vs float@1 [{prompts[0].id}]") == len(prompts)  # after MSE@1, before CLIP@1
    assert all(c.status == "pass" for c in gate.all_checks() if c.metric.startswith("SSIM"))  # against itself
    data = summary(gate)
    validate(data)
    assert data["harm_floors"]["ssim_drop"] == 0.2
    assert any(c["metric"].startswith("SSIM qdq@2") for c in data["checks"])
    assert any("mean SSIM qdq@1" in row for row in _summary_rows(gate))
    # the set metrics' convergence (the report's "Set metrics against the number of prompts"): the last point is the
    # value measured on every prompt
    from sdxl_qdq.judge.set_distance import convergence, convergence_html

    curves = convergence(ev)
    assert set(curves) == {"FID", "KID×1000", "CMMD"} and set(curves["KID×1000"]) == {"float@1", "qdq@1"}
    assert [m for m, _ in curves["CMMD"]["qdq@1"]] == [3, 4, 5, 6]
    assert curves["KID×1000"]["qdq@1"][-1][1] == pytest.approx(ev.measured["kid"]["values"]["qdq@1"])
    assert curves["FID"]["qdq@1"][-1][1] == pytest.approx(ev.fid["qdq@1"], rel=1e-3)
    assert "Set metrics against the number of prompts" in convergence_html(ev)
    assert [r.metric for r in compare(ev, ev, reference)][:3] == ["MSE qdq@1 vs float@1", "SSIM qdq@1", "CLIP qdq@1"]


def test_a_metric_file_gets_its_quality_tests(ssim_added: Path, tmp_path: Path) -> None:
    """pytest -m quality collects the new metric's per-image checks by itself (tests/test_quality.py unchanged)."""
    plugin = tmp_path / "add_ssim_checks.py"
    plugin.write_text(f"import sdxl_qdq.judge.checks as c\nc.__path__.append({str(ssim_added)!r})\n")
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "add_ssim_checks", "-p", "no:xdist", "-p", "no:cacheprovider"),
            *("--collect-only", "-q", "-m", "quality", "tests/test_quality.py"),
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    ids = done.stdout.splitlines()
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    assert sum("-ssim-1step]" in i for i in ids) == sum("-mse-1step]" in i for i in ids) > 0, ids[:5]


def test_a_module_without_a_metric_is_refused(tmp_path: Path) -> None:
    (tmp_path / "half_done.py").write_text("X = 1\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checks_pkg, "__path__", [*checks_pkg.__path__, str(tmp_path)])
        mp.delitem(sys.modules, "sdxl_qdq.judge.checks.half_done", raising=False)
        registry.cache_clear()
        try:
            with pytest.raises(TypeError, match=r"half_done defines no METRIC"):
                registry()
        finally:
            registry.cache_clear()
    assert isinstance(registry()[0], GatedMetric)
