"""Build-time benchmarks (pytest --benchmark-only). Goals live here, never in timed assertions:
a cold build of the tiny model ≤ 90 s on 2 cores; a warm build ≤ 5 s that never invokes Olive."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from quant.build import build
from quant.cache import ArtifactCache, package_versions


def _info(benchmark, model: str, **extra) -> None:
    benchmark.extra_info.update(model=model, versions=package_versions(), **extra)


def test_build_warm(benchmark, artifacts, cache) -> None:
    _info(benchmark, "tiny", stage="build", cache="warm")
    sys.modules.pop("olive.workflows", None)
    result = benchmark(lambda: build("tiny", cache=ArtifactCache(cache.root)))
    assert result.qdq.models == artifacts.qdq.models
    assert "olive.workflows" not in sys.modules, "a warm build imported Olive's workflow runner"


def test_build_cold(benchmark, tmp_path: Path) -> None:
    _info(benchmark, "tiny", stage="build", cache="cold")
    roots = iter(range(100))

    def cold() -> ArtifactCache:
        cache = ArtifactCache(tmp_path / str(next(roots)))
        build("tiny", cache=cache)
        return cache

    cache = benchmark.pedantic(cold, rounds=1, iterations=1)
    assert cache.hits == [] and "qdq" in cache.misses
