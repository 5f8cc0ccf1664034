"""Benchmarks (pytest --benchmark-only runs exactly these). Speed goals live here, never in timed assertions.

Build: a cold build of the tiny model ≤ 20 s on 2 cores (in-process); a warm build ≤ 20 ms that never invokes Olive.
Latency: per component (float on CPU EP, QDQ on CPU EP, QDQ on QNN) and the end-to-end pipeline at 1 and
2 steps. Stored runs in baselines/benchmarks/<machine>/ gate regressions through `sdxl-qdq bench-gate`, relative to a
fixed workload timed beside each benchmark (`machine_probe_s`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sdxl_qdq.benchgate import probe_seconds
from sdxl_qdq.cache import ArtifactCache, package_versions
from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.stages import build

VARIANTS = [("float", "cpu"), ("qdq", "cpu"), ("qdq", "qnn")]


def _info(benchmark, qdq_artifacts, **extra) -> None:
    benchmark.extra_info.update(
        model=qdq_artifacts.source.name,
        versions=package_versions(),
        machine_probe_s=probe_seconds(),  # the machine's speed now, for `sdxl-qdq bench-gate`
        **extra,
    )


def test_build_warm(benchmark, qdq_artifacts, qdq_cache) -> None:
    _info(benchmark, qdq_artifacts, stage="build", cache="warm")
    sys.modules.pop("olive.workflows", None)
    result = benchmark(lambda: build(qdq_artifacts.source.name, cache=ArtifactCache(qdq_cache.root)))
    assert result.qdq.models == qdq_artifacts.qdq.models
    assert "olive.workflows" not in sys.modules, "a warm build imported Olive's workflow runner"


def test_build_cold(benchmark, qdq_artifacts, tmp_path: Path) -> None:
    if benchmark.disabled:  # xdist (make test): untimed, a cold build shows nothing tests/test_faults.py does not
        pytest.skip("a cold build is only worth its minute when timed: it runs in `make bench` and `make bench-ci`")
    _info(benchmark, qdq_artifacts, stage="build", cache="cold")
    roots = iter(range(100))

    def cold() -> ArtifactCache:
        cache = ArtifactCache(tmp_path / str(next(roots)))
        build(qdq_artifacts.source.name, cache=cache)
        return cache

    cache = benchmark.pedantic(cold, rounds=1, iterations=1)
    assert cache.hits == [] and "qdq" in cache.misses


@pytest.mark.parametrize(("variant", "ep"), VARIANTS, ids=[f"{v}-{e}" for v, e in VARIANTS])
@pytest.mark.parametrize("component", COMPONENTS)
def test_component_latency(
    benchmark, qdq_artifacts, qdq_qnn_options, tmp_path, component: str, variant: str, ep: str
) -> None:
    from sdxl_qdq.convert.calibration import load_calibration
    from sdxl_qdq.diagnose.qnn_profile import EXECUTE_EVENT, htp_execute_us
    from sdxl_qdq.runtime import QnnOptions, create_session, qnn_is_simulated

    if ep == "qnn":
        pytest.importorskip("onnxruntime_qnn", reason="the QNN EP needs onnxruntime-qnn (pip install onnxruntime-qnn)")
    model = getattr(qdq_artifacts, variant).models[component]
    profile = tmp_path / "qnn_profile.csv"
    options = QnnOptions(soc_model=qdq_qnn_options.soc_model, profiling_level="basic", profiling_file_path=str(profile))
    session = create_session(model, ep=ep, qnn=options if ep == "qnn" else None)
    feed = load_calibration(qdq_artifacts.calibration_dir, component)[0]
    io = qdq_artifacts.float.io(component)
    _info(
        benchmark,
        qdq_artifacts,
        component=component,
        variant=variant,
        ep=ep,
        backend="htp" if ep == "qnn" else "cpu",
        chip=(
            f"soc {qdq_qnn_options.soc_model} ({'simulated' if qnn_is_simulated() else 'device'})"
            if ep == "qnn"
            else None
        ),
        shapes={t.name: list(t.shape) for t in io.inputs},
    )
    rounds = 3 if (ep == "qnn" and qnn_is_simulated()) else 10
    outputs = benchmark.pedantic(session.run, args=(None, feed), rounds=rounds, warmup_rounds=1)
    assert [o.shape for o in outputs] == [t.shape for t in io.outputs]
    if ep == "qnn":
        del session  # QNN writes its profile when the session ends
        times = htp_execute_us(profile)
        assert times, f"QNN profile {profile} holds no '{EXECUTE_EVENT}' event"
        benchmark.extra_info["htp_execute_ms_median"] = sorted(times)[len(times) // 2] / 1000


@pytest.mark.parametrize("steps", [1, 2], ids=lambda k: f"{k}step")
@pytest.mark.parametrize("variant", ["float", "qdq"])
def test_pipeline_latency(benchmark, qdq_artifacts, variant: str, steps: int) -> None:
    from sdxl_qdq.run.pipeline import OrtSDXLPipeline

    pipe = OrtSDXLPipeline(getattr(qdq_artifacts, variant))
    _info(
        benchmark,
        qdq_artifacts,
        stage="pipeline",
        variant=variant,
        ep="cpu",
        steps=steps,
        image=[qdq_artifacts.source.image_size] * 2,
    )
    image = benchmark.pedantic(
        pipe,
        args=("A young boy standing in front of a computer keyboard",),
        kwargs={"steps": steps},
        rounds=5,
        warmup_rounds=1,
    )
    assert image.shape == (qdq_artifacts.source.image_size, qdq_artifacts.source.image_size, 3)
