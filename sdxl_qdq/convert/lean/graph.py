"""A graph-only ONNX model whose weights stay in their external data file, and onnxruntime's basic optimization
of it with the optimized weights written to a file (one copy of the weights, held by onnxruntime)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


# ----------------------------------------------------------------------------------------- graph files
@dataclass
class Graph:
    """A graph-only ModelProto whose external tensors live in files under ``base_dir``."""

    proto: Any
    base_dir: Path

    @classmethod
    def load(cls, path: Path) -> Graph:
        import onnx

        return cls(onnx.load(str(path), load_external_data=False), Path(path).parent)

    def data_files(self) -> set[str]:
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        return {
            next(e.value for e in t.external_data if e.key == "location")
            for t in _get_all_tensors(self.proto)
            if uses_external_data(t)
        }

    def save(self, path: Path) -> Graph:
        """Write the graph at ``path``. onnx and onnxruntime read external data only from the model's own
        folder (no links), so data files of another folder are copied there: callers keep graphs next to
        their data and only pay this when a stage must write its result elsewhere."""
        import onnx

        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.resolve() != self.base_dir.resolve():
            for name in self.data_files():
                shutil.copyfile(self.base_dir / name, path.parent / name)
        onnx.save_model(self.proto, str(path))
        return Graph(self.proto, path.parent)

    def loaded(self, tensors: Any = None) -> Any:
        """A copy of the proto with the external data of ``tensors`` (names; default all) read in."""
        import onnx
        from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        for t in proto.graph.initializer:
            if uses_external_data(t) and (tensors is None or t.name in tensors):
                load_external_data_for_tensor(t, str(self.base_dir))
                t.data_location = onnx.TensorProto.DEFAULT
                del t.external_data[:]
        return proto

    def session(self, so: Any, **kwargs: Any) -> Any:
        """An onnxruntime session over this graph, its weights read from ``base_dir`` by onnxruntime."""
        import onnxruntime

        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.base_dir))
        return onnxruntime.InferenceSession(
            self.proto.SerializeToString(), so, providers=["CPUExecutionProvider"], **kwargs
        )

    def weight_bytes(self) -> int:
        return sum(tensor_bytes(t) for t in self.proto.graph.initializer)


def tensor_bytes(t: Any) -> int:
    from onnx.helper import tensor_dtype_to_np_dtype

    return int(np.prod(t.dims, dtype=np.int64)) * np.dtype(tensor_dtype_to_np_dtype(t.data_type)).itemsize


def ort_optimize(graph: Graph, work: Path, *, disabled_optimizers: list[str] | None = None) -> Graph:
    """onnxruntime's basic-level optimization (what the stock tools run) with the optimized weights written
    to an external file: one copy of the weights, held by onnxruntime."""
    import onnxruntime

    out = work / "out"
    out.mkdir(parents=True)
    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    so.optimized_model_filepath = str(out / "model.onnx")
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.onnx.data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    kwargs = {"disabled_optimizers": disabled_optimizers} if disabled_optimizers else {}
    graph.session(so, **kwargs)
    return Graph.load(out / "model.onnx")
