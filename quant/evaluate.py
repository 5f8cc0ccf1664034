"""Component-level comparisons of float and QDQ models on recorded inputs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from quant import COMPONENTS
from quant.metrics import sqnr_db
from quant.pipeline import ComponentSet, OrtSDXLPipeline
from quant.prompts import Prompt
from quant.runtime import QnnOptions, create_session


def record_inputs(float_models: ComponentSet, prompts: list[Prompt], *, steps: int = 1) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every component's inputs while the float pipeline draws ``prompts``."""
    feeds: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    pipe = OrtSDXLPipeline(float_models, recorder=lambda c, f: feeds[c].append(dict(f)))
    for prompt in prompts:
        pipe(prompt.text, steps=steps)
    return dict(feeds)


def component_sqnr(
    float_models: ComponentSet,
    qdq_models: ComponentSet,
    feeds: dict[str, list[dict[str, np.ndarray]]],
    *,
    ep: str = "cpu",
    qnn: QnnOptions | None = None,
    components: list[str] | tuple[str, ...] = COMPONENTS,
) -> dict[str, dict[str, float]]:
    """SQNR (dB) of each QDQ component's outputs vs float, over all recorded calls (concatenated)."""
    result = {}
    for component in components:
        ref_session = create_session(float_models.models[component])
        test_session = create_session(qdq_models.models[component], ep=ep, qnn=qnn)
        names = [o.name for o in ref_session.get_outputs()]
        refs, tests = defaultdict(list), defaultdict(list)
        for f in feeds[component]:
            for name, r, t in zip(names, ref_session.run(None, f), test_session.run(None, f)):
                refs[name].append(r)
                tests[name].append(t)
        result[component] = {n: sqnr_db(np.stack(refs[n]), np.stack(tests[n])) for n in names}
    return result


def model_size_mb(model: Path) -> float:
    """Size of an ONNX model with its external data, in MB."""
    return sum(p.stat().st_size for p in model.parent.glob(model.name + "*")) / 1e6
