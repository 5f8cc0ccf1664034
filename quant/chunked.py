"""Memory-bounded MinMax calibration: expose the min/max of only 1/K of the tensors per pass.

onnxruntime's ``MinMaxCalibrater`` adds a ReduceMin/ReduceMax pair for every tensor to calibrate and runs
that augmented model once; on the real UNet (thousands of tensors) it needs more than 20 GB. Here the same
tensor selection is split into K chunks; each pass augments the model for one chunk only, runs every
sample (CPU arena and memory pattern off) and keeps that chunk's ranges. MinMax merges exactly (min of
mins, max of maxes), so the ranges equal the single-pass ones. The merged ranges go into onnxruntime's
calibration cache (``quantize_static(..., calibration_cache_path=...)``), which quantizes with the same
QNN QDQ configuration without calibrating again.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np


def _calibrator_class() -> type:
    import onnxruntime
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    class SubsetMinMaxCalibrater(MinMaxCalibrater):
        """ORT's MinMax calibrator restricted to ``subset`` of the tensors it would select, lean on memory."""

        def __init__(self, *args: Any, subset: set[str] | None = None, **kwargs: Any) -> None:
            self.subset = subset
            super().__init__(*args, **kwargs)

        def select_tensors_to_calibrate(self, model: Any) -> tuple[set[str], dict]:
            tensors, value_infos = super().select_tensors_to_calibrate(model)
            return (tensors if self.subset is None else tensors & self.subset), value_infos

        def create_inference_session(self) -> None:
            so = onnxruntime.SessionOptions()
            so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
            so.enable_cpu_mem_arena = False
            so.enable_mem_pattern = False
            self.infer_session = onnxruntime.InferenceSession(
                self.augmented_model_path, sess_options=so, providers=self.execution_providers
            )

    return SubsetMinMaxCalibrater


class _Reader:
    """A CalibrationDataReader over a re-iterable source of feeds."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def chunked_minmax_ranges(
    model_path: Path,
    feeds: Callable[[], Iterable[dict[str, np.ndarray]]],
    *,
    chunks: int,
    op_types_to_calibrate: list[str] | None = None,
    symmetric: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Any:
    """``TensorsData`` of MinMax ranges computed in ``chunks`` passes; ``feeds()`` yields the samples anew."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    cls = _calibrator_class()
    with tempfile.TemporaryDirectory(prefix="chunked-calib-") as tmp:
        probe = cls(str(model_path), op_types_to_calibrate, augmented_model_path=str(Path(tmp, "probe.onnx")),
                    symmetric=symmetric, use_external_data_format=True)
        tensors = sorted(probe.select_tensors_to_calibrate(probe.model)[0])
        del probe
        merged: dict[str, Any] = {}
        for k in range(chunks):
            subset = set(tensors[k::chunks])
            calibrator = cls(str(model_path), op_types_to_calibrate, augmented_model_path=str(Path(tmp, f"aug{k}.onnx")),
                             symmetric=symmetric, use_external_data_format=True, subset=subset)
            calibrator.augment_graph()
            calibrator.create_inference_session()
            calibrator.collect_data(_Reader(feeds()))
            merged.update(calibrator.compute_data().data)
            del calibrator
            if progress:
                progress(f"calibration pass {k + 1}/{chunks}: {len(subset)} tensors")
    return TensorsData(CalibrationMethod.MinMax, merged)


def quantize_with_ranges(model_path: Path, output: Path, ranges: Any, qdq_config: Any) -> None:
    """``quantize_static`` with ``qdq_config`` (e.g. from ``get_qnn_qdq_config``), ranges from ``ranges``."""
    import inspect

    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    with tempfile.TemporaryDirectory(prefix="chunked-quant-") as tmp:
        cache = Path(tmp, "calibration.json")
        save_tensors_data(ranges, cache)
        kwargs = {k: v for k, v in inspect.getmembers(qdq_config) if not k.startswith("_")}
        kwargs.pop("calibration_data_reader", None)
        quantize_static(str(model_path), str(output), calibration_data_reader=None, calibration_cache_path=str(cache),
                        **kwargs)
