"""Verdicts people can act on: two windows per check (changed vs harmed), what CI reads (summary.json, the step
summary, JUnit properties), and a report that opens with what matters."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from sdxl_qdq.convert.recipe import DEFAULT_RECIPE
from sdxl_qdq.judge.backbones import Backbones
from sdxl_qdq.judge.checks.mse import PSNR_FLOOR_DB, mse_at_psnr
from sdxl_qdq.judge.evaluation import Evaluation
from sdxl_qdq.judge.gate import Check, Gate
from sdxl_qdq.judge.metrics import psnr_db
from sdxl_qdq.judge.summary import append_step_summary, markdown, summary, validate, verdict
from sdxl_qdq.models.prompts import Prompt
from sdxl_qdq.run.generate import image_name


@pytest.mark.parametrize(("measured", "status"), [(1.5, "pass"), (2.5, "changed"), (3.5, "failed")])
def test_a_check_has_a_noise_window_and_a_harm_floor(measured: float, status: str) -> None:
    check = Check("m", measured, 1.0, 2.0, "max", harm=3.0)
    assert check.status == status
    assert (check.failure is not None) == (status == "failed")
    assert (check.change is not None) == (status == "changed")
    assert (check.verdict(strict=True) is None) == (status == "pass")
    assert (check.verdict(strict=False) is None) == (status != "failed")
    low = Check("clip", -measured, -1.0, -2.0, "min", harm=-3.0)  # the mirror image
    assert low.status == status


def test_a_harm_floor_is_never_tighter_than_the_noise_window() -> None:
    """Failing needs a change outside the noise first: a baseline already past its floor cannot fail in noise."""
    assert Check("m", 2.5, 1.0, 3.0, "max", harm=2.0).status == "pass"
    assert Check("m", 2.5, 1.0, 3.0, "max", harm=2.0).harm == 3.0
    assert Check("m", 2.5, 1.0, 2.0, "max").status == "failed"  # no harm floor: the noise window decides


def test_messages_name_the_window_that_was_crossed() -> None:
    assert "harm floor 3 (must be at most the harm floor)" in Check("m", 3.5, 1.0, 2.0, "max", harm=3.0).failure
    assert (
        "limit 2 (must be at most the limit); within the harm floor 3"
        in Check("m", 2.5, 1.0, 2.0, "max", harm=3.0).change
    )


def _gate(tmp_path: Path, mse: list[float], base_mse: list[float], clip: list[float] | None = None) -> Gate:
    n = len(mse)
    prompts = [Prompt(index=i, text=f"prompt {i}", split="train") for i in range(n)]
    folders = {}
    rng = np.random.default_rng(0)
    from PIL import Image

    for label in ("float@1", "qdq@1", "float@2", "qdq@2"):
        folders[label] = tmp_path / label
        folders[label].mkdir()
        for p in prompts:
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folders[label] / image_name(p))
    clip = clip or [90.0] * n
    ev = Evaluation(
        model="synthetic",
        backbones=Backbones("c", "f"),
        prompts=prompts,
        ep="cpu",
        recipe="r",
        image_dirs=folders,
        mse={1: mse, 2: mse},
        clip={"float@1": [90.0] * n, "qdq@1": clip, "qdq@2": clip},
        fid={"float@1": 1.0, "qdq@1": 1.0, "qdq@2": 1.0},
        fid_reference="ref",
        fid_reference_id="ref-id",
    )
    baseline = {
        "prompts": [p.id for p in prompts],
        "ep": "cpu",
        "mse": {k: {"values": base_mse, "tolerance": [0.1 * b for b in base_mse]} for k in ("1", "2")},
        "clip": {"qdq@1": [90.0] * n, "qdq@2": [90.0] * n},
        "clip_delta": {k: {"value": 0.0, "tolerance": 0.2} for k in ("1", "2")},
        "clip_floor": {k: {"tolerance": 1.0} for k in ("1", "2")},
        "fid": {k: {"value": 1.0, "tolerance": 0.1} for k in ("qdq@1", "qdq@2")},
    }
    return Gate(ev, baseline)


def test_image_harm_is_a_psnr_floor_or_a_drop_under_a_poor_baseline(tmp_path: Path) -> None:
    """Baseline 40 dB: harm below 30 dB. Baseline 24 dB (the real model's 1-step median is 22.6 dB): harm 6 dB
    under it, 18 dB."""
    good, poor = mse_at_psnr(40.0), mse_at_psnr(24.0)
    gate = _gate(
        tmp_path, [mse_at_psnr(35.0), mse_at_psnr(29.0), mse_at_psnr(20.0), mse_at_psnr(17.0)], [good, good, poor, poor]
    )
    statuses = [gate.check("mse", "1", p).status for p in gate.evaluation.prompts]
    assert statuses == ["changed", "failed", "changed", "failed"]
    assert psnr_db(gate.check("mse", "1", gate.evaluation.prompts[0]).harm) == pytest.approx(PSNR_FLOOR_DB)
    assert psnr_db(gate.check("mse", "1", gate.evaluation.prompts[2]).harm) == pytest.approx(18.0)


def test_per_image_clip_harm_is_a_ten_percent_drop(tmp_path: Path) -> None:
    gate = _gate(tmp_path, [1.0] * 3, [1.0] * 3, clip=[89.5, 85.0, 80.0])
    assert [gate.check("clip_floor", "1", p).status for p in gate.evaluation.prompts] == ["pass", "changed", "failed"]


def test_summary_json_follows_its_schema_and_counts_every_status(tmp_path: Path) -> None:
    gate = _gate(tmp_path, [mse_at_psnr(35.0), mse_at_psnr(29.0), 1e-9], [mse_at_psnr(40.0)] * 3)
    data = summary(gate)
    validate(data)
    assert data["verdict"] == "failed" and sum(data["counts"].values()) == len(data["checks"]) == len(gate.all_checks())
    assert data["counts"]["failed"] >= 2 and data["counts"]["changed"] >= 2
    groups = list(dict.fromkeys(c["group"] for c in data["checks"]))  # one per kind of check and step or label
    assert len(groups) == len(gate.groups()) and not any(p.id in g for g in groups for p in gate.evaluation.prompts)
    assert "CLIP qdq@1 [c]" in groups  # the backbone's bracket stays, the prompt's goes
    bad = json.loads(json.dumps(data))
    bad["checks"][0]["status"] = "fine"
    with pytest.raises(jsonschema.ValidationError, match="'fine' is not one of"):
        validate(bad)
    del bad["checks"][0]
    bad.pop("verdict")
    with pytest.raises(jsonschema.ValidationError, match="'verdict' is a required property"):
        validate(bad)


def test_verdict_is_changed_without_strict_and_failed_with_it() -> None:
    changed = [Check("m", 2.5, 1.0, 2.0, "max", harm=3.0), Check("n", 1.0, 1.0, 2.0, "max")]
    assert verdict(changed, strict=False) == "changed" and verdict(changed, strict=True) == "failed"
    assert verdict(changed[1:], strict=True) == "pass"


def test_step_summary_renders_what_failed_first(tmp_path: Path, monkeypatch) -> None:
    gate = _gate(tmp_path, [mse_at_psnr(35.0), mse_at_psnr(25.0)], [mse_at_psnr(40.0)] * 2)
    (tmp_path / "summary.json").write_text(json.dumps(summary(gate)))
    target = tmp_path / "step_summary.md"
    target.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    append_step_summary(tmp_path / "summary.json")
    text = target.read_text()
    assert text.startswith("earlier step\n### ❌ Quality gate FAILED: synthetic (r)")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| status")]
    cells = [[c.strip() for c in row.strip("|").split(" | ")] for row in rows]
    assert all(len(c) == 6 for c in cells), rows
    assert cells[0][0] == "failed" and cells[0][1].startswith("MSE qdq@")
    assert {c[0] for c in cells} == {"failed", "changed"}
    assert float(cells[0][2]) == pytest.approx(mse_at_psnr(25.0), rel=1e-4)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    assert append_step_summary(tmp_path / "summary.json") is None


def test_markdown_escapes_table_cells() -> None:
    data = {
        "verdict": "changed",
        "model": "m",
        "recipe": "r",
        "ep_detail": "cpu",
        "strict": False,
        "prompts": 1,
        "backbones": {"clip": "c", "fid": "f"},
        "counts": {"pass": 0, "changed": 1, "failed": 0},
        "checks": [
            {"metric": "a|b", "measured": 1.0, "baseline": 1.0, "limit": 1.0, "harm": "inf", "status": "changed"}
        ],
    }
    row = markdown(data).splitlines()[-1]
    assert row == "| changed | a\\|b | 1 | 1 | 1 | inf |"


def test_report_opens_with_the_verdict_and_has_a_heat_map_per_pair(tmp_path: Path) -> None:
    from sdxl_qdq.judge.report import write_report

    gate = _gate(tmp_path, [mse_at_psnr(35.0), mse_at_psnr(25.0)], [mse_at_psnr(40.0)] * 2)
    page = write_report(gate, tmp_path / "report").read_text()
    h1 = re.search(r"<h1[^>]*>(.*?)</h1>", page).group(1)
    assert h1 == "Quality gate: synthetic — FAIL"
    assert page.index("outside their harm floor") < page.index("<h2>Images") < page.index("<h2>Metrics vs baseline")
    heat = sorted((tmp_path / "report" / "images").glob("diff-*/*.png"))
    assert len(heat) == 4  # 2 prompts × 2 step counts
    from PIL import Image

    with Image.open(heat[0]) as im:
        assert im.mode == "L" and im.size == (8, 8)
    assert "<details><summary>All 8 per-prompt checks" in page  # 2 prompts × (MSE, CLIP floor) × 2 step counts
    assert "The other" not in page  # only 2 prompts: all shown


def test_report_groups_failures_by_kind_of_check_and_shows_the_diagnosis_first(tmp_path: Path) -> None:
    """A failing report opens with one row per kind of check (count failed, median and worst with its prompt),
    then where the error comes from; the per-image rows are folded below (they opened the page before)."""
    from sdxl_qdq.diagnose.failure import Section
    from sdxl_qdq.judge.report import write_report

    mse = [mse_at_psnr(25.0), mse_at_psnr(20.0), mse_at_psnr(45.0)]
    gate = _gate(tmp_path, mse, [mse_at_psnr(40.0)] * 3)
    sections = [
        Section("worst layers", ("unet  12.00 dB  /up/norm1/GroupNormalization_output_0",)),
        Section("where QNN departs", error="KeyError: 'x'"),
    ]
    page = write_report(gate, tmp_path / "report", diagnosis=sections).read_text()
    rows = re.findall(r"<tr class=(failed|changed)><td class=l>(MSE qdq@1 vs float@1)</td>(.*?)</tr>", page)
    assert len(rows) == 1, page[:3000]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[0][2])
    failed, changed, of, median, worst, where = cells[:6]
    assert (failed, changed, of) == ("2", "0", "3")
    assert float(median) == pytest.approx(np.median(mse[:2]), rel=1e-4)
    assert float(worst) == pytest.approx(mse[1], rel=1e-4) and where == gate.evaluation.prompts[1].id
    grouped = page.index("MSE qdq@1 vs float@1</td>")
    diagnosis = page.index("Where the error comes from")
    one_by_one = page.index("checks outside their windows, one by one")
    assert grouped < diagnosis < one_by_one < page.index("<h2>Images")
    assert "/up/norm1/GroupNormalization_output_0" in page
    assert "(diagnosis failed, the verdict stands: KeyError: &#x27;x&#x27;)" in page
    (tmp_path / "b").mkdir()
    passing = write_report(_gate(tmp_path / "b", [mse_at_psnr(45.0)] * 3, [mse_at_psnr(45.0)] * 3), tmp_path / "ok")
    assert "Where the error comes from" not in passing.read_text()


def test_quality_tests_record_their_numbers_in_junit_xml(tmp_path: Path) -> None:
    """`judge` puts metric, measured, baseline, limit, harm and status on each test (record_property)."""
    (tmp_path / "test_probe.py").write_text(
        "from sdxl_qdq.judge.gate import Check\n"
        "def test_changed(qdq_judge):\n    qdq_judge(Check('MSE x', 2.5, 1.0, 2.0, 'max', harm=3.0))\n"
        "def test_failed(qdq_judge):\n    qdq_judge(Check('MSE y', 3.5, 1.0, 2.0, 'max', harm=3.0))\n"
    )
    xml = tmp_path / "junit.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", "test_probe.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "1 failed, 1 passed" in done.stdout, done.stdout[-2000:]
    assert "QualityChanged" in done.stdout and "within the harm floor 3" in done.stdout
    text = xml.read_text()
    assert '<property name="status" value="changed"' in text and '<property name="status" value="failed"' in text
    assert '<property name="harm" value="3.0"' in text
    strict = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--qdq-strict-gate", "test_probe.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert "2 failed" in strict.stdout, strict.stdout[-2000:]


# ---------------------------------------------- recipe variants on the canary (a model whose prompts matter)
def _variant(tmp: Path, name: str) -> Path:
    recipe = json.loads(DEFAULT_RECIPE.read_text())
    quantization = [w["passes"]["quantization"] for w in recipe["workflows"].values()]
    if name == "uint8-activations":
        for q in quantization:
            q["activation_type"] = "uint8"
    elif name == "uint4-weights":
        for q in quantization:
            q["precision"] = "uint4"
    elif name == "no-mask-surgery":
        for c in ("text_encoder", "text_encoder_2"):
            recipe["workflows"][c]["passes"].pop("mask_surgery")
    elif name == "1-step-calibration":
        recipe["calibration"]["steps"] = [1]
    elif name == "symmetric-weights":
        for q in quantization:
            q["weight_symmetric"] = True
    recipe["name"] = name
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(recipe))
    return path


@pytest.fixture(scope="module")
def canary_gate(qdq_cache, tmp_path_factory):
    """The canary gated with a recipe variant (built once per variant and module)."""
    from sdxl_qdq.convert.stages import build
    from sdxl_qdq.flows import prepare_gate

    tmp, built = tmp_path_factory.mktemp("variants"), {}

    def gate(name: str):
        if name not in built:
            recipe = DEFAULT_RECIPE if name == "seed" else _variant(tmp, name)
            built[name] = prepare_gate(build("canary", recipe=recipe, cache=qdq_cache), cache=qdq_cache)
        return built[name]

    return gate


# Measured on the canary (CPU EP): checks outside the harm floor of 404 — uint8 activations 399, no mask surgery
# 404, uint4 weights 332, 1-step calibration 202 (all of 2-step). In CI: uint8; the others under -m slow.
HARMFUL = [
    "uint8-activations",
    pytest.param("no-mask-surgery", marks=pytest.mark.slow),
    pytest.param("uint4-weights", marks=pytest.mark.slow),
    pytest.param("1-step-calibration", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("variant", HARMFUL)
def test_a_harmful_recipe_fails_the_gate(canary_gate, variant: str) -> None:
    gate = canary_gate(variant)
    failed = [c for c in gate.all_checks() if c.status == "failed"]
    assert verdict(gate.all_checks(), strict=False) == "failed"
    assert len(failed) >= 100, f"{variant}: only {len(failed)} checks outside their harm floor"
    assert any(c.metric.startswith("MSE qdq@2") for c in failed) and any(
        c.metric.startswith("CLIP qdq@2") for c in failed
    )
    if variant == "uint8-activations":  # the set metrics see it too (canary: KID×1000 0.106 -> 10.8, CMMD 0.004 -> 0.8)
        names = {c.metric.split(" [")[0] for c in failed}
        assert names >= {"KID×1000 qdq@1", "KID×1000 qdq@2", "CMMD qdq@1", "CMMD qdq@2"}


def test_the_text_response_check_passes_the_seed_recipe_and_fails_without_the_mask_surgery(canary_gate) -> None:
    """The text-conditioning check (sdxl_qdq/judge/checks/text_response.py) on the canary: every prompt's response
    passes on the seed recipe; with the text encoders' attention-mask surgery removed (the mask's -3.4e38 then sets
    their activations' quantization range) the prompts' responses fail."""

    def text(name: str) -> list:
        return [c for c in canary_gate(name).all_checks() if c.metric.startswith("text response")]

    seed = text("seed")
    assert len(seed) == 2 * 100 and all(c.status == "pass" for c in seed), [c.failure for c in seed if c.failure][:3]
    planted = text("no-mask-surgery")
    failed = [c for c in planted if c.status == "failed"]
    assert len(failed) >= 100, f"only {len(failed)} of {len(planted)} text checks failed"


def test_a_harmless_recipe_change_is_changed_not_failed(canary_gate) -> None:
    """Symmetric weights: every image stays above 42 dB PSNR vs float and CLIP within its noise; 1-2 checks leave their
    noise window (a 2-step MSE, FID qdq@1 +33 %). That is a change to report, not a broken model."""
    checks = canary_gate("symmetric-weights").all_checks()
    statuses = [c.status for c in checks]
    assert "failed" not in statuses, [c.failure for c in checks if c.failure][:3]
    assert "changed" in statuses
    assert verdict(checks, strict=False) == "changed" and verdict(checks, strict=True) == "failed"


def test_compare_ranks_a_better_recipe_over_a_worse_one_and_a_recipe_level_with_itself(canary_gate, qdq_cache) -> None:
    from sdxl_qdq.judge.compare import compare

    seed, worse = canary_gate("seed"), canary_gate("uint8-activations")
    reference = seed.evaluation  # the canary's FID reference: the world's own rendering of each caption
    from sdxl_qdq.convert.stages import build
    from sdxl_qdq.flows import reference_set

    images, _ = reference_set(
        build("canary", cache=qdq_cache),
        seed.evaluation.prompts,
        cache=qdq_cache,
        coco_dir=None,
        progress=lambda _: None,
    )
    rows = {r.metric: r for r in compare(worse.evaluation, reference, images)}  # B = seed vs A = uint8 activations
    for metric, row in rows.items():
        assert row.verdict == "better", f"{metric}: {row.line('uint8', 'seed')}"
        assert (row.high < 0) if row.better_is == "lower" else (row.low > 0)  # the interval excludes 0
    same = compare(reference, reference, images)
    assert all(r.verdict == "indistinguishable" and r.difference == 0 for r in same), [r.line() for r in same]
