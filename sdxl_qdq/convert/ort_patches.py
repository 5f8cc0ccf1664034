"""Every replacement of onnxruntime internals this project makes, in one place, applied by ``patched``.

They let onnxruntime's own quantization tools work on graph-only models (weights left in their data file:
``graph_only_preprocess``, ``graph_only_quantizer``) and keep calibration and the quantizer linear in the node
count (``linear_quantizer``, used by the Olive path and the lean path alike). Every replacement computes what the
code it replaces computes: the models come out byte-identical (``tests/test_ort_patches.py``). Each was written
against the onnxruntime version in ``WRITTEN_FOR``: on another version ``patched`` refuses to run (a changed
internal would be replaced blind), with the fix in its message.
"""

from __future__ import annotations

import contextlib
import importlib
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from sdxl_qdq.errors import BuildError

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


_ABSENT = object()


@contextlib.contextmanager
def patched(replacements: list[Replacement]) -> Iterator[None]:
    """Apply ``replacements`` for the duration of the block (after the version check), then restore them (a class
    gets back exactly what its own ``__dict__`` held: a staticmethod stays one, an inherited attribute is removed)."""
    check_versions()
    saved = [
        (owner, name, vars(owner).get(name, _ABSENT) if isinstance(owner, type) else getattr(owner, name))
        for owner, name, _ in replacements
    ]
    for owner, name, value in replacements:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            if original is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def graph_only_preprocess(reload_optimized: Callable[[Any, bool], Any]) -> list[Replacement]:
    """``qnn_preprocess_model``'s save-optimize-reload step (it serializes the whole model) replaced by
    ``reload_optimized(model, shape_infer)``, which works on the graph."""
    from onnxruntime.quantization.execution_providers.qnn import preprocess

    return [(preprocess, "save_and_reload_optimize_model", reload_optimized)]


def _load_graph_with_shape_infer(path: Path) -> Any:
    """``quant_utils.load_model_with_shape_infer`` without the weights (ONNX shape inference needs the graph only)."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    add_infer_metadata(model)
    return model


def graph_only_calibrator() -> list[Replacement]:
    """onnxruntime's calibrators built on a graph-only model: its graph is loaded and shape-inferred without the
    weights, which stay in their file for the inference session alone."""
    return [(_module("calibrate"), "load_model_with_shape_infer", _load_graph_with_shape_infer)]


def graph_only_quantizer(data_dir: Path) -> list[Replacement]:
    """``quantize_static`` on a graph-only model whose data file is in ``data_dir`` (run it with that folder as
    the cwd): models are loaded and shape-inferred without their data, and the float tensors the quantizer keeps
    get their data read in just before the save. Use it with ``linear_quantizer``."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.quantization.quant_utils import add_infer_metadata

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

    return [
        (_module("quantize"), "load_model_with_shape_infer", _load_graph_with_shape_infer),
        (_module("base_quantizer"), "save_and_reload_model_with_shape_infer", reload_graph_with_shape_infer),
        (ONNXModel, "save_model_to_file", save_with_data),
    ]


def _module(name: str) -> Any:
    """A module of ``onnxruntime.quantization`` (the package's ``quantize`` is a function; this is the module)."""
    return importlib.import_module(f"onnxruntime.quantization.{name}")


# The modules that bind quant_utils.find_by_name under that name
FIND_BY_NAME_MODULES = (
    "quant_utils",
    "base_quantizer",
    "onnx_quantizer",
    "qdq_quantizer",
    "onnx_model",
    "operators.conv",
    "operators.gemm",
    "operators.matmul",
)
_CALIBRATION_SUFFIXES = ("_ReduceMin", "_ReduceMax")


class _Index:
    """The items of a protobuf repeated field by name (``names(item)``: an item's names), in field order, and the
    items ``flag(item)`` picks. Checked before every use: it indexes what was appended since, and is built again
    when the field is shorter than indexed, holds another message at the last indexed position (items removed or
    replaced behind its back), or ``generation()`` moved (an item changed where this index cannot see it);
    ``forget`` follows a removal it is told of."""

    def __init__(
        self,
        field: Any,
        names: Callable[[Any], Iterable[str]],
        generation: Callable[[], int],
        flag: Callable[[Any], bool] = lambda _: False,
    ) -> None:
        self.field, self.names, self.generation, self.flag = field, names, generation, flag
        self.at: dict[str, list[Any]] = {}
        self.flagged: list[Any] = []
        self.count, self.last, self.built_at = 0, None, -1

    def current(self) -> dict[str, list[Any]]:
        field, n = self.field, len(self.field)
        if (
            self.built_at != self.generation()
            or n < self.count
            or (self.count and field[self.count - 1] is not self.last)
        ):
            self.at, self.flagged, self.count, self.built_at = {}, [], 0, self.generation()
        for i in range(self.count, n):
            item = field[i]
            for name in self.names(item):
                items = self.at.setdefault(name, [])
                if not items or items[-1] is not item:
                    items.append(item)
            if self.flag(item):
                self.flagged.append(item)
        self.count, self.last = n, (field[n - 1] if n else None)
        return self.at

    def first(self, name: str) -> Any:
        """The first item named ``name``, or None (``quant_utils.find_by_name``)."""
        items = self.current().get(name)
        if not items:
            return None
        if items[0].name != name:  # renamed in place: look the slow way, index again next time
            self.built_at = -1
            return next((i for i in self.field if i.name == name), None)
        return items[0]

    def forget(self, item: Any) -> None:
        """``item`` was just removed from the field (which was current before)."""
        for name in self.names(item):
            items = self.at.get(name, [])
            for k, other in enumerate(items):
                if other is item:
                    del items[k]
                    break
        self.flagged = [i for i in self.flagged if i is not item]
        self.count -= 1
        self.last = self.field[self.count - 1] if self.count else None


class _QuantizerScope:
    """Indexes of the graph ``QDQQuantizer.quantize_model`` is quantizing, live while it runs: inside it the graph
    changes only through ``ONNXModel``'s methods (nodes appended, inputs replaced, initializers appended or
    removed; onnxruntime 1.32, read for this), which the indexes follow."""

    def __init__(self) -> None:
        self.model: Any = None  # the onnx ModelProto being quantized, or None outside quantize_model
        self.generation = 0  # moved by every input replacement this scope does not make itself
        self.nodes: _Index | None = None
        self.initializers: _Index | None = None

    def enter(self, model: Any) -> tuple[Any, Any, Any]:
        saved = (self.model, self.nodes, self.initializers)
        from onnx import TensorProto

        graph = model.graph
        self.model = model
        self.nodes = _Index(graph.node, lambda node: node.input, lambda: self.generation)
        self.initializers = _Index(
            graph.initializer,
            lambda init: (init.name,),
            lambda: 0,
            flag=lambda init: init.data_type == TensorProto.FLOAT8E4M3FN,
        )
        return saved

    def leave(self, saved: tuple[Any, Any, Any]) -> None:
        self.model, self.nodes, self.initializers = saved

    def initializer_index(self, field: Any) -> _Index | None:
        return self.initializers if self.model is not None and field is self.model.graph.initializer else None

    def node_index(self, field: Any) -> _Index | None:
        return self.nodes if self.model is not None and field is self.model.graph.node else None


def linear_quantizer() -> list[Replacement]:
    """Calibration's graph augmentation and the QDQ quantizer's bookkeeping, in time linear in the graph.

    onnxruntime scans the whole graph per calibrated tensor (where to insert its ReduceMin/Max, its type) and, in
    the quantizer, per quantized tensor (every node's inputs to replace, every initializer to find by name or to
    check): the square of the node count, 3/4 of a tiny UNet's quantization time and minutes on the real UNet's
    14 k nodes. These replacements compute the same graphs with indexes: the augmented graph's nodes in the same
    order, each input replaced in the same nodes, the same first initializer of each name. Outside
    ``quantize_model`` they do what onnxruntime does, stopping at the first match or testing membership in C."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    scope = _QuantizerScope()
    replace_node_input = ONNXModel.replace_node_input  # the staticmethod's function
    remove_initializer_original = ONNXModel.remove_initializer
    quantize_model = QDQQuantizer.quantize_model

    def find_by_name(item_name: str, item_list: Any) -> Any:
        index = scope.initializer_index(item_list)
        if index is None:
            return next((item for item in item_list if item.name == item_name), None)
        return index.first(item_name)

    def get_initializer(self: Any, name: str) -> Any:
        return find_by_name(name, self.model.graph.initializer)

    def initializer_extend(self: Any, inits: Any) -> None:
        if len(inits) == 0:
            raise ValueError("Can add an empty list.")
        index = scope.initializer_index(self.model.graph.initializer)
        if index is None:
            checked: Iterable[Any] = self.initializer()
        else:  # _check_init does nothing but for float8 tensors: check those
            index.current()
            checked = list(index.flagged)
        for init in checked:
            self._check_init(init, "gain")
        for init in inits:
            self._check_init(init)
            self.model.graph.initializer.append(init)

    def replace_input_of_all_nodes(self: Any, old: str, new: str) -> None:
        assert isinstance(old, str) and isinstance(new, str)
        nodes = self.model.graph.node
        index = scope.node_index(nodes)
        if index is None:
            for node in nodes:
                if old in node.input:
                    replace_node_input(node, old, new)
            return
        at = index.current()
        for node in at.pop(old, []):
            for j in range(len(node.input)):
                if node.input[j] == old:
                    node.input[j] = new
            readers = at.setdefault(new, [])
            if not any(r is node for r in readers):
                readers.append(node)

    def remove_initializer(self: Any, tensor: Any) -> None:
        field = self.model.graph.initializer
        index = scope.initializer_index(field)
        if index is None:
            return remove_initializer_original(self, tensor)
        # list.remove semantics: the first item equal to ``tensor`` (equal items have its name)
        removed = next((item for item in index.current().get(tensor.name, []) if item == tensor), None)
        if removed is not None:
            field.remove(removed)
            index.forget(removed)

    def replace_node_input_tracked(node: Any, old: str, new: str) -> None:
        scope.generation += 1
        replace_node_input(node, old, new)

    def quantize_model_indexed(self: Any) -> Any:
        saved = scope.enter(self.model.model)
        try:
            return quantize_model(self)
        finally:
            scope.leave(saved)

    return [
        (MinMaxCalibrater, "augment_graph", _linear_augment_graph(MinMaxCalibrater.augment_graph)),
        (QDQQuantizer, "quantize_model", quantize_model_indexed),
        (ONNXModel, "replace_node_input", staticmethod(replace_node_input_tracked)),
        (ONNXModel, "replace_input_of_all_nodes", replace_input_of_all_nodes),
        (ONNXModel, "get_initializer", get_initializer),
        (ONNXModel, "initializer_extend", initializer_extend),
        (ONNXModel, "remove_initializer", remove_initializer),
        *[(_module(m), "find_by_name", find_by_name) for m in FIND_BY_NAME_MODULES],
    ]


def _linear_augment_graph(original: Callable[[Any], None]) -> Callable[[Any], None]:
    """``MinMaxCalibrater.augment_graph`` (onnxruntime 1.32): each calibrated tensor gets ReduceMin → Reshape and
    ReduceMax → Reshape, inserted before the first node that reads the tensor (at the end if none does), each
    pair before the ones inserted earlier for that tensor; a graph output per reduction. onnxruntime finds that
    node by scanning the graph, and rebuilds a name → type map, per reduction; this finds them once. A tensor
    whose name could collide with the added ones takes onnxruntime's own path."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    def augment_graph(self: Any) -> None:
        tensors, _ = self.select_tensors_to_calibrate(self.model)
        if any(
            t.endswith(_CALIBRATION_SUFFIXES) or t.endswith(tuple(s + "_Reshape" for s in _CALIBRATION_SUFFIXES))
            for t in tensors
        ):
            return original(self)
        graph = self.model.graph
        reshape_shape_name = str(uuid.uuid4())
        graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), reshape_shape_name))
        value_infos = {vi.name: vi for vi in graph.value_info}
        value_infos.update({o.name: o for o in graph.output})
        value_infos.update({i.name: i for i in graph.input})
        nodes = list(graph.node)
        first_reader: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for name in node.input:
                first_reader.setdefault(name, i)
        inserted: dict[int, list[Any]] = defaultdict(list)  # original position -> nodes to put before it
        for tensor_name in tensors:
            for reduce_op_name in ("ReduceMin", "ReduceMax"):
                reduce_output = tensor_name + "_" + reduce_op_name
                intermediate_output = reduce_output + "_Reshape"
                reduce_node = helper.make_node(
                    reduce_op_name, [tensor_name], [intermediate_output], keepdims=1, name=reduce_output
                )
                reshape_node = helper.make_node(
                    "Reshape",
                    inputs=[intermediate_output, reshape_shape_name],
                    outputs=[reduce_output],
                    name=intermediate_output,
                )
                if tensor_name not in value_infos:
                    raise ValueError(
                        f"Unable to guess tensor type for tensor {tensor_name!r}, "
                        "running shape inference before quantization may resolve this issue."
                    )
                onnx_type = value_infos[tensor_name].type.tensor_type.elem_type
                if self.per_channel:
                    reduced_axes = [0, *range(2, len(value_infos[tensor_name].type.tensor_type.shape.dim))]
                    if _op_version(reduce_op_name, self.model) < 18:
                        reduce_node.attribute.append(helper.make_attribute("axes", reduced_axes))
                    else:
                        reduce_axes_name = str(uuid.uuid4())
                        graph.initializer.append(
                            numpy_helper.from_array(np.array(reduced_axes, dtype=np.int64), reduce_axes_name)
                        )
                        reduce_node.input.append(reduce_axes_name)
                group = inserted[first_reader.get(tensor_name, len(nodes))]
                at = next((k for k, n in enumerate(group) if tensor_name in n.input), len(group))
                group[at:at] = [reduce_node, reshape_node]
                graph.output.append(helper.make_tensor_value_info(reduce_output, onnx_type, [None]))
        ordered = []
        for i, node in enumerate(nodes):
            ordered += inserted.get(i, [])
            ordered.append(node)
        ordered += inserted.get(len(nodes), [])
        del graph.node[:]
        graph.node.extend(ordered)
        onnx.save(self.model, self.augmented_model_path, save_as_external_data=self.use_external_data_format)

    return augment_graph


def _op_version(op_type: str, model: Any) -> int:
    import onnx

    for opset_import in model.opset_import:
        if onnx.defs.has(op_type, opset_import.domain):
            return opset_import.version
    raise RuntimeError(f"Model does not contain a version for '{op_type}'.")
