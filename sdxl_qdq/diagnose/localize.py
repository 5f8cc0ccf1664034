"""Per-layer error localization: which activations lose the most to quantization (float vs QDQ, CPU EP).

The float model is augmented with onnxruntime's ``qdq_loss_debug.modify_model_output_intermediate_tensors``
and run by its ``collect_activations``; the QDQ model gets its activation DequantizeLinear outputs
(``<tensor>_DequantizeLinear_Output``) as graph outputs, which ``qdq_loss_debug`` does not save for these
models. Tensors are matched by name and scored by SQNR (dB, lower is worse) over all feeds.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.calibration import load_calibration
from sdxl_qdq.convert.files import save_with_external_data
from sdxl_qdq.judge.metrics import sqnr_db
from sdxl_qdq.runtime import create_session

DQ_SUFFIX = "_DequantizeLinear_Output"


@dataclass(frozen=True)
class LayerError:
    tensor: str
    sqnr_db: float  # float model's activation vs the QDQ model's dequantized activation


def _expose_dequantized_activations(qdq_model: Path, out: Path) -> None:
    import onnx

    model = onnx.load(str(qdq_model))
    inits = {i.name for i in model.graph.initializer}
    existing = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] not in inits and node.output[0] not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None))
    save_with_external_data(model, out)


def worst_layers(
    float_model: Path, qdq_model: Path, feeds: list[dict[str, np.ndarray]], *, top: int = 3
) -> list[LayerError]:
    """The ``top`` activations with the lowest float-vs-QDQ SQNR over ``feeds``, worst first."""
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    with tempfile.TemporaryDirectory(prefix="localize-") as tmp:
        aug_float, aug_qdq = Path(tmp, "float.onnx"), Path(tmp, "qdq.onnx")
        modify_model_output_intermediate_tensors(str(float_model), str(aug_float), save_as_external_data=True)
        _expose_dequantized_activations(qdq_model, aug_qdq)
        float_acts = collect_activations(str(aug_float), iter(feeds))
        session = create_session(aug_qdq)
        names = [o.name for o in session.get_outputs()]
        qdq_acts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for feed in feeds:
            for n, value in zip(names, session.run(None, feed)):
                qdq_acts[n].append(value)
    scored = []
    for name, values in qdq_acts.items():
        if name.endswith(DQ_SUFFIX) and (ref := float_acts.get(name[: -len(DQ_SUFFIX)])) is not None:
            # qdq_loss_debug saves the float activations flattened
            ref_flat = np.concatenate([np.ravel(r) for r in ref])
            test_flat = np.concatenate([np.ravel(v) for v in values])
            if ref_flat.shape == test_flat.shape:
                value = sqnr_db(ref_flat, test_flat)
                if np.isfinite(value):
                    scored.append(LayerError(name[: -len(DQ_SUFFIX)], value))
    return sorted(scored, key=lambda e: e.sqnr_db)[:top]


def localize_build(build, *, samples: int = 4, top: int = 3) -> dict[str, list[LayerError]]:
    """Worst layers of every component of a ``Build``, on its first ``samples`` calibration inputs."""
    return {
        c: worst_layers(
            build.float.models[c], build.qdq.models[c], load_calibration(build.calibration_dir, c)[:samples], top=top
        )
        for c in COMPONENTS
    }
