"""The host → device → host path: the bundle (what it holds, verification), the device pipeline (numpy, the host's
noise and scheduler) drawing what the host pipeline draws, the device steps without torch, judging device results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.bundle import write_bundle
from sdxl_qdq.device.bundle import Bundle
from sdxl_qdq.device.check import native_python_error
from sdxl_qdq.device.night import DeviceResults
from sdxl_qdq.device.pipeline import DevicePipeline
from sdxl_qdq.errors import ConfigError, IntegrityError
from sdxl_qdq.models.prompts import load_prompts
from sdxl_qdq.run.pipeline import OrtSDXLPipeline
from sdxl_qdq.runtime import QnnOptions

PROMPTS = 4


@pytest.fixture(scope="module")
def bundle_dir(qdq_artifacts, tmp_path_factory) -> Path:
    prompts = load_prompts("all", path=qdq_artifacts.source.prompts)[:PROMPTS]
    return write_bundle(
        qdq_artifacts,
        tmp_path_factory.mktemp("bundle") / "tiny",
        qnn=QnnOptions("60"),
        prompts=prompts,
        parity_prompts=2,
        context=False,
    )


def test_bundle_holds_what_the_device_needs(bundle_dir: Path, qdq_artifacts) -> None:
    bundle = Bundle.load(bundle_dir, soc="60")
    files = set(bundle.manifest["files"])
    assert {f"models/{c}/{n}" for c in COMPONENTS for n in ("model.onnx", "io.json")} <= files
    assert {"schedule.npz", "pipeline.json", "prompts/empty.npz"} <= files
    assert len([f for f in files if f.startswith("prompts/")]) == PROMPTS + 1  # each prompt's inputs, the empty prompt
    assert bundle.empty_prompt()["input_ids"].shape == (1, 77)
    assert bundle.manifest["keys"]["qdq"] == qdq_artifacts.keys["qdq"] and bundle.soc == "60"
    assert [s.timestep for s in bundle.schedule(2)] == [999.0, 499.0]
    inputs = bundle.inputs(bundle.prompts[0])
    assert inputs["input_ids"].shape == (1, 77) and inputs["noise"].shape[0] == 2
    call = bundle.parity("unet")[0]
    assert set(call) == {"in", "cpu", "float"} and call["cpu"]["out_sample"].shape == call["in"]["sample"].shape
    assert not any("torch" in f or f.endswith((".bin", ".pt")) for f in files)


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove", "add"])
def test_a_changed_bundle_is_refused_naming_the_file(bundle_dir: Path, tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    target = copy / "models" / "unet" / "model.onnx.data"
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "remove":
        target.unlink()
    else:
        (copy / "models" / "unet" / "extra.onnx").write_bytes(b"x")
    with pytest.raises(
        IntegrityError, match=r"unet/(model\.onnx\.data|extra\.onnx)|files its manifest does not list"
    ) as info:
        Bundle.load(copy)
    assert "copy the whole bundle again" in str(info.value) and "\n" not in str(info.value)


def test_a_bundle_for_another_chip_is_refused(bundle_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"made for QNN soc 60 .* this run is for soc 69 .* --qnn-soc 69"):
        Bundle.load(bundle_dir, soc="69")


def test_device_pipeline_draws_what_the_host_pipeline_draws(bundle_dir: Path, qdq_artifacts) -> None:
    """The same QDQ models on the CPU EP: the device's numpy replay of the host's noise and diffusers' scheduler
    gives the host pipeline's latents, images and text responses, bit for bit."""
    bundle = Bundle.load(bundle_dir)
    device = DevicePipeline(bundle, ep="cpu")
    host = OrtSDXLPipeline(qdq_artifacts.qdq)
    for prompt in bundle.prompts:
        drawn, response = device.draw(prompt)
        for steps, (image, latents) in drawn.items():
            hidden, pooled = host.encode_prompt(prompt.text)
            host_latents = host.denoise(prompt.text, hidden, pooled, steps=steps).numpy()
            np.testing.assert_array_equal(latents, host_latents)
            np.testing.assert_array_equal(image, host.decode(host.denoise(prompt.text, hidden, pooled, steps=steps)))
        np.testing.assert_array_equal(response, host.text_response(prompt.text))
        assert float(np.abs(response).max()) > 0  # the prompt moves the UNet's output
    # 1 and 2 steps share their first UNet call (same inputs), which is also the text response's prompt call: three
    # calls a prompt (the third with the empty prompt), not four
    assert device.unet_calls == 3 * len(bundle.prompts)


def test_a_bundle_without_the_empty_prompt_is_refused_by_name(bundle_dir: Path, tmp_path: Path) -> None:
    """A bundle made before the text-response check has no empty prompt: the device says so and how to remake it."""
    bundle = Bundle.load(bundle_dir)
    copy = Bundle(tmp_path / "old", bundle.manifest)
    (copy.path / "prompts").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no prompts/empty\.npz .* `sdxl-qdq bundle`"):
        copy.empty_prompt()


BLOCKER = """
import importlib.abc, sys
BLOCKED = {"torch", "diffusers", "transformers", "datasets", "olive", "torchmetrics", "safetensors", "resource",
           "fcntl"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not part of the device profile")
sys.meta_path.insert(0, Blocker())
from sdxl_qdq.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.qnn
@pytest.mark.long
def test_device_steps_need_no_torch(bundle_dir: Path, tmp_path: Path) -> None:
    """``sdxl-qdq device-run`` in a process where torch, diffusers, transformers, datasets, Olive and the POSIX-only
    modules cannot be imported (as on the Windows NPU runner): placement, parity and two prompts drawn on QNN."""
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER, "device-run", "--bundle", str(bundle_dir), "--out", str(out), "--prompts", "2"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = DeviceResults.load(out)
    assert results.manifest["images"] == 4 and results.manifest["ep"] == "qnn"
    figures = json.loads((out / "figures.json").read_text())
    assert set(figures["placement"]) == set(COMPONENTS)
    assert all(v["qnn_vs_cpu_db"] > 25 for outs in figures["parity"].values() for v in outs.values())
    assert len(list(results.images(2).glob("*.png"))) == 2


@pytest.mark.parametrize(
    ("process", "native", "refused"), [("AMD64", "ARM64", True), ("ARM64", "ARM64", False), ("x86_64", "x86_64", False)]
)
def test_an_emulated_python_is_refused(process: str, native: str, refused: bool) -> None:
    why = native_python_error(process, native)
    assert (why is not None) == refused
    if refused:
        assert "emulated" in why and "native ARM64 Python" in why and "\n" not in why


@pytest.fixture(scope="module")
def canary_results(qdq_quality_artifacts, tmp_path_factory) -> Path:
    """The canary's device results drawn on the CPU EP (every prompt; bit-identical to the host's images)."""
    from sdxl_qdq.device.night import run_night

    tmp_path = tmp_path_factory.mktemp("night")
    bundle = Bundle.load(
        write_bundle(qdq_quality_artifacts, tmp_path / "bundle", qnn=QnnOptions("60"), parity_prompts=1, context=False)
    )
    return run_night(bundle, tmp_path / "results", qnn=QnnOptions("60"), ep="cpu")


def test_device_results_judged_on_the_host_give_the_host_verdict(
    qdq_quality_artifacts, qdq_cache, canary_results: Path
) -> None:
    """Device results drawn on the CPU EP (bit-identical to the host's images) through `--from-device`: the same
    checks, measured values included, as drawing here; results of another build are refused."""
    from sdxl_qdq.flows import prepare_gate

    results = canary_results
    here = prepare_gate(qdq_quality_artifacts, cache=qdq_cache)
    there = prepare_gate(qdq_quality_artifacts, cache=qdq_cache, from_device=results)
    assert [(c.metric, c.measured) for c in there.all_checks()] == [(c.metric, c.measured) for c in here.all_checks()]
    assert "device results" in there.evaluation.ep_detail
    with pytest.raises(ConfigError, match="drawn on the cpu EP; judge them with --ep cpu"):
        prepare_gate(qdq_quality_artifacts, cache=qdq_cache, ep="qnn", from_device=results)
    other = json.loads((results / "manifest.json").read_text())
    with pytest.raises(ConfigError, match="other QDQ models"):
        DeviceResults(results, {**other, "bundle": {**other["bundle"], "keys": {"qdq": {}}}}).check_matches(
            qdq_quality_artifacts.keys, model=qdq_quality_artifacts.source.name, soc="60"
        )


def test_a_device_venv_without_onnxruntime_qnn_is_one_line_with_the_fix(monkeypatch, capsys) -> None:
    from importlib import metadata

    from sdxl_qdq.cli import main

    real = metadata.version
    monkeypatch.setattr(
        metadata,
        "version",
        lambda name: (
            (_ for _ in ()).throw(metadata.PackageNotFoundError(name)) if name == "onnxruntime-qnn" else real(name)
        ),
    )
    assert main(["device-check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: onnxruntime-qnn is not installed") and "pip install -r requirements/device.txt" in err
    assert err.count("\n") == 1


def test_two_toolchains_results_are_compared_per_metric_with_their_figures(
    qdq_quality_artifacts, qdq_cache, canary_results: Path, tmp_path: Path
) -> None:
    """`sdxl-qdq compare-results`: B is A's results with 40 of its 1-step images damaged (a toolchain that
    miscomputes): B is worse on 1-step MSE, indistinguishable at 2 steps; each side's versions are shown; results of
    two bundles are refused."""
    from PIL import Image

    from sdxl_qdq.flows import compare_results
    from sdxl_qdq.manifest import write_manifest

    damaged = tmp_path / "b"
    shutil.copytree(canary_results, damaged)
    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest["versions"] = {**manifest["versions"], "onnxruntime-qnn": "0.0-planted"}
    for png in sorted((damaged / "images" / "qdq@1").glob("*.png"))[:40]:
        image = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
        Image.fromarray(np.clip(image + 40, 0, 255).astype(np.uint8)).save(png)
    write_manifest(damaged, {k: v for k, v in manifest.items() if k not in ("format", "files")})
    *_, rows, toolchains = compare_results(qdq_quality_artifacts, canary_results, damaged, cache=qdq_cache)
    verdicts = {r.metric: r.verdict for r in rows}
    assert verdicts["MSE qdq@1 vs float@1"] == "worse" and verdicts["MSE qdq@2 vs float@2"] == "indistinguishable"
    assert toolchains["b"]["versions"]["onnxruntime-qnn"] == "0.0-planted"
    assert toolchains["a"]["versions"] == json.loads((canary_results / "manifest.json").read_text())["versions"]
    other = json.loads((damaged / "manifest.json").read_text())
    other["bundle"]["digest"] = "0" * 64
    write_manifest(damaged, {k: v for k, v in other.items() if k not in ("format", "files")})
    with pytest.raises(ConfigError, match="come from different bundles"):
        compare_results(qdq_quality_artifacts, canary_results, damaged, cache=qdq_cache)
