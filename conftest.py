"""The pytest plugin of the gate: options, markers and thin session fixtures. Logic lives in ``quant``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quant.build import Build, build
from quant.cache import ArtifactCache
from quant.runtime import DEFAULT_QNN_SOC, EPS, QNN_SOCS, QnnOptions

MARKERS = {
    "quality": "quality gate: metrics of the quantized model against baselines/ (pytest -m quality)",
    "qnn": "needs the QNN EP (the HTP simulator on x86_64 Linux, the NPU on Snapdragon)",
    "slow": "real-size model or long run; not part of the default CI selection",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sdxl-qdq", "SDXL-turbo QDQ quality gate")
    group.addoption("--model", dest="qdq_model", default="tiny", metavar="NAME",
                    help="model source: tiny, stabilityai/sdxl-turbo or a local diffusers folder (default: tiny)")
    group.addoption("--recipe", dest="qdq_recipe", default=None, metavar="FILE",
                    help="recipe JSON of Olive workflows (default: recipes/qnn_w8a16.json)")
    group.addoption("--ep", dest="qdq_ep", default="cpu", choices=EPS, metavar="EP",
                    help="EP that runs the quantized variants: cpu or qnn (default: cpu)")
    group.addoption("--qnn-soc", dest="qdq_qnn_soc", default=DEFAULT_QNN_SOC, choices=sorted(QNN_SOCS), metavar="ID",
                    help=f"QNN soc_model of the (simulated) chip (default: {DEFAULT_QNN_SOC}, {QNN_SOCS[DEFAULT_QNN_SOC]})")
    group.addoption("--cache-dir", dest="qdq_cache_dir", default=None, metavar="DIR",
                    help="artifact cache (default: $SDXL_QDQ_CACHE_DIR or ~/.cache/sdxl-qdq-gate)")
    group.addoption("--allow-download", dest="qdq_allow_download", action="store_true", default=False,
                    help="allow Hugging Face downloads of a model that is not cached (default: off)")


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if not config.getoption("qdq_allow_download"):
        # No network at test time unless the user opts in. quant imports no Hugging Face library at module
        # level, so these are read when the first one is imported, after this hook.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def cache(pytestconfig: pytest.Config) -> ArtifactCache:
    root = pytestconfig.getoption("qdq_cache_dir")
    return ArtifactCache(Path(root) if root else None)


@pytest.fixture(scope="session")
def qnn_options(pytestconfig: pytest.Config) -> QnnOptions:
    return QnnOptions(soc_model=pytestconfig.getoption("qdq_qnn_soc"))


@pytest.fixture(scope="session")
def artifacts(pytestconfig: pytest.Config, cache: ArtifactCache) -> Build:
    """Float and QDQ components of --model built with --recipe (from the cache when warm)."""
    return build(
        pytestconfig.getoption("qdq_model"),
        recipe=pytestconfig.getoption("qdq_recipe"),
        cache=cache,
        allow_download=pytestconfig.getoption("qdq_allow_download"),
        progress=lambda msg: print(msg, flush=True),
    )


@pytest.fixture(scope="session")
def test_prompt_feeds(artifacts: Build) -> dict:
    """Each component's inputs while the float pipeline draws the 50 test prompts (1 step)."""
    from quant.evaluate import record_inputs
    from quant.prompts import load_prompts

    return record_inputs(artifacts.float, load_prompts("test"))
