"""The NPU runner's checks, from a bundle, with the device profile only (no torch, diffusers, transformers,
datasets or Olive): ``pytest tests/device --qdq-bundle DIR [--qdq-qnn-soc 60] [--qdq-device-out DIR]``. On x86_64
they run
on the HTP simulator (the night's rehearsal)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.device.bundle import Bundle
from sdxl_qdq.device.check import require_device
from sdxl_qdq.judge.baseline import baseline_model_name
from sdxl_qdq.judge.metrics import sqnr_db
from sdxl_qdq.paths import BASELINES_DIR
from sdxl_qdq.runtime import QNN_EP, assert_assignment, create_session

pytestmark = pytest.mark.device


@pytest.fixture(scope="session")
def bundle(pytestconfig: pytest.Config) -> Bundle:
    return Bundle.load(pytestconfig.getoption("qdq_bundle"), soc=pytestconfig.getoption("qdq_qnn_soc"))


@pytest.fixture(scope="session")
def device_out(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = Path(pytestconfig.getoption("qdq_device_out") or tmp_path_factory.mktemp("device-out"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_this_python_can_run_the_night() -> None:
    """A native Python (not x64 emulated on ARM64) with onnxruntime-qnn and its HTP backend."""
    found = require_device()
    assert found["onnxruntime-qnn"] and found["backend"] in ("htp device", "htp simulator")


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_runs_entirely_on_qnn(bundle: Bundle, qdq_qnn_options, component: str) -> None:
    session = create_session(bundle.model(component), ep="qnn", qnn=qdq_qnn_options)
    assignment = assert_assignment(session, "qnn")
    assert set(assignment) == {QNN_EP} and sum(assignment[QNN_EP].values()) > 0


@pytest.mark.parametrize("component", COMPONENTS)
def test_context_binary_draws_what_the_model_draws(bundle: Bundle, qdq_qnn_options, component: str) -> None:
    """The EP-context binary the host compiled for this chip gives the uncompiled model's outputs here."""
    context = bundle.context(component)
    if context is None:
        pytest.skip(
            "the bundle has no EP-context binaries: the host had no QNN backend or ran `sdxl-qdq bundle --no-context`"
        )
    feeds = bundle.parity(component)[0]["in"]
    plain = create_session(bundle.model(component), ep="qnn", qnn=qdq_qnn_options).run(None, feeds)
    compiled = create_session(context, ep="qnn", qnn=qdq_qnn_options)
    assert_assignment(compiled, "qnn")
    for a, b in zip(plain, compiled.run(None, feeds)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("component", COMPONENTS)
def test_parity_qnn_vs_cpu_above_bound(bundle: Bundle, qdq_qnn_options, device_out: Path, component: str) -> None:
    """QNN vs this machine's CPU EP on the bundle's recorded inputs, against baselines/<model>/parity.json. A model
    with no bound yet (a new runner's first night) records what it measured in the device output and says so."""
    calls = bundle.parity(component)
    npu, cpu = (
        create_session(bundle.model(component), ep="qnn", qnn=qdq_qnn_options),
        create_session(bundle.model(component)),
    )
    names = [o.name for o in cpu.get_outputs()]
    runs = [(cpu.run(None, c["in"]), npu.run(None, c["in"])) for c in calls]
    measured = {
        n: sqnr_db(np.stack([r[0][i] for r in runs]), np.stack([r[1][i] for r in runs])) for i, n in enumerate(names)
    }
    record = device_out / "parity-measured.json"
    figures = json.loads(record.read_text()) if record.is_file() else {}
    figures[component] = {n: round(v, 2) for n, v in measured.items()}
    record.write_text(json.dumps(figures, indent=1))
    bounds_file = BASELINES_DIR / baseline_model_name(bundle.model_name) / "parity.json"
    bounds = json.loads(bounds_file.read_text())["outputs"].get(component) if bounds_file.is_file() else None
    if bounds is None:
        pytest.skip(
            f"no parity bound for {bundle.model_name} yet: measured {figures[component]} dB, written to {record}; "
            f"record the bounds with `sdxl-qdq parity --model {bundle.model_name} --write` on this runner, "
            "review, commit"
        )
    for name, value in measured.items():
        assert value >= bounds[name]["bound_db"], (
            f"{component}.{name}: QNN vs CPU SQNR measured {value:.2f} dB, baseline "
            f"{bounds[name]['measured_db']} dB, limit {bounds[name]['bound_db']} dB"
        )


@pytest.mark.parametrize("component", COMPONENTS)
def test_latency_on_qnn(benchmark, bundle: Bundle, qdq_qnn_options, component: str) -> None:
    """One call of each component on QNN HTP (the compiled binary where the bundle has one)."""
    session = create_session(bundle.context(component) or bundle.model(component), ep="qnn", qnn=qdq_qnn_options)
    assert_assignment(session, "qnn")
    feeds = bundle.parity(component)[0]["in"]
    benchmark.extra_info.update(
        component=component,
        ep="qnn",
        soc=bundle.soc,
        compiled=bundle.context(component) is not None,
        bundle=bundle.digest[:16],
    )
    outputs = benchmark(session.run, None, feeds)
    assert all(np.isfinite(o).all() for o in outputs)
