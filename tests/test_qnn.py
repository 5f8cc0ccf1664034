"""QDQ components on the QNN EP (HTP simulator on x86_64 Linux, the NPU on Snapdragon)."""

from __future__ import annotations

import pytest

from quant import COMPONENTS
from quant.errors import ExecutionProviderError
from quant.runtime import CPU_EP, QNN_EP, assert_assignment, create_session, graph_assignment

pytestmark = pytest.mark.qnn


@pytest.mark.parametrize("component", COMPONENTS)
def test_qdq_component_runs_entirely_on_qnn_htp(artifacts, qnn_options, component: str) -> None:
    """Loads with session.disable_cpu_ep_fallback=1, and the recorded assignment holds no CPU node."""
    session = create_session(artifacts.qdq.models[component], ep="qnn", qnn=qnn_options)
    assert session.get_session_options().get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    assignment = assert_assignment(session, "qnn")
    assert set(assignment) == {QNN_EP} and sum(assignment[QNN_EP].values()) > 0


def test_naming_qnn_in_providers_is_caught(artifacts) -> None:
    """providers=["QNNExecutionProvider"] silently runs on the CPU EP; assert_assignment says so."""
    import onnxruntime as ort

    from quant.runtime import register_qnn, session_options

    register_qnn()
    session = ort.InferenceSession(str(artifacts.qdq.models["vae_decoder"]), sess_options=session_options(),
                                   providers=[QNN_EP])
    assert set(graph_assignment(session)) == {CPU_EP}
    with pytest.raises(ExecutionProviderError, match="nodes outside QNNExecutionProvider"):
        assert_assignment(session, "qnn")


def _qdq_unary(op: str, path):
    """A one-op QDQ model: Q → DQ → op → Q → DQ on a [1, 8] float input, uint16 activations."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(1e-3, np.float32), "s"), numpy_helper.from_array(np.array(32768, np.uint16), "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node(op, ["xd"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["out"]),
    ]
    graph = helper.make_graph(nodes, op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


def test_node_qnn_cannot_run_is_refused_without_fallback(tmp_path, qnn_options) -> None:
    """A bare quantized Erf (not fused into Gelu) is unsupported by QNN: refused, or visibly on CPU with fallback."""
    model = _qdq_unary("Erf", tmp_path / "erf.onnx")
    with pytest.raises(ExecutionProviderError, match="CPU fallback is disabled"):
        create_session(model, ep="qnn", qnn=qnn_options)
    session = create_session(model, ep="qnn", qnn=qnn_options, cpu_fallback=True)
    assert graph_assignment(session)[CPU_EP]["Erf"] == 1
    with pytest.raises(ExecutionProviderError, match="Erf"):
        assert_assignment(session, "qnn")
    supported = create_session(_qdq_unary("Sigmoid", tmp_path / "sigmoid.onnx"), ep="qnn", qnn=qnn_options)
    assert set(assert_assignment(supported, "qnn")) == {QNN_EP}
