"""Every replacement of onnxruntime internals this project makes, in one place, applied by ``patched``.

They let onnxruntime's own quantization tools work on graph-only models (weights left in their data file)
and keep the quantizer linear in the node count. Each was written against the onnxruntime version in
``WRITTEN_FOR``: on another version ``patched`` refuses to run (a changed internal would be replaced
blind), with the fix in its message.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from quant.errors import BuildError

WRITTEN_FOR = {"onnxruntime": "1.32."}  # package -> version prefix the replacements were written against

Replacement = tuple[Any, str, Any]  # (module or class, attribute, replacement)


def check_versions(written_for: dict[str, str] = WRITTEN_FOR) -> None:
    """Raise unless every package in ``written_for`` is installed at a version with its prefix."""
    for package, prefix in written_for.items():
        installed = metadata.version(package)
        if not installed.startswith(prefix):
            raise BuildError(
                f"{__name__} replaces internals of {package} {prefix}x, but {package} {installed} is installed; "
                f"install the version pinned in constraints.txt, or review each replacement in {__file__} against "
                f"{package} {installed} and update WRITTEN_FOR"
            )


@contextlib.contextmanager
def patched(replacements: list[Replacement]) -> Iterator[None]:
    """Apply ``replacements`` for the duration of the block (after the version check), then restore them."""
    check_versions()
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in replacements]
    for owner, name, value in replacements:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def graph_only_preprocess(reload_optimized: Callable[[Any, bool], Any]) -> list[Replacement]:
    """``qnn_preprocess_model``'s save-optimize-reload step (it serializes the whole model) replaced by
    ``reload_optimized(model, shape_infer)``, which works on the graph."""
    from onnxruntime.quantization.execution_providers.qnn import preprocess

    return [(preprocess, "save_and_reload_optimize_model", reload_optimized)]


def graph_only_quantizer(data_dir: Path) -> list[Replacement]:
    """``quantize_static`` on a graph-only model whose data file is in ``data_dir`` (run it with that folder as
    the cwd): models are loaded and shape-inferred without their data, the float tensors the quantizer keeps get
    their data read in just before the save, and two per-tensor helpers that scan the whole graph (input
    replacement, lookup by name) are replaced by equivalent ones that stop early or test in C (the quantizer's
    cost grows with the square of the node count: 14 k nodes on the real UNet)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    def load_graph_with_shape_infer(path: Path) -> Any:  # quant_utils.load_model_with_shape_infer
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
        add_infer_metadata(model)
        return model

    def reload_graph_with_shape_infer(model: Any) -> Any:  # quant_utils.save_and_reload_model_with_shape_infer
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = onnx.shape_inference.infer_shapes(copy)
        add_infer_metadata(model)
        return model

    save_model_to_file = ONNXModel.save_model_to_file

    def save_with_data(self: Any, output_path: str, use_external_data_format: bool = False) -> None:
        for t in self.model.graph.initializer:
            if uses_external_data(t):  # float tensors the quantizer kept: still in the input's data file
                load_external_data_for_tensor(t, str(data_dir))
                t.data_location = onnx.TensorProto.DEFAULT
                del t.external_data[:]
        with contextlib.chdir(Path(output_path).parent):  # onnx checks the data file's name relative to the cwd
            save_model_to_file(self, output_path, use_external_data_format)

    def replace_input_of_all_nodes(self: Any, old: str, new: str) -> None:
        # onnxruntime's loop, with the membership test done by protobuf in C (once per quantized tensor, over
        # every node)
        for node in self.model.graph.node:
            if old in node.input:
                ONNXModel.replace_node_input(node, old, new)

    def find_by_name(item_name: str, item_list: Any) -> Any:
        # onnxruntime's lookup (first item of that name, else None) without scanning past the first match
        return next((item for item in item_list if item.name == item_name), None)

    def module(name: str) -> Any:  # the package's `quantize` is a function; these are the modules
        return importlib.import_module(f"onnxruntime.quantization.{name}")

    return [(module("quantize"), "load_model_with_shape_infer", load_graph_with_shape_infer),
            (module("base_quantizer"), "save_and_reload_model_with_shape_infer", reload_graph_with_shape_infer),
            (ONNXModel, "save_model_to_file", save_with_data),
            (ONNXModel, "replace_input_of_all_nodes", replace_input_of_all_nodes),
            *[(module(m), "find_by_name", find_by_name) for m in ("base_quantizer", "onnx_quantizer", "qdq_quantizer", "onnx_model")]]
