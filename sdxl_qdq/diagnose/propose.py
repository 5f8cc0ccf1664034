"""A proposed fix for the worst layers: the activations that lose the most to their own quantization get 16 bits
through the quantization pass's ``extra_options.TensorQuantOverrides`` (``{tensor: [{"quant_type": "QUInt16"}]}``,
which Olive hands to the QNN quantization config). Every node stays quantized, so QNN HTP still takes the whole
graph.

Which activations: each one the QDQ model quantizes (a ``QuantizeLinear`` on a graph tensor) is scored by the SQNR
of the float model's activation against that same activation quantized and dequantized with the QDQ model's own
scale and zero point, on recorded calibration inputs: the error its quantization adds *there*, where float-vs-QDQ
SQNR (``sdxl_qdq.diagnose.localize``) accumulates everything upstream and names whatever comes after the culprit.

(Olive's own ``MixedPrecisionOverrides`` pass is not used: olive-ai 0.13 returns the input model without the
overrides whenever no initializer needs copying, so overrides of activations alone are dropped silently.)"""

from __future__ import annotations

import copy
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.calibration import load_calibration
from sdxl_qdq.diagnose.localize import LayerError
from sdxl_qdq.judge.metrics import sqnr_db

OVERRIDES = "TensorQuantOverrides"


def block_of(tensor: str) -> str:
    """The export's module below the component's wrapper: ``/unet/up_blocks.0/resnets.1/…/Add_output_0`` →
    ``up_blocks.0``; '' when the name carries no module path."""
    parts = [p for p in tensor.split("/") if p]
    return parts[1] if tensor.startswith("/") and len(parts) > 2 else ""


def _activation_params(qdq_model: Path) -> dict[str, tuple[float, int, np.dtype]]:
    """Scale, zero point and integer type of every activation the QDQ model quantizes with one scale."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_model), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer if not i.external_data}
    params = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]])
        zero = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
        if scale.size == 1 and zero is not None:
            params[node.input[0]] = (float(scale.ravel()[0]), int(zero.ravel()[0]), zero.dtype)
    return params


def rounding_errors(float_model: Path, qdq_model: Path, feeds: list[dict[str, np.ndarray]]) -> list[LayerError]:
    """Every quantized activation's own quantization SQNR (float activation vs its quantize-dequantize with the
    QDQ model's parameters) over ``feeds``, worst first."""
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    params = _activation_params(qdq_model)
    with tempfile.TemporaryDirectory(prefix="propose-") as tmp:
        augmented = Path(tmp, "float.onnx")
        modify_model_output_intermediate_tensors(str(float_model), str(augmented), save_as_external_data=True)
        activations = collect_activations(str(augmented), iter(feeds))
    scored = []
    for name, (scale, zero, dtype) in params.items():
        values = activations.get(name)
        if values is None or scale <= 0:
            continue
        x = np.concatenate([np.ravel(v) for v in values]).astype(np.float64)
        info = np.iinfo(dtype)
        value = sqnr_db(x, (np.clip(np.round(x / scale) + zero, info.min, info.max) - zero) * scale)
        if np.isfinite(value):
            scored.append(LayerError(name, value))
    return sorted(scored, key=lambda e: e.sqnr_db)


def with_overrides(
    recipe: dict[str, Any], component: str, tensors: list[str], quant_type: str = "QUInt16", *, name: str | None = None
) -> dict[str, Any]:
    """``recipe`` with ``tensors`` of ``component`` quantized as ``quant_type`` (entries for the same tensors are
    replaced, others kept)."""
    out = copy.deepcopy(recipe)
    quantization = next(
        p for p in out["workflows"][component]["passes"].values() if p.get("type") == "OnnxStaticQuantization"
    )
    overrides = quantization.setdefault("extra_options", {}).setdefault(OVERRIDES, {})
    overrides.update({t: [{"quant_type": quant_type}] for t in tensors})
    out["name"] = name or f"{recipe.get('name', 'recipe')}+{component}-{len(tensors)}x{quant_type}"
    return out


@dataclass(frozen=True)
class Proposal:
    recipe: dict[str, Any]
    tensors: dict[str, list[LayerError]]  # per component, the activations raised to 16 bits, worst first

    def lines(self) -> list[str]:
        out = []
        for component, errors in self.tensors.items():
            blocks = Counter(block_of(e.tensor) or "(top level)" for e in errors)
            out.append(f"{component}: {len(errors)} activations to 16 bits, by block {dict(blocks.most_common(4))}")
            out += [f"  {e.sqnr_db:7.2f} dB  {e.tensor}" for e in errors[:5]]
        return out


def propose(build: Any, recipe: dict[str, Any], *, top: int = 20, samples: int = 4) -> Proposal:
    """The ``top`` activations over all components with the lowest own-quantization SQNR that are not 16-bit
    already, raised to 16 bits in a copy of ``recipe`` (the one ``build`` was made with)."""
    scored = []
    for c in COMPONENTS:
        feeds = load_calibration(build.calibration_dir, c)[:samples]
        wide = {t for t, (_, _, dtype) in _activation_params(build.qdq.models[c]).items() if dtype.itemsize >= 2}
        scored += [
            (e.sqnr_db, c, e)
            for e in rounding_errors(build.float.models[c], build.qdq.models[c], feeds)
            if e.tensor not in wide
        ]
    chosen: dict[str, list[LayerError]] = {}
    for _, c, e in sorted(scored, key=lambda s: s[0])[:top]:
        chosen.setdefault(c, []).append(e)
    out = recipe
    for c, errors in chosen.items():
        out = raised_to_16bit(out, c, [e.tensor for e in errors])
    return Proposal(copy.deepcopy(out), chosen)


def raised_to_16bit(recipe: dict[str, Any], component: str, tensors: list[str]) -> dict[str, Any]:
    """``tensors`` of ``component`` at 16 bits: where the pass's default activation type is 16-bit, by dropping the
    overrides that made them narrower (onnxruntime then resolves the boundaries as it does for the default);
    otherwise by a ``QUInt16`` override each."""
    out = copy.deepcopy(recipe)
    quantization = next(
        p for p in out["workflows"][component]["passes"].values() if p.get("type") == "OnnxStaticQuantization"
    )
    if str(quantization.get("activation_type", "")).endswith("16"):
        overrides = (quantization.get("extra_options") or {}).get(OVERRIDES, {})
        for t in tensors:
            overrides.pop(t, None)
        out["name"] = f"{recipe.get('name', 'recipe')}+{component}-{len(tensors)}x16bit"
        return out
    return with_overrides(
        out, component, tensors, "QUInt16", name=f"{recipe.get('name', 'recipe')}+{component}-{len(tensors)}x16bit"
    )
