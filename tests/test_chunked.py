"""Memory-bounded calibration: the graph in K segments gives the stock ranges and the same QDQ model."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import numpy as np
import pytest

from quant.calibration import load_calibration
from quant.chunked import _Reader, quantize_with_ranges, segmented_minmax_ranges, split_nodes


def _qnn_config(model: Path, feeds: list):
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    return get_qnn_qdq_config(str(model), _Reader(feeds), activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8)


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.iterdir()))).hexdigest()


@pytest.fixture(scope="module", params=["text_encoder", "vae_decoder"])
def stock(request, artifacts, tmp_path_factory):
    """The stock onnxruntime path (one calibration pass over every tensor), with its ranges cached to JSON."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    component = request.param
    model = artifacts.float.models[component]
    feeds = load_calibration(artifacts.calibration_dir, component)[:8]
    out = tmp_path_factory.mktemp(f"stock-{component}")
    config = _qnn_config(model, feeds)
    kwargs = {k: v for k, v in inspect.getmembers(config) if not k.startswith("_")}
    kwargs["calibration_data_reader"] = _Reader(feeds)
    (out / "model").mkdir()
    quantize_static(str(model), str(out / "model" / "model.onnx"), calibration_cache_path=str(out / "ranges.json"), **kwargs)
    return model, feeds, config, load_tensors_data(out / "ranges.json"), _digest(out / "model")


@pytest.mark.parametrize("segments", [1, 2, 4])
def test_segmented_calibration_equals_the_stock_path(stock, tmp_path: Path, segments: int) -> None:
    model, feeds, config, ranges, digest = stock
    chunked = segmented_minmax_ranges(model, lambda: feeds, segments=segments, op_types_to_calibrate=config.op_types_to_quantize)
    assert set(chunked.data) == set(ranges.data) and len(ranges.data) > 50
    for name, expected in ranges.data.items():
        for got, want in zip(chunked.data[name].range_value, expected.range_value):
            np.testing.assert_array_equal(got, want, err_msg=name)
    (tmp_path / "model").mkdir()
    quantize_with_ranges(model, tmp_path / "model" / "model.onnx", chunked, _qnn_config(model, feeds))
    assert _digest(tmp_path / "model") == digest


def test_segments_must_be_positive(artifacts) -> None:
    with pytest.raises(ValueError, match="segments must be >= 1, got 0"):
        segmented_minmax_ranges(artifacts.float.models["vae_decoder"], list, segments=0)


@pytest.mark.parametrize("component", ["unet", "vae_decoder"])
def test_segments_are_balanced_by_bytes(artifacts, component: str) -> None:
    """Weights plus produced activations: the VAE decoder, light on weights, still splits evenly."""
    import onnx

    from quant.chunked import _value_bytes
    from quant.lean import _tensor_bytes

    model = onnx.shape_inference.infer_shapes(onnx.load(str(artifacts.float.models[component]), load_external_data=False))
    sizes = {t.name: _tensor_bytes(t) for t in model.graph.initializer}
    sizes.update({vi.name: _value_bytes(vi) for vi in [*model.graph.value_info, *model.graph.output]})
    parts = split_nodes(model, segments=4)
    assert len(parts) == 4 and sorted(i for p in parts for i in p) == list(range(len(model.graph.node)))
    per_part = [sum(sizes.get(n, 0) for i in p for n in [*model.graph.node[i].input, *model.graph.node[i].output]) for p in parts]
    assert max(per_part) < 0.5 * sum(per_part), per_part  # no segment holds half of the bytes
