"""GroupNorm as one GroupNormalization op: the fusion (sdxl_qdq/surgeons.py) and why QNN needs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sdxl_qdq.convert.surgeons import fuse_group_norms


def _groupnorm_silu_conv(
    path: Path,
    *,
    channels: int = 64,
    size: int = 8,
    groups: int = 8,
    opset: int = 21,
    scale: float = 1.0,
    wrong_axis: bool = False,
    tap: bool = False,
) -> Path:
    """torch's export of GroupNorm → SiLU → Conv 3×3 (a UNet resnet's norm1 → nonlinearity → conv1), seeded.
    ``scale``: the InstanceNormalization's scale (1 in torch's export); ``wrong_axis``: γ shaped [C] (broadcast
    along W, not a GroupNorm); ``tap``: the normalized tensor is also a graph output."""
    rng = np.random.default_rng(0)
    c, s = channels, size
    gamma_shape = (c,) if wrong_axis else (c, 1, 1)
    if wrong_axis:
        c = s  # [C] broadcasts along W: the channel count must equal W for the graph to be valid
    inits = [
        numpy_helper.from_array(np.asarray(v), n)
        for n, v in [
            ("shape0", np.array([0, groups, -1], np.int64)),
            ("shape1", np.array([1, c, s, s], np.int64)),
            ("ones", np.full(groups, scale, np.float32)),
            ("zeros", np.zeros(groups, np.float32)),
            ("gamma", rng.uniform(0.5, 1.5, gamma_shape).astype(np.float32)),
            ("beta", rng.normal(0, 0.1, gamma_shape).astype(np.float32)),
            ("w", (rng.normal(0, 1, (c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)),
            ("wb", rng.normal(0, 0.1, c).astype(np.float32)),
        ]
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "shape0"], ["r0"], name="/norm1/Reshape"),
        helper.make_node(
            "InstanceNormalization", ["r0", "ones", "zeros"], ["in"], epsilon=1e-5, name="/norm1/InstanceNormalization"
        ),
        helper.make_node("Reshape", ["in", "shape1"], ["r1"], name="/norm1/Reshape_1"),
        helper.make_node("Mul", ["r1", "gamma"], ["m"], name="/norm1/Mul"),
        helper.make_node("Add", ["m", "beta"], ["a"], name="/norm1/Add"),
        helper.make_node("Sigmoid", ["a"], ["sig"], name="/nonlinearity/Sigmoid"),
        helper.make_node("Mul", ["a", "sig"], ["silu"], name="/nonlinearity/Mul"),
        helper.make_node("Conv", ["silu", "w", "wb"], ["y"], pads=[1, 1, 1, 1], name="/conv1/Conv"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, s, s])]
    if tap:
        outputs.append(helper.make_tensor_value_info("r1", TensorProto.FLOAT, [1, c, s, s]))
    graph = helper.make_graph(
        nodes,
        "groupnorm_silu_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, s, s])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.save(onnx.shape_inference.infer_shapes(model), str(path))
    return path


def _inputs(model: Path, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    shape = [d.dim_value for d in onnx.load(str(model)).graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    return [{"x": (rng.normal(0, 2, shape) + 0.5).astype(np.float32)} for _ in range(n)]


def _quantize(model: Path, out: Path) -> Path:
    """The recipe's quantization step (QDQ, uint16 activations, uint8 weights, MinMax, QNN config)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(_inputs(model, 8, seed=1))

        def get_next(self):
            return next(self.feeds, None)

    quantize(
        str(model),
        str(out),
        get_qnn_qdq_config(str(model), Reader(), activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8),
    )
    return out


def _cpu(model: Path | bytes, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    from sdxl_qdq.runtime import create_session

    session = create_session(model)
    return np.stack([session.run(None, f)[0] for f in feeds])


def _fused(model: Path, out: Path) -> tuple[Path, int]:
    proto = onnx.load(str(model))
    count = fuse_group_norms(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))
    return out, count


def test_fused_float_graph_computes_the_same(tmp_path: Path) -> None:
    model = _groupnorm_silu_conv(tmp_path / "m.onnx")
    fused, count = _fused(model, tmp_path / "fused.onnx")
    ops = [n.op_type for n in onnx.load(str(fused)).graph.node]
    assert count == 1 and ops == ["GroupNormalization", "Sigmoid", "Mul", "Conv"]
    feeds = _inputs(model, 3, seed=2)
    np.testing.assert_allclose(_cpu(fused, feeds), _cpu(model, feeds), rtol=0, atol=2e-5)


def test_fused_qdq_graph_keeps_every_calibrated_range(tmp_path: Path) -> None:
    """On a QDQ graph the fused op reads the input's DequantizeLinear, γ and β keep their quantized data, and
    the Add's QuantizeLinear stays its output's; the CPU EP output moves only by the rounding steps removed."""
    qdq = _quantize(_groupnorm_silu_conv(tmp_path / "m.onnx"), tmp_path / "qdq.onnx")
    fused, count = _fused(qdq, tmp_path / "fused.onnx")
    nodes = onnx.load(str(fused)).graph.node
    gn = next(n for n in nodes if n.op_type == "GroupNormalization")
    assert (
        count == 1
        and gn.name == "/norm1/GroupNormalization"
        and not any(n.op_type == "InstanceNormalization" for n in nodes)
    )
    (q,) = [n for n in nodes if n.input and n.input[0] == gn.output[0]]
    assert q.op_type == "QuantizeLinear" and q.input[1] == "a_scale"  # the Add output's calibrated scale
    feeds = _inputs(qdq, 3, seed=2)
    from sdxl_qdq.judge.metrics import sqnr_db

    assert sqnr_db(_cpu(qdq, feeds), _cpu(fused, feeds)) > 40


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"scale": 2.0}, "InstanceNormalization scale is not 1: not torch's GroupNorm"),
        ({"wrong_axis": True}, "γ of shape [C] broadcasts along W"),
        ({"tap": True}, "an intermediate is read elsewhere (a graph output)"),
    ],
    ids=["scaled-instancenorm", "gamma-on-W", "tapped-intermediate"],
)
def test_fusion_leaves_what_is_not_a_groupnorm(tmp_path: Path, kwargs: dict, why: str) -> None:
    model = _groupnorm_silu_conv(tmp_path / "m.onnx", **kwargs)
    proto = onnx.load(str(model))
    assert fuse_group_norms(proto) == 0, why
    assert [n.op_type for n in proto.graph.node] == [n.op_type for n in onnx.load(str(model)).graph.node]


def test_fusion_converts_an_older_model_to_opset_21(tmp_path: Path) -> None:
    """Per-channel GroupNormalization is opset 21: a uint8-activation QDQ model (opset 17) is converted first;
    before opset 14 the conversion is refused."""
    model = _groupnorm_silu_conv(tmp_path / "m.onnx", opset=17)
    fused, count = _fused(model, tmp_path / "fused.onnx")
    assert count == 1 and next(o.version for o in onnx.load(str(fused)).opset_import if o.domain == "") == 21
    feeds = _inputs(model, 2, seed=2)
    np.testing.assert_allclose(_cpu(fused, feeds), _cpu(model, feeds), rtol=0, atol=2e-5)
    old = onnx.load(str(model))
    old.opset_import[0].version = 13
    with pytest.raises(ValueError, match=r"opset >= 14.*the model has opset 13"):
        fuse_group_norms(old)


@pytest.mark.parametrize("component", ["unet", "vae_decoder"])
def test_recipe_fuses_every_groupnorm_of_the_export(qdq_artifacts, component: str) -> None:
    """Every GroupNorm of the float export is one GroupNormalization in the QDQ model, but the decoder's attention
    norm, whose first Reshape onnxruntime merged with the attention's (it normalizes a reshaped tensor)."""

    def count(model: Path, op: str) -> int:
        return sum(n.op_type == op for n in onnx.load(str(model), load_external_data=False).graph.node)

    exported = count(qdq_artifacts.float.models[component], "InstanceNormalization")
    fused = count(qdq_artifacts.qdq.models[component], "GroupNormalization")
    left = [
        n.name
        for n in onnx.load(str(qdq_artifacts.qdq.models[component]), load_external_data=False).graph.node
        if n.op_type == "InstanceNormalization"
    ]
    assert exported > 0 and fused + len(left) == exported
    assert left == ([] if component == "unet" else ["/decoder/mid_block/attentions.0/group_norm/InstanceNormalization"])


# --------------------------------------------------------------------------------------------- on QNN
def _qnn_vs_cpu(model: Path, qdq_qnn_options, feeds) -> float:
    from sdxl_qdq.judge.metrics import sqnr_db
    from sdxl_qdq.runtime import assert_assignment, create_session

    session = create_session(model, ep="qnn", qnn=qdq_qnn_options)
    assert_assignment(session, "qnn")
    return sqnr_db(_cpu(model, feeds), np.stack([session.run(None, f)[0] for f in feeds]))


@pytest.mark.qnn
@pytest.mark.xfail(
    strict=True,
    reason=(
        "QNN HTP (onnxruntime-qnn 2.7.0, QNN 2.44 HTP graph preparation) miscomputes torch's GroupNorm decomposition "
        "followed by SiLU and a Conv at 8x8 and below: 0.2 dB SQNR vs the CPU EP (56 dB at 16x16 and up). If this "
        "passes, HTP computes it right again: on a device runner, record that the simulator alone is wrong "
        "(baselines/<model>/parity.json); anywhere, the fusion may no longer be needed."
    ),
)
def test_htp_computes_the_decomposed_groupnorm_before_a_conv(tmp_path: Path, qdq_qnn_options) -> None:
    qdq = _quantize(_groupnorm_silu_conv(tmp_path / "m.onnx", size=8), tmp_path / "qdq.onnx")
    assert _qnn_vs_cpu(qdq, qdq_qnn_options, _inputs(qdq, 2, seed=7)) >= 30


@pytest.mark.qnn
@pytest.mark.parametrize("size", [4, 8, 16])
def test_htp_computes_the_fused_groupnorm_before_a_conv(tmp_path: Path, qdq_qnn_options, size: int) -> None:
    qdq = _quantize(_groupnorm_silu_conv(tmp_path / "m.onnx", size=size), tmp_path / "qdq.onnx")
    fused, count = _fused(qdq, tmp_path / "fused.onnx")
    assert count == 1 and _qnn_vs_cpu(fused, qdq_qnn_options, _inputs(qdq, 2, seed=7)) >= 45


def _qdq_groupnorm(path: Path, channels: int, size: int, groups: int = 32) -> Path:
    """DQ → GroupNormalization → Q → DQ as the fused QDQ models hold it (uint16 activations and γ/β)."""
    rng = np.random.default_rng(0)
    gamma, beta = rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.2, channels)
    g_scale, b_scale = gamma.max() / 65535, (beta.max() - beta.min()) / 65535
    b_zero = round(-beta.min() / b_scale)
    consts = {
        "xs": np.float32(8 / 65535),
        "xz": np.uint16(32768),
        "ys": np.float32(12 / 65535),
        "yz": np.uint16(32768),
        "gs": np.float32(g_scale),
        "gz": np.uint16(0),
        "bs": np.float32(b_scale),
        "bz": np.uint16(b_zero),
        "gq": np.round(gamma / g_scale).astype(np.uint16),
        "bq": np.clip(np.round(beta / b_scale + b_zero), 0, 65535).astype(np.uint16),
    }
    ms = "com.microsoft"
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], domain=ms, name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], domain=ms, name="dq_x"),
        helper.make_node("DequantizeLinear", ["gq", "gs", "gz"], ["g"], domain=ms, name="dq_g"),
        helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"], domain=ms, name="dq_b"),
        helper.make_node("GroupNormalization", ["xd", "g", "b"], ["y"], num_groups=groups, epsilon=1e-5, name="gn"),
        helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"], domain=ms, name="q_y"),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"], domain=ms, name="dq_y"),
    ]
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes,
        "qdq_groupnorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
        value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ms, 1)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


# Every GroupNorm shape of stabilityai/sdxl-turbo at 512×512, 32 groups (channels, spatial size). UNet (block
# channels 320/640/1280 at 64/32/16): each level's resnets and attentions, the first resnet of a level reading the
# previous width, the up path's skip concatenations. Decoder (512/512/256/128 at 64/128/256/512). The decoder's
# shapes from 128 pixels up take 20–85 s each on the simulator (slow).
REAL_SHAPES = [
    (320, 64),
    (640, 64),
    (960, 64),
    (320, 32),
    (640, 32),
    (960, 32),
    (1280, 32),
    (1920, 32),
    (640, 16),
    (1280, 16),
    (1920, 16),
    (2560, 16),
    (512, 64),
]
REAL_SHAPES_SLOW = [(512, 128), (512, 256), (256, 256), (256, 512), (128, 512)]


@pytest.mark.qnn
@pytest.mark.parametrize(
    ("channels", "size"),
    [*REAL_SHAPES, *[pytest.param(*s, marks=pytest.mark.slow) for s in REAL_SHAPES_SLOW]],
    ids=str,
)
def test_htp_groupnorm_matches_cpu_at_sdxl_turbo_shapes(
    tmp_path: Path, qdq_qnn_options, channels: int, size: int
) -> None:
    """HTP's GroupNorm (run as Dequantize → GroupNorm → Quantize: the QNN EP has no QDQ node group for it) agrees
    with the CPU EP at the real model's shapes, not only at tiny width (68 dB measured at each)."""
    model = _qdq_groupnorm(tmp_path / "gn.onnx", channels, size)
    rng = np.random.default_rng(1)
    x = (
        rng.normal(0, 1, (1, channels, size, size)) * np.linspace(0.5, 2, channels)[None, :, None, None]
        + np.linspace(-1, 1, channels)[None, :, None, None]
    )
    assert _qnn_vs_cpu(model, qdq_qnn_options, [{"x": x.astype(np.float32)}]) >= 60
