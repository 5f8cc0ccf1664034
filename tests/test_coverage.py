"""Operator-level view: QDQ coverage with named exceptions, op histograms as snapshots, layer localization."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.diagnose.coverage import op_histogram, qdq_coverage
from sdxl_qdq.judge.baseline import baseline_model_name
from sdxl_qdq.paths import BASELINES_DIR


def _exceptions(qdq_artifacts) -> dict:
    path = BASELINES_DIR / baseline_model_name(qdq_artifacts.source.name) / "coverage.json"
    if not path.is_file():
        pytest.skip(f"no {path}: record the allowed float islands of this model there (op type, count, reason)")
    return json.loads(path.read_text())["exceptions"]


@pytest.mark.parametrize("component", COMPONENTS)
def test_qdq_covers_every_compute_node_but_named_exceptions(qdq_artifacts, component: str) -> None:
    coverage = qdq_coverage(qdq_artifacts.qdq.models[component])
    allowed = _exceptions(qdq_artifacts)[component]
    found = dict(coverage.uncovered_op_types())
    assert found == {op: e["count"] for op, e in allowed.items()}, (
        f"{component}: float islands {[i.op_types for i in coverage.islands]} (nodes {sorted(coverage.uncovered)}) "
        f"differ from the exceptions named in coverage.json: {allowed}"
    )
    assert all(e["reason"] for e in allowed.values())
    assert coverage.compute > 0 and coverage.ratio >= 0.99


def test_coverage_detects_a_float_island(qdq_artifacts) -> None:
    """The float export itself is almost entirely uncovered: the analysis is not vacuous."""
    coverage = qdq_coverage(qdq_artifacts.float.models["vae_decoder"])
    assert coverage.ratio < 0.05 and coverage.islands and len(coverage.islands[0].nodes) > 100


@pytest.mark.parametrize("variant", ["float", "qdq"])
@pytest.mark.parametrize("component", COMPONENTS)
def test_op_histogram_snapshot(qdq_artifacts, snapshot, component: str, variant: str) -> None:
    """An Olive, onnxruntime or recipe upgrade that changes the graph shows up as a readable diff
    (update with --snapshot-update after review)."""
    if qdq_artifacts.source.name != "tiny":
        pytest.skip("op histograms are snapshotted for --qdq-model tiny; other models: record with --snapshot-update")
    assert op_histogram(getattr(qdq_artifacts, variant).models[component]) == snapshot


def test_worst_layers_are_named_worst_first(qdq_artifacts) -> None:
    from sdxl_qdq.convert.calibration import load_calibration
    from sdxl_qdq.diagnose.localize import worst_layers

    feeds = load_calibration(qdq_artifacts.calibration_dir, "text_encoder_2")[:2]
    layers = worst_layers(
        qdq_artifacts.float.models["text_encoder_2"], qdq_artifacts.qdq.models["text_encoder_2"], feeds, top=5
    )
    assert len(layers) == 5 and all(layer.tensor.startswith("/") for layer in layers)
    values = [layer.sqnr_db for layer in layers]
    assert values == sorted(values) and np.isfinite(values).all()
    # the identical model has no quantization error anywhere: nothing finite to report
    vae_feeds = load_calibration(qdq_artifacts.calibration_dir, "vae_decoder")[:1]
    assert (
        worst_layers(qdq_artifacts.float.models["vae_decoder"], qdq_artifacts.float.models["vae_decoder"], vae_feeds)
        == []
    )
