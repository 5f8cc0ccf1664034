"""ONNX files as this project writes them: ``<name>.onnx`` with its tensors in one data file beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

EXTERNAL_DATA_THRESHOLD = 1024  # bytes: smaller tensors stay in the graph file


def save_with_external_data(model: Any, path: Path) -> Path:
    """Save ``model`` (a ModelProto, all data loaded) at ``path``, every tensor of at least
    ``EXTERNAL_DATA_THRESHOLD`` bytes in ``<path name>.data`` beside it; return ``path``."""
    import onnx

    path = Path(path)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=EXTERNAL_DATA_THRESHOLD)
    return path


def model_size_mb(model: Path) -> float:
    """Size of an ONNX model with its external data, in MB."""
    return sum(p.stat().st_size for p in model.parent.glob(model.name + "*")) / 1e6
