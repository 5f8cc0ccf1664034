"""The recipe's passes on graph-only models: QNNPreprocess, GraphSurgeries and quant_preprocess with the same
onnxruntime and Olive code as the stock path, and the opset-21 conversion for 16-bit types."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from sdxl_qdq.convert.lean.graph import Graph, ort_optimize
from sdxl_qdq.convert.ort_patches import graph_only_preprocess, patched


# ------------------------------------------------------------------------------------------- the passes
def qnn_preprocess(graph: Graph, work: Path, **options: Any) -> Graph:
    """onnxruntime's ``qnn_preprocess_model``; its save-optimize-reload step works on the graph only."""
    import onnx
    from onnxruntime.quantization.execution_providers.qnn import preprocess

    optimized: list[Graph] = []

    def reload_optimized(model: Any, shape_infer: bool) -> Any:
        g = Graph(onnx.shape_inference.infer_shapes(model) if shape_infer else model, graph.base_dir)
        g = ort_optimize(g, work / "optimize")  # as onnxruntime.tools.onnx_model_utils.optimize_model
        props = {"onnx.infer": "onnxruntime.tools.qnn.preprocess", **{p.key: p.value for p in g.proto.metadata_props}}
        onnx.helper.set_model_props(g.proto, props)
        optimized.append(g)
        return g.proto

    out = work / "out" / "model.onnx"
    out.parent.mkdir(parents=True)
    with patched(graph_only_preprocess(reload_optimized)):
        modified = preprocess.qnn_preprocess_model(graph.proto, str(out), save_as_external_data=False, **options)
    if not modified:  # as Olive's pass: an unmodified model passes through
        return graph
    return Graph(onnx.load(str(out), load_external_data=False), optimized[0].base_dir)


def graph_surgeries(
    graph: Graph, work: Path, surgeries: list[dict[str, Any]], remove_duplicate_initializers: bool = True
) -> Graph:
    """Olive's GraphSurgeries pass (surgeons, then initializer de-duplication), on the graph: the tensors a
    surgeon or the de-duplication inspects are read from the data file on demand (relative to the cwd, as
    ``numpy_helper.to_array`` and onnx_ir's external tensors read them), never all at once."""
    import onnx
    import onnx_ir as ir
    from olive.passes.onnx.graph_surgeries import GraphSurgeries

    import sdxl_qdq.convert.surgeons  # noqa: F401  (registers this project's surgeons)

    model = onnx.ModelProto()
    model.CopyFrom(graph.proto)
    with contextlib.chdir(graph.base_dir):
        for surgery in surgeries:  # the pass's own surgeon lookup (it only reads the registry and the signature)
            model = GraphSurgeries.init_surgeon_instance(GraphSurgeries, surgery)(model)
        if remove_duplicate_initializers:
            from onnx_ir.passes.common import DeduplicateHashedInitializersPass

            ir_model = DeduplicateHashedInitializersPass()(ir.from_proto(model)).model
            model = ir.to_proto(ir_model)
            for value in ir_model.graph.initializers.values():  # unmap the data file (hashed through mmap)
                if isinstance(value.const_value, ir.ExternalTensor):
                    value.const_value.release()
    return Graph(model, graph.base_dir)


def quant_preprocess(graph: Graph, work: Path) -> Graph:
    """onnxruntime's ``quant_pre_process`` as Olive calls it (auto_merge), on the graph only."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_pre_process_metadata
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # it reads the few initializers it computes shapes from through numpy_helper.to_array, relative to the cwd
    with contextlib.chdir(graph.base_dir):
        model = SymbolicShapeInference.infer_shapes(graph.proto, 2**31 - 1, True, False, 0)
    g = ort_optimize(Graph(model, graph.base_dir), work / "optimize")
    model = onnx.shape_inference.infer_shapes(g.proto)
    add_pre_process_metadata(model)
    return Graph(model, g.base_dir)


def to_opset21(graph: Graph) -> Graph:
    """onnxruntime's ``update_opset_version`` for 16-bit activations (convert, re-infer shapes), graph only."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_infer_metadata, get_opset_version

    model = onnx.shape_inference.infer_shapes(graph.proto)
    add_infer_metadata(model)
    if get_opset_version(model) < 21:
        model = onnx.shape_inference.infer_shapes(onnx.version_converter.convert_version(model, 21))
        add_infer_metadata(model)
    return Graph(model, graph.base_dir)
