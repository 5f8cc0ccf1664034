"""The QNN-vs-CPU divergence localizer: graph cuts that compute what the model computes, and a planted defect
that it must name first and reduce to its node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sdxl_qdq.convert.calibration import load_calibration
from sdxl_qdq.diagnose.diverge import CutGraph, cpu_reference, distinct_samples, localize
from sdxl_qdq.runtime import create_session

PLANTED = (
    "/unet/down_blocks.1/resnets.0/conv1/Conv_output_0"  # the activation whose DequantizeLinear gets a wrong scale
)


def _run(proto, data_dir: Path, feeds) -> np.ndarray:
    session = create_session(
        proto.SerializeToString(),
        optimize=False,
        extra_config={"session.model_external_initializers_file_folder_path": str(data_dir)},
    )
    names = [i.name for i in session.get_inputs()]
    return np.stack([session.run(None, {k: f[k] for k in names})[0] for f in feeds])


def test_cuts_compute_what_the_model_computes(qdq_artifacts) -> None:
    """A cut to the model output equals the model; a cut fed the CPU reference at its stops equals it too (the
    CPU EP runs the graph as written, see sdxl_qdq.diverge)."""
    model = qdq_artifacts.qdq.models["unet"]
    graph = CutGraph(model)
    feeds = distinct_samples(load_calibration(qdq_artifacts.calibration_dir, "unet"), 2)
    whole = _run(onnx.load(str(model), load_external_data=False), model.parent, feeds)
    output = graph.proto.graph.output[0].name
    np.testing.assert_array_equal(_run(graph.extract(output), model.parent, feeds), whole)
    block = "up_blocks.1"
    stops = graph.block_inputs(block)
    assert stops and all(a.block != block for a in graph.activations if a.tensor in stops)
    target = graph.block_output(block).dequantized
    ref = cpu_reference(graph, feeds, [*stops, target])
    cut = graph.extract(target, stops)
    assert {i.name for i in cut.graph.input} <= {*stops, *graph.inputs}
    fed = [{**f, **r} for f, r in zip(feeds, ref)]
    np.testing.assert_array_equal(_run(cut, model.parent, fed), np.stack([r[target] for r in ref]))


@pytest.mark.parametrize("component", ["text_encoder", "text_encoder_2", "unet", "vae_decoder"])
def test_every_activation_has_a_shape_and_a_cut(qdq_artifacts, component: str) -> None:
    """Olive's QDQ models record no shape for a graph output's ``<name>_QuantizeLinear_Input`` (text_encoder_2's
    ``penultimate_hidden_states`` and ``text_embeds``, the UNet's ``out_sample``, the VAE's ``sample``): the
    localizer crashed on them with "no shape recorded". Every activation now has a shape, and a cut ending at the
    last one computes what the CPU EP computes there."""
    model = qdq_artifacts.qdq.models[component]
    graph = CutGraph(model)
    assert all(graph.value_info_of(t) for a in graph.activations for t in (a.tensor, a.dequantized))
    outputs = {o.name for o in graph.proto.graph.output}
    last = [a for a in graph.activations if any(d in outputs for d in [a.dequantized])]
    assert last and all(a.tensor in graph.inferred for a in last), [a.tensor for a in last]
    feeds = distinct_samples(load_calibration(qdq_artifacts.calibration_dir, component), 1)
    target = last[0].tensor
    ref = cpu_reference(graph, feeds, [target])
    np.testing.assert_array_equal(_run(graph.extract(target), model.parent, feeds), np.stack([r[target] for r in ref]))


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        ("unet", {"conv_in", "down_blocks.0", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.2", "conv_out"}),
        ("text_encoder_2", {"layers.0", "layers.1", "layers.2"}),
        ("vae_decoder", {"mid_block", "up_blocks.0", "up_blocks.3", "conv_out"}),
    ],
    ids=["unet", "text_encoder_2", "vae_decoder"],
)
def test_blocks_are_the_modules_below_the_wrapper(qdq_artifacts, component: str, expected: set[str]) -> None:
    graph = CutGraph(qdq_artifacts.qdq.models[component])
    names = set(graph.block_names())
    assert expected <= names, names
    assert all(graph.block_output(b) is not None for b in expected)


def _planted(qdq_artifacts, tmp_path: Path, *, factor: float) -> Path:
    """The tiny QDQ UNet up to down_blocks.2's output, weights inline; ``factor`` ≠ 1 gives the planted activation's
    DequantizeLinear a scale its QuantizeLinear does not share: the CPU EP dequantizes with it, QNN does not."""
    model = qdq_artifacts.qdq.models["unet"]
    graph = CutGraph(model)
    cut = graph.extract(graph.block_output("down_blocks.2").dequantized)
    onnx.load_external_data_for_model(cut, str(model.parent))
    if factor != 1:
        (dq,) = [
            n
            for n in cut.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] == PLANTED + "_QuantizeLinear_Output"
        ]
        scale = next(t for t in cut.graph.initializer if t.name == dq.input[1])
        cut.graph.initializer.append(
            numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), "planted_scale")
        )
        dq.input[1] = "planted_scale"
    path = tmp_path / ("planted.onnx" if factor != 1 else "control.onnx")
    onnx.save(cut, str(path))
    return path


@pytest.mark.qnn
def test_localizer_names_a_planted_defect_first_and_reduces_it_to_its_node(
    qdq_artifacts, qdq_qnn_options, tmp_path: Path
) -> None:
    feeds = distinct_samples(load_calibration(qdq_artifacts.calibration_dir, "unet"), 2)
    control = localize(_planted(qdq_artifacts, tmp_path, factor=1), feeds, qnn=qdq_qnn_options)
    assert control.worst.local_db >= 40 and control.first_divergent is None and not control.reduced, control.lines()
    found = localize(_planted(qdq_artifacts, tmp_path, factor=3), feeds, qnn=qdq_qnn_options)
    assert found.worst.block == "down_blocks.1" and found.worst.local_db < 30, found.lines()
    assert all(b.local_db >= 40 for b in found.blocks[1:]), found.lines()
    assert found.first_divergent == PLANTED, found.lines()
    assert [r.name for r in found.reduced] == ["/unet/down_blocks.1/resnets.0/conv1/Conv"], found.lines()
    assert found.reduced_db < 30 and found.reduced[0].inputs[0]["type"] == "uint16"
