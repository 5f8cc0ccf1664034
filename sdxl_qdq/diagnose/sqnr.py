"""Component-level comparisons of float and QDQ models on recorded inputs."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from sdxl_qdq.cache import package_versions
from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.judge.metrics import sqnr_db
from sdxl_qdq.models.prompts import Prompt
from sdxl_qdq.run.pipeline import ComponentSet, record_inputs
from sdxl_qdq.runtime import QNN_SOCS, QnnOptions, create_session, qnn_is_simulated


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


PARITY_MARGIN_DB = 3.0  # a bound is the measured SQNR minus this: half the noise power again
PARITY_SIMULATOR_PROMPTS = 5  # the HTP simulator runs ~4 s per GMAC: the first few test prompts there, all 50 on a chip


def qnn_parity(
    build: Any,
    prompts: list[Prompt],
    *,
    qnn: QnnOptions | None = None,
    components: list[str] | tuple[str, ...] = COMPONENTS,
) -> dict[str, dict[str, float]]:
    """SQNR (dB) of each QDQ component's outputs on the QNN EP against the same model on the CPU EP, over the
    inputs the float pipeline gives each component for ``prompts`` (1 step)."""
    feeds = record_inputs(build.float, prompts)
    result = {}
    for component in components:
        cpu = create_session(build.qdq.models[component])
        npu = create_session(build.qdq.models[component], ep="qnn", qnn=qnn)
        names = [o.name for o in cpu.get_outputs()]
        runs = [(cpu.run(None, f), npu.run(None, f)) for f in feeds[component]]
        result[component] = {
            n: sqnr_db(np.stack([c[i] for c, _ in runs]), np.stack([q[i] for _, q in runs]))
            for i, n in enumerate(names)
        }
    return result


def parity_baseline(
    build: Any,
    measured: dict[str, dict[str, float]],
    *,
    prompts: int,
    qnn: QnnOptions,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``baselines/<model>/parity.json`` from a measurement: bounds ``PARITY_MARGIN_DB`` below each value, never
    below a ``previous`` bound (a bound is lowered only by hand, with its reason)."""
    return {
        "about": (
            f"QNN EP vs CPU EP on the same QDQ models: SQNR in dB per output over the first {prompts} test "
            f"prompts (1 step). bound_db = measured_db - {PARITY_MARGIN_DB:g} dB (half the noise power again) is "
            "the gate. Written by `sdxl-qdq parity --write`; review the diff before committing."
        ),
        "ep": "qnn",
        "qnn_soc": f"{qnn.soc_model} ({QNN_SOCS[qnn.soc_model]})",
        "qnn_backend": "htp simulator" if qnn_is_simulated() else "htp device",
        "recipe": build.recipe_name,
        "versions": package_versions(),
        "prompts": prompts,
        "margin_db": PARITY_MARGIN_DB,
        "outputs": {
            c: {
                n: {"measured_db": round(v, 2), "bound_db": max(round(v - PARITY_MARGIN_DB, 2), _bound(previous, c, n))}
                for n, v in outs.items()
            }
            for c, outs in measured.items()
        },
    }


def _bound(previous: dict[str, Any] | None, component: str, output: str) -> float:
    return float((previous or {}).get("outputs", {}).get(component, {}).get(output, {}).get("bound_db", float("-inf")))
