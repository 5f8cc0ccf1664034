"""Memory-bounded calibration: the graph in K segments gives the stock ranges and the same QDQ model."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import numpy as np
import pytest

from sdxl_qdq.convert.calibration import load_calibration
from sdxl_qdq.convert.lean.quantize import quantize_with_ranges
from sdxl_qdq.convert.lean.segmented import segmented_minmax_ranges, split_nodes


class _Reader:
    """A CalibrationDataReader over a list of feeds (onnxruntime's stock calibration path)."""

    def __init__(self, feeds) -> None:
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def _qnn_config(model: Path, feeds: list):
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    return get_qnn_qdq_config(
        str(model), _Reader(feeds), activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8
    )


def _private_copy(model: Path, dest: Path) -> Path:
    """The model in a folder of the test's own: onnxruntime's quantizer and calibrator write a
    ``<model>-inferred.onnx`` beside their input and delete it, which races with other workers (and would
    write into the artifact cache)."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copyfile(model.parent / name, dest / name)
    return dest / "model.onnx"


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.iterdir()))).hexdigest()


@pytest.fixture(scope="module", params=["text_encoder", "vae_decoder"])
def stock(request, qdq_artifacts, tmp_path_factory):
    """The stock onnxruntime path (one calibration pass over every tensor), with its ranges cached to JSON."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    component = request.param
    out = tmp_path_factory.mktemp(f"stock-{component}")
    model = _private_copy(qdq_artifacts.float.models[component], out / "float")
    feeds = load_calibration(qdq_artifacts.calibration_dir, component)[:8]
    config = _qnn_config(model, feeds)
    kwargs = {k: v for k, v in inspect.getmembers(config) if not k.startswith("_")}
    kwargs["calibration_data_reader"] = _Reader(feeds)
    (out / "model").mkdir()
    quantize_static(
        str(model), str(out / "model" / "model.onnx"), calibration_cache_path=str(out / "ranges.json"), **kwargs
    )
    return model, feeds, config, load_tensors_data(out / "ranges.json"), _digest(out / "model")


@pytest.mark.parametrize("segments", [1, 2, 4])
def test_segmented_calibration_equals_the_stock_path(stock, tmp_path: Path, segments: int) -> None:
    model, feeds, config, ranges, digest = stock
    chunked = segmented_minmax_ranges(
        model, lambda: feeds, segments=segments, op_types_to_calibrate=config.op_types_to_quantize
    )
    assert set(chunked.data) == set(ranges.data) and len(ranges.data) > 50
    for name, expected in ranges.data.items():
        for got, want in zip(chunked.data[name].range_value, expected.range_value):
            np.testing.assert_array_equal(got, want, err_msg=name)
    (tmp_path / "model").mkdir()
    quantize_with_ranges(model, tmp_path / "model" / "model.onnx", chunked, _qnn_config(model, feeds))
    assert _digest(tmp_path / "model") == digest


def test_repeated_samples_are_run_once(stock) -> None:
    """A sample equal to an earlier one cannot move a min or a max: it is skipped, the ranges are the same."""
    model, feeds, config, ranges, _ = stock
    timings: dict = {}
    twice = segmented_minmax_ranges(
        model,
        lambda: feeds + feeds[::-1],
        segments=2,
        op_types_to_calibrate=config.op_types_to_quantize,
        timings=timings,
    )
    from sdxl_qdq.run.pipeline import feeds_digest

    distinct = len({feeds_digest(f) for f in feeds})  # the text encoders already see each prompt twice
    assert timings["samples"] == distinct and timings["duplicates"] == 2 * len(feeds) - distinct
    assert set(twice.data) == set(ranges.data)
    for name, expected in ranges.data.items():
        for got, want in zip(twice.data[name].range_value, expected.range_value):
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_segments_must_be_positive(qdq_artifacts) -> None:
    with pytest.raises(ValueError, match="segments must be >= 1, got 0"):
        segmented_minmax_ranges(qdq_artifacts.float.models["vae_decoder"], list, segments=0)


@pytest.mark.parametrize("component", ["unet", "vae_decoder"])
def test_segments_are_balanced_by_weight_bytes(qdq_artifacts, component: str) -> None:
    """Exactly the requested number of contiguous parts, none holding half of the weights."""
    import onnx

    from sdxl_qdq.convert.lean.graph import tensor_bytes

    model = onnx.load(str(qdq_artifacts.float.models[component]), load_external_data=False)
    sizes = {t.name: tensor_bytes(t) for t in model.graph.initializer}
    parts = split_nodes(model, segments=4)
    assert len(parts) == 4 and [i for p in parts for i in p] == list(range(len(model.graph.node)))
    per_part = [sum(sizes.get(n, 0) for i in p for n in model.graph.node[i].input) for p in parts]
    assert max(per_part) < 0.5 * sum(per_part), per_part


@pytest.mark.parametrize("olive_patched", [False, True], ids=["as-is", "olive-patched"])
def test_reductions_run_before_their_tensor_is_consumed(
    qdq_artifacts, tmp_path: Path, monkeypatch, olive_patched: bool
) -> None:
    """What bounds a segment's memory: in the calibration session each tensor's ReduceMin/Max runs before the
    tensor's last reader, so calibrating keeps no activation alive longer than inference does (onnxruntime's
    default order runs them after everything else: 14.4 GB instead of 1.7 GB on the real VAE decoder). Also
    in a process where Olive's quantization pass has patched onnxruntime's augmentation (it re-sorts the
    graph), as in a test session that built the models."""
    import json

    import onnx
    import onnxruntime
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    from sdxl_qdq.convert.lean.segmented import _calibrator_class, session_options

    monkeypatch.setattr(MinMaxCalibrater, "augment_graph", MinMaxCalibrater.augment_graph)  # restored afterwards
    if olive_patched:
        from olive.passes.onnx.quantization import patch_min_max_calibrater

        patch_min_max_calibrater()
        assert MinMaxCalibrater.augment_graph.__name__ == "patched_augment_graph"

    model = _private_copy(qdq_artifacts.float.models["vae_decoder"], tmp_path / "float")
    feeds = load_calibration(qdq_artifacts.calibration_dir, "vae_decoder")[:1]
    selected = set(segmented_minmax_ranges(model, lambda: feeds, segments=1).data)
    calibrator = _calibrator_class()(
        str(model),
        None,
        augmented_model_path=str(tmp_path / "augmented.onnx"),
        use_external_data_format=True,
        subset=selected,
    )
    calibrator.augment_graph()
    so = session_options()
    so.enable_profiling, so.profile_file_prefix = True, str(tmp_path / "profile")
    session = onnxruntime.InferenceSession(str(tmp_path / "augmented.onnx"), so, providers=["CPUExecutionProvider"])
    session.run(None, feeds[0])
    events = json.loads(Path(session.end_profiling()).read_text())
    order = [
        e["name"].removesuffix("_kernel_time")
        for e in events
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]
    position = {name: i for i, name in enumerate(order)}
    graph = onnx.load(str(tmp_path / "augmented.onnx"), load_external_data=False).graph
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type not in ("ReduceMin", "ReduceMax") and not node.name.endswith("_Reshape"):
            for name in node.input:
                readers.setdefault(name, []).append(node.name)
    checked = 0
    for tensor in selected:
        if tensor in readers:
            last = max(position[r] for r in readers[tensor])
            for op in ("ReduceMin", "ReduceMax"):
                assert position[f"{tensor}_{op}"] < last, (tensor, op)
            checked += 1
    assert checked > 100, checked
