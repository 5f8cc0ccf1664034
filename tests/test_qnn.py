"""QDQ components on the QNN EP (HTP simulator on x86_64 Linux, the NPU on Snapdragon)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.errors import ExecutionProviderError
from sdxl_qdq.runtime import CPU_EP, QNN_EP, assert_assignment, create_session, graph_assignment

pytestmark = pytest.mark.qnn


@pytest.mark.parametrize("component", COMPONENTS)
def test_qdq_component_runs_entirely_on_qnn_htp(qdq_artifacts, qdq_qnn_options, component: str) -> None:
    """Loads with session.disable_cpu_ep_fallback=1, and the recorded assignment holds no CPU node."""
    session = create_session(qdq_artifacts.qdq.models[component], ep="qnn", qnn=qdq_qnn_options)
    assert session.get_session_options().get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    assignment = assert_assignment(session, "qnn")
    assert set(assignment) == {QNN_EP} and sum(assignment[QNN_EP].values()) > 0


def test_naming_qnn_in_providers_is_caught(qdq_artifacts) -> None:
    """providers=["QNNExecutionProvider"] silently runs on the CPU EP; assert_assignment says so."""
    import onnxruntime as ort

    from sdxl_qdq.runtime import register_qnn, session_options

    register_qnn()
    session = ort.InferenceSession(
        str(qdq_artifacts.qdq.models["vae_decoder"]), sess_options=session_options(), providers=[QNN_EP]
    )
    assert set(graph_assignment(session)) == {CPU_EP}
    with pytest.raises(ExecutionProviderError, match="nodes outside QNNExecutionProvider"):
        assert_assignment(session, "qnn")


def _qdq_unary(op: str, path):
    """A one-op QDQ model: Q → DQ → op → Q → DQ on a [1, 8] float input, uint16 activations."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(1e-3, np.float32), "s"),
        numpy_helper.from_array(np.array(32768, np.uint16), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node(op, ["xd"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


def test_node_qnn_cannot_run_is_refused_without_fallback(tmp_path, qdq_qnn_options) -> None:
    """A bare quantized Erf (not fused into Gelu) is unsupported by QNN: refused, or visibly on CPU with fallback."""
    model = _qdq_unary("Erf", tmp_path / "erf.onnx")
    with pytest.raises(ExecutionProviderError, match="CPU fallback is disabled"):
        create_session(model, ep="qnn", qnn=qdq_qnn_options)
    session = create_session(model, ep="qnn", qnn=qdq_qnn_options, cpu_fallback=True)
    assert graph_assignment(session)[CPU_EP]["Erf"] == 1
    with pytest.raises(ExecutionProviderError, match="Erf"):
        assert_assignment(session, "qnn")
    supported = create_session(_qdq_unary("Sigmoid", tmp_path / "sigmoid.onnx"), ep="qnn", qnn=qdq_qnn_options)
    assert set(assert_assignment(supported, "qnn")) == {QNN_EP}


@pytest.mark.parametrize("component", COMPONENTS)
def test_with_fallback_allowed_only_graph_io_quantization_lands_on_cpu(
    qdq_artifacts, qdq_qnn_options, component: str
) -> None:
    """With CPU fallback allowed, ORT keeps the Q of graph inputs and the DQ of graph outputs on the CPU EP;
    every other node must still be taken by QNN."""
    from sdxl_qdq.runtime import graph_io_counts

    model = qdq_artifacts.qdq.models[component]
    assignment = graph_assignment(create_session(model, ep="qnn", qnn=qdq_qnn_options, cpu_fallback=True))
    on_cpu = dict(assignment.get(CPU_EP, {}))
    io = graph_io_counts(model)
    assert set(on_cpu) <= set(io) and all(on_cpu[op] <= io[op] for op in on_cpu), (
        f"{component}: CPU nodes {on_cpu} go beyond the Q/DQ of its float graph inputs/outputs {io}"
    )
    assert sum(assignment[QNN_EP].values()) > 10 * max(sum(on_cpu.values()), 1)


def _parity_bounds(qdq_artifacts) -> dict:
    import json

    from sdxl_qdq.judge.baseline import baseline_model_name
    from sdxl_qdq.paths import BASELINES_DIR

    path = BASELINES_DIR / baseline_model_name(qdq_artifacts.source.name) / "parity.json"
    if not path.is_file():
        pytest.skip(f"no {path}: state the QNN-vs-CPU SQNR bound per output of this model there")
    return json.loads(path.read_text())


@pytest.mark.parametrize("component", COMPONENTS)
def test_parity_qnn_vs_cpu_sqnr_above_bound(qdq_artifacts, qdq_qnn_options, component: str) -> None:
    """QNN output vs CPU-EP output of the same QDQ model. On the simulator the first few test prompts (as the
    bounds were measured); on an NPU all 50."""
    from sdxl_qdq.diagnose.sqnr import qnn_parity
    from sdxl_qdq.models.prompts import load_prompts
    from sdxl_qdq.runtime import qnn_is_simulated

    bounds = _parity_bounds(qdq_artifacts)
    prompts = load_prompts("test", path=qdq_artifacts.source.prompts)
    measured = qnn_parity(
        qdq_artifacts,
        prompts[: bounds["prompts"]] if qnn_is_simulated() else prompts,
        qnn=qdq_qnn_options,
        components=[component],
    )[component]
    for name, value in measured.items():
        entry = bounds["outputs"][component][name]
        assert value >= entry["bound_db"], (
            f"{component}.{name}: QNN vs CPU SQNR measured {value:.2f} dB, baseline "
            f"{entry['measured_db']} dB, limit {entry['bound_db']} dB (must be at least)"
        )


@pytest.mark.parametrize("component", COMPONENTS)
def test_ep_context_model_matches_uncompiled_qnn(qdq_artifacts, qdq_qnn_options, tmp_path, component: str) -> None:
    import numpy as np

    from sdxl_qdq.convert.calibration import load_calibration
    from sdxl_qdq.runtime import compile_ep_context, context_binaries

    context = compile_ep_context(
        qdq_artifacts.qdq.models[component], tmp_path / f"{component}_ctx.onnx", qnn=qdq_qnn_options
    )
    import onnx

    graph = onnx.load(str(context), load_external_data=False).graph
    assert {n.op_type for n in graph.node} == {"EPContext"}
    # the context binary lives beside the model (embed_mode 0): embedded, the real UNet's passes protobuf's 2 GB
    binaries = context_binaries(context)
    assert binaries and all((tmp_path / b).stat().st_size > 0 for b in binaries)
    assert context.stat().st_size < min((tmp_path / b).stat().st_size for b in binaries)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([context.name, *binaries])  # nothing left behind
    compiled = create_session(context, ep="qnn", qnn=qdq_qnn_options)
    assert_assignment(compiled, "qnn")
    plain = create_session(qdq_artifacts.qdq.models[component], ep="qnn", qnn=qdq_qnn_options)
    feed = load_calibration(qdq_artifacts.calibration_dir, component)[0]
    for a, b in zip(plain.run(None, feed), compiled.run(None, feed)):
        np.testing.assert_array_equal(a, b)


def test_ep_context_model_without_its_binary_is_a_clear_error(tmp_path: Path) -> None:
    """A bundle copied without the context binary its EP-context model names: one line naming the file and the fix."""
    import onnx

    from sdxl_qdq.runtime import context_binaries

    node = onnx.helper.make_node(
        "EPContext", ["x"], ["y"], domain="com.microsoft", embed_mode=0, ep_cache_context="unet_qnn.bin", source="QNN"
    )
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "unet.onnx"))
    with pytest.raises(ExecutionProviderError, match=r"names the context binary 'unet_qnn.bin'.*sdxl-qdq bundle"):
        context_binaries(tmp_path / "unet.onnx")
    (tmp_path / "unet_qnn.bin").write_bytes(b"x")
    assert context_binaries(tmp_path / "unet.onnx") == ["unet_qnn.bin"]


def test_execution_providers_are_one_table() -> None:
    """Every --ep choice is an entry of EXECUTION_PROVIDERS: its session, placement check, requirement and
    description come from it (a new EP is one entry)."""
    from sdxl_qdq.errors import ConfigError
    from sdxl_qdq.runtime import EPS, EXECUTION_PROVIDERS, ep_description, execution_provider

    assert EPS == tuple(EXECUTION_PROVIDERS) == ("cpu", "qnn")
    assert ep_description("cpu").startswith("CPU EP") and ep_description("qnn").startswith("QNN EP, HTP")
    assert execution_provider("qnn").ort_name == "QNNExecutionProvider"
    with pytest.raises(ConfigError, match="execution provider 'gpu' is not supported; allowed: cpu, qnn"):
        execution_provider("gpu")


@pytest.mark.qnn
def test_the_htp_backends_load_notice_stays_out_of_the_terminal(qdq_artifacts, tmp_path: Path) -> None:
    """The HTP backend's first load prints `# LIBNATIVE: No alternate configuration present ...` to the C-level
    stdout (third-party noise in every QNN command's output): it is dropped, the process's own output is not."""
    import subprocess
    import sys

    pytest.importorskip("onnxruntime_qnn", reason="the QNN EP needs onnxruntime-qnn (pip install onnxruntime-qnn)")
    model = qdq_artifacts.qdq.models["text_encoder"]
    code = (
        "from sdxl_qdq.runtime import create_session, QnnOptions\n"
        f"create_session({str(model)!r}, ep='qnn', qnn=QnnOptions())\n"
        "print('created', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "created" and "LIBNATIVE" not in done.stderr, done.stdout + done.stderr
