"""The QDQ models the recipe produced: quantization types, the mask surgery, quality vs float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sdxl_qdq.components import COMPONENTS

WEIGHT_OPS = {"Conv", "MatMul", "Gemm"}
MASK_THRESHOLD = -3e30  # ReplaceAttentionMaskValue's default threshold
MASK_REPLACEMENT = -1e4  # and its replacement


def _load(path) -> onnx.ModelProto:
    return onnx.load(str(path))


@pytest.mark.parametrize("component", COMPONENTS)
def test_activations_are_uint16_and_weights_uint8(qdq_artifacts, component: str) -> None:
    model = _load(qdq_artifacts.qdq.models[component])
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    q_types = {
        onnx.helper.tensor_dtype_to_np_dtype(inits[n.input[2]].data_type).name
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
    }
    assert q_types == {"uint16"}, f"{component}: activation QuantizeLinear zero points are {q_types}"
    weight_types = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            for user in consumers.get(node.output[0], []):
                if user.op_type in WEIGHT_OPS and list(user.input).index(node.output[0]) == 1:
                    weight_types.add(onnx.helper.tensor_dtype_to_np_dtype(inits[node.input[0]].data_type).name)
    assert weight_types == {"uint8"}, f"{component}: weight types are {weight_types}"


def _float_values(model: onnx.ModelProto) -> list[tuple[str, np.ndarray]]:
    values = [(i.name, numpy_helper.to_array(i)) for i in model.graph.initializer]
    for node in model.graph.node:
        if (
            node.op_type in {"Constant", "ConstantOfShape"}
            and node.attribute
            and node.attribute[0].t.dims is not None
            and node.attribute[0].type == onnx.AttributeProto.TENSOR
        ):
            values.append((node.output[0], numpy_helper.to_array(node.attribute[0].t)))
    return [(n, v) for n, v in values if v.dtype == np.float32 and v.size]


@pytest.mark.parametrize("component", ["text_encoder", "text_encoder_2"])
def test_text_encoder_mask_value_was_replaced(qdq_artifacts, component: str) -> None:
    before = _float_values(_load(qdq_artifacts.float.models[component]))
    assert any(v.min() <= MASK_THRESHOLD for _, v in before), "the float export has no causal-mask constant to replace"
    model = _load(qdq_artifacts.qdq.models[component])
    after = _float_values(model)
    assert not [n for n, v in after if v.min() <= MASK_THRESHOLD], "a mask value below the threshold survived"
    # the folded causal mask [77, 77] is now a quantized initializer whose most negative value is -1e4
    inits = {i.name: i for i in model.graph.initializer}
    masks = []
    for node in model.graph.node:
        if (
            node.op_type == "DequantizeLinear"
            and node.input[0] in inits
            and tuple(inits[node.input[0]].dims)[-2:] == (77, 77)
        ):
            q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
            scale, zero = (float(numpy_helper.to_array(inits[n])) for n in node.input[1:3])
            masks.append((q - zero) * scale)
    assert masks, "no quantized 77×77 causal mask found"
    for mask in masks:
        assert mask.min() == pytest.approx(MASK_REPLACEMENT, rel=1e-3)
        upper, lower = mask[np.triu_indices(77, 1)], mask[np.tril_indices(77)]
        assert np.abs(upper - MASK_REPLACEMENT).max() < 1.0 and np.abs(lower).max() < 1.0


@pytest.mark.parametrize("component", COMPONENTS)
def test_qdq_component_tracks_float_on_test_prompts(qdq_artifacts, qdq_test_prompt_feeds, component: str) -> None:
    """SQNR of the QDQ component's outputs vs float on held-out inputs stays above 20 dB.

    20 dB (1 % noise power) is a sanity floor, well under the 27-38 dB the seed recipe gives on the tiny
    model; the quality gate (pytest -m quality) judges images, not tensors.
    """
    from sdxl_qdq.diagnose.sqnr import component_sqnr

    result = component_sqnr(
        qdq_artifacts.float, qdq_artifacts.qdq, {component: qdq_test_prompt_feeds[component]}, components=[component]
    )
    for output, value in result[component].items():
        assert value >= 20.0, f"{component}.{output}: SQNR {value:.2f} dB < 20 dB floor vs float"


def test_qnn_preprocess_still_crashes_on_metadata_props(qdq_artifacts, tmp_path) -> None:
    """Pins onnxruntime 1.32's qnn_preprocess_model crash on models with metadata_props.

    The recipe runs QNNPreprocess first, before any pass writes metadata_props. When this test fails,
    onnxruntime has fixed it: the pass order is free again and this pin can go.
    """
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    model = _load(qdq_artifacts.float.models["vae_decoder"])
    onnx.helper.set_model_props(model, {"written_by": "a previous pass"})
    src = tmp_path / "with_metadata.onnx"
    onnx.save(model, str(src))
    with pytest.raises(TypeError, match="dictionary update sequence"):
        qnn_preprocess_model(str(src), str(tmp_path / "out.onnx"), fuse_layernorm=True)
    del model.metadata_props[:]
    onnx.save(model, str(src))
    qnn_preprocess_model(str(src), str(tmp_path / "out.onnx"), fuse_layernorm=True)  # without: no crash
