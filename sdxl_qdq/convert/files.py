"""ONNX files as this project writes them: ``<name>.onnx`` with its tensors in one data file beside it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

EXTERNAL_DATA_THRESHOLD = 1024  # bytes: smaller tensors stay in the graph file

# A prepared folder (sdxl_qdq.convert.lean.quantize.lean_prepare): a graph ready to calibrate, beside its data
PREPARED_MODEL = "model.onnx"  # the calibration-ready graph (opset 21)
PREPARED_INPUT = "pre.onnx"  # the quantization pass's input graph: the QDQ configuration is computed on it
PREPARED_META = "prepared.json"  # {"op_types": the op types whose tensors are calibrated}


def save_with_external_data(model: Any, path: Path) -> Path:
    """Save ``model`` (a ModelProto, all data loaded) at ``path``, every tensor of at least
    ``EXTERNAL_DATA_THRESHOLD`` bytes in ``<path name>.data`` beside it; return ``path``."""
    import onnx

    path = Path(path)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data",
        size_threshold=EXTERNAL_DATA_THRESHOLD,
    )
    return path


def rewrite_with_external_data(source: Path, path: Path) -> Path:
    """Write the model at ``source`` (tensors inline or in external files beside it) as ``save_with_external_data``
    would after ``onnx.load(source)``, byte for byte, without holding its weights: each tensor's bytes are copied
    from where they are into ``<path name>.data``. For a 10 GB UNet this is a copy at disk speed instead of
    loading 10 GB into protobuf and serializing it again (2/3 of its export). Returns ``path``."""
    import onnx
    from onnx.external_data_helper import (
        ExternalDataInfo,
        _get_all_tensors,
        _get_initializer_tensors,
        uses_external_data,
    )

    path = Path(path)
    model = onnx.load(str(source), load_external_data=False)
    initializers = list(_get_initializer_tensors(model))  # save_model's convert_attribute=False: these only
    candidates = {id(t) for t in initializers}  # (the list keeps the wrappers, and so their ids, alive)
    overhead = sys.getsizeof(b"")  # onnx compares sys.getsizeof(raw_data) with the threshold
    location = f"{path.name}.data"
    with open(path.parent / location, "xb") as data:
        for tensor in _get_all_tensors(model):
            external = uses_external_data(tensor)
            if not external and not tensor.HasField("raw_data"):
                continue
            info = ExternalDataInfo(tensor) if external else None
            size = (
                (info.length if info.length is not None else _external_size(source.parent, info))
                if info
                else len(tensor.raw_data)
            )
            if id(tensor) in candidates and overhead + size >= EXTERNAL_DATA_THRESHOLD:
                offset = data.tell()
                if info:
                    _copy_range(source.parent / info.location, info.offset or 0, size, data)
                else:
                    data.write(tensor.raw_data)
                    tensor.ClearField("raw_data")
                _point_to(tensor, location, offset, size)
            elif info:  # a small or attribute tensor that was external: inline, as onnx.load leaves it
                with open(source.parent / info.location, "rb") as f:
                    f.seek(info.offset or 0)
                    tensor.raw_data = f.read(size)
                tensor.data_location = onnx.TensorProto.DEFAULT
                del tensor.external_data[:]
    onnx.save_model(model, str(path))
    return path


def _point_to(tensor: Any, location: str, offset: int, length: int) -> None:
    """``onnx.external_data_helper.set_external_data`` (which needs the bytes in memory) for bytes already written."""
    from onnx import TensorProto

    del tensor.external_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


def _external_size(folder: Path, info: Any) -> int:
    return (folder / info.location).stat().st_size - (info.offset or 0)


def _copy_range(file: Path, offset: int, size: int, out: Any) -> None:
    with open(file, "rb") as f:
        f.seek(offset)
        remaining = size
        while remaining:
            chunk = f.read(min(remaining, 64 << 20))
            if not chunk:
                raise OSError(f"{file} ends {remaining} bytes before the tensor stored in it")
            out.write(chunk)
            remaining -= len(chunk)


def model_size_mb(model: Path) -> float:
    """Size of an ONNX model with its external data, in MB."""
    return sum(p.stat().st_size for p in model.parent.glob(model.name + "*")) / 1e6
