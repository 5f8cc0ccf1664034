"""The device's night: from a verified bundle, check where every node runs, measure QNN-vs-CPU parity, draw the
bundle's prompts on the NPU, and leave a results folder (images, final latents, figures, manifest) that the
host judges (``pytest -m quality --qdq-ep qnn --qdq-from-device RESULTS``)."""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.cache import package_versions
from sdxl_qdq.components import COMPONENTS, STEPS
from sdxl_qdq.device.bundle import Bundle, BundlePrompt
from sdxl_qdq.device.pipeline import DevicePipeline
from sdxl_qdq.errors import ConfigError
from sdxl_qdq.judge.metrics import sqnr_db
from sdxl_qdq.manifest import read_manifest, replace_folder, write_manifest
from sdxl_qdq.procs import Meter, Progress
from sdxl_qdq.run.generate import image_name, response_name, save_response
from sdxl_qdq.runtime import QNN_SOCS, QnnOptions, assert_assignment, create_session, qnn_is_simulated

RESULTS_KIND = "sdxl-qdq-device-results"
DEVICE_PACKAGES = ("onnxruntime", "onnxruntime-qnn", "numpy", "pillow")


def placement(bundle: Bundle, qnn: QnnOptions) -> dict[str, dict[str, int]]:
    """Op types per component, every node on QNN (CPU fallback disabled; anything else raises)."""
    return {
        c: dict(assert_assignment(create_session(bundle.model(c), ep="qnn", qnn=qnn), "qnn")["QNNExecutionProvider"])
        for c in COMPONENTS
    }


def parity(bundle: Bundle, qnn: QnnOptions) -> dict[str, dict[str, dict[str, float]]]:
    """Per component output, over the bundle's recorded calls: QNN vs this machine's CPU EP, QNN vs the host's
    CPU EP, and QNN vs the float model (SQNR, dB)."""
    result = {}
    for c in COMPONENTS:
        calls = bundle.parity(c)
        npu, cpu = create_session(bundle.model(c), ep="qnn", qnn=qnn), create_session(bundle.model(c))
        names = [o.name for o in cpu.get_outputs()]
        runs = [(npu.run(None, call["in"]), cpu.run(None, call["in"])) for call in calls]
        result[c] = {}
        for i, name in enumerate(names):
            q = np.stack([r[0][i] for r in runs])
            result[c][name] = {
                "qnn_vs_cpu_db": round(sqnr_db(np.stack([r[1][i] for r in runs]), q), 3),
                "qnn_vs_host_cpu_db": round(sqnr_db(np.stack([call["cpu"][name] for call in calls]), q), 3),
                "qnn_vs_float_db": round(sqnr_db(np.stack([call["float"][name] for call in calls]), q), 3),
            }
    return result


def draw(
    bundle: Bundle,
    out: Path,
    *,
    ep: str = "qnn",
    qnn: QnnOptions | None = None,
    context: bool = True,
    prompts: list[BundlePrompt] | None = None,
    progress: Progress = lambda _: None,
    timing: dict[str, Any] | None = None,
) -> int:
    """Draw ``prompts`` (default: the bundle's) at 1 and 2 steps into ``out/images/qdq@k/`` (each image with its
    prompt's text response beside it) and their final latents into ``out/latents/qdq@k/``; returns the number of
    images. ``timing``: filled with the sessions' load time and each prompt's seconds (s)."""
    import time

    start = time.perf_counter()
    pipe = DevicePipeline(bundle, ep=ep, qnn=qnn, context=context)
    timing = timing if timing is not None else {}
    timing.update(sessions_s=round(time.perf_counter() - start, 2), prompt_s=[])
    prompts = prompts if prompts is not None else bundle.prompts
    from PIL import Image

    count, meter = 0, Meter(f"device: prompts drawn on the {ep.upper()} EP", len(prompts), progress)
    for prompt in prompts:
        start = time.perf_counter()
        drawn, response = pipe.draw(prompt, tuple(bundle.manifest["steps"]))
        for steps, (image, latents) in drawn.items():
            for kind in ("images", "latents"):
                (out / kind / f"qdq@{steps}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out / "images" / f"qdq@{steps}" / image_name(prompt), format="PNG")
            np.save(out / "latents" / f"qdq@{steps}" / f"{prompt.index:03d}.npy", latents)
            save_response(response, out / "images" / f"qdq@{steps}" / response_name(prompt))
            count += 1
        timing["prompt_s"].append(round(time.perf_counter() - start, 2))
        meter.step()
    timing["unet_calls"] = pipe.unet_calls
    return count


def run_night(
    bundle: Bundle,
    out: Path,
    *,
    qnn: QnnOptions,
    ep: str = "qnn",
    context: bool = True,
    prompt_count: int | None = None,
    progress: Progress = lambda _: None,
) -> Path:
    """Placement, parity and the drawn prompts of ``bundle`` into a results folder at ``out`` (written aside and
    renamed when complete, with its manifest)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        figures: dict[str, Any] = {}
        if ep == "qnn":
            progress("device: placement")
            figures["placement"] = placement(bundle, qnn)
            progress("device: parity")
            figures["parity"] = parity(bundle, qnn)
        prompts = bundle.prompts[:prompt_count] if prompt_count else bundle.prompts
        figures["timing"] = {}
        images = draw(
            bundle, tmp, ep=ep, qnn=qnn, context=context, prompts=prompts, progress=progress, timing=figures["timing"]
        )
        (tmp / "figures.json").write_text(json.dumps(figures, indent=1))
        write_manifest(
            tmp,
            {
                "kind": RESULTS_KIND,
                "bundle": {
                    "digest": bundle.digest,
                    "model": bundle.model_name,
                    "keys": bundle.manifest["keys"],
                    "recipe": bundle.manifest["recipe"],
                    "soc": bundle.soc,
                },
                "ep": ep,
                "soc": qnn.soc_model,
                "context": bool(context and bundle.context("unet")),
                "machine": machine_description(),
                "versions": device_versions(),
                "prompts": [p.id for p in prompts],
                "images": images,
            },
        )
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def machine_description() -> dict[str, Any]:
    return {
        "system": platform.system(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "qnn_backend": "htp simulator" if qnn_is_simulated() else "htp device",
        "executable": sys.executable,
    }


def device_versions() -> dict[str, str]:
    return package_versions(DEVICE_PACKAGES)


@dataclass(frozen=True)
class DeviceResults:
    """A device's results folder as the host reads it (verified against its manifest)."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, path: Path | str) -> DeviceResults:
        path = Path(path)
        manifest = read_manifest(path, what="device results")
        if manifest.get("kind") != RESULTS_KIND:
            raise ConfigError(
                f"{path} is not a device results folder (kind {manifest.get('kind')!r}); the device "
                "writes one with `sdxl-qdq device-run --bundle B --out DIR`"
            )
        return cls(path, manifest)

    def images(self, steps: int) -> Path:
        return self.path / "images" / f"qdq@{steps}"

    def images_by_label(self) -> dict[str, Path]:
        """The image folders by variant label (``qdq@1``, ``qdq@2``)."""
        return {f"qdq@{k}": self.images(k) for k in STEPS}

    def check_matches(self, keys: dict[str, Any], *, model: str, soc: str) -> None:
        """Refuse results drawn from a bundle of another build, model or chip than the host's."""
        bundle = self.manifest["bundle"]
        if bundle["model"] != model:
            raise ConfigError(
                f"device results {self.path} are of model {bundle['model']!r}, not {model!r}: judge them "
                f"with --model {bundle['model']}"
            )
        if bundle["keys"]["qdq"] != keys["qdq"]:
            raise ConfigError(
                f"device results {self.path} come from a bundle of other QDQ models (recipe "
                f"{bundle['recipe']['name']!r}, sha256 {bundle['recipe']['sha256'][:12]}) than this build's: "
                "judge with the recipe and model the bundle was made from, or run the device on a new bundle"
            )
        if self.manifest["soc"] != soc:
            raise ConfigError(
                f"device results {self.path} were drawn for QNN soc {self.manifest['soc']} "
                f"({QNN_SOCS.get(self.manifest['soc'], '?')}), not {soc}: judge with --qnn-soc {self.manifest['soc']}"
            )

    def describe(self) -> str:
        m = self.manifest["machine"]
        if self.manifest["ep"] != "qnn":
            return f"CPU EP on {m['system']} {m['machine']}, device results {self.path.name}"
        return (
            f"QNN EP, HTP {'simulator' if m['qnn_backend'] == 'htp simulator' else 'NPU'} "
            f"on {m['system']} {m['machine']}, "
            f"soc {self.manifest['soc']} ({QNN_SOCS.get(self.manifest['soc'], '?')}), device results {self.path.name}"
        )


def device_test_command(
    bundle: Path, out: Path, *, soc: str, storage: Path, tests: Path = Path("tests/device"), extra: tuple[str, ...] = ()
) -> tuple[list[str], str | None]:
    """The pytest command of the device job's tests (placement, parity, latency) and a notice for the log, or None.

    Latency is compared with this runner's stored benchmark run (``storage/<machine id>``, pytest-benchmark's
    filing) and fails on a median 25 % slower; a runner with none yet (its first night) records its run in
    ``out/benchmarks`` instead, to be reviewed and committed, and says so."""
    from pytest_benchmark.utils import get_machine_id

    machine = get_machine_id()
    if sorted((Path(storage) / machine).glob("*.json")):
        bench, notice = (
            ["--benchmark-storage", str(storage), "--benchmark-compare", "--benchmark-compare-fail=median:25%"],
            None,
        )
    else:
        bench = ["--benchmark-save=first-night", "--benchmark-storage", str(Path(out) / "benchmarks")]
        notice = (
            f"::notice::first night on {machine}: its benchmark run is recorded in {Path(out) / 'benchmarks'}; "
            f"review it and commit it under {Path(storage) / machine}"
        )
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(tests),
        "--qdq-bundle",
        str(bundle),
        "--qdq-qnn-soc",
        soc,
        "--qdq-device-out",
        str(out),
        "--junitxml",
        str(Path(out) / "junit.xml"),
        "--benchmark-json",
        str(Path(out) / "benchmarks.json"),
        *bench,
        *extra,
    ]
    return command, notice
