"""The pytest plugin of the gate, installed as the ``pytest11`` entry point ``sdxl_qdq``: options, markers, thin
session fixtures and the failure summary. Its options exist wherever pytest runs in an environment where this
package is installed (any directory, any path form). Logic lives in the rest of ``sdxl_qdq``."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdxl_qdq.cache import ArtifactCache
from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.stages import Build, build
from sdxl_qdq.errors import QuantError
from sdxl_qdq.judge.backbones import CLIP_CHOICES, FID_CHOICES
from sdxl_qdq.runtime import DEFAULT_QNN_SOC, EPS, QNN_SOCS, QnnOptions, execution_provider

GATE_KEY = pytest.StashKey["object"]()
START_KEY = pytest.StashKey[float]()
BUILD_KEY = pytest.StashKey["object"]()
DIAGNOSIS_KEY = pytest.StashKey["tuple"]()

MARKERS = {
    "quality": "quality gate: metrics of the quantized model against baselines/ (pytest -m quality)",
    "qnn": "needs the QNN EP (the HTP simulator on x86_64 Linux, the NPU on Snapdragon)",
    "slow": "real-size model or long run; not part of the default CI selection",
    "long": "a few minutes on 2 cores (cold builds in child processes, killed runs, planted variants): out of CI's "
    "`make test`, run by `make test-long`, whose record is kept in baselines/records/",
    "device": "runs on the NPU runner from a bundle with the device profile (pytest tests/device --bundle DIR)",
}


PREFIX = "--qdq-"  # every option of the plugin; its dest is the flag's name with underscores (--qdq-ep: qdq_ep)


OPTIONS: dict[str, dict] = {  # name: argparse keywords; the flag is PREFIX + name, the dest qdq_<name>
    "model": dict(
        default=None,
        metavar="NAME",
        help="model source: tiny, canary, stabilityai/sdxl-turbo or a local diffusers folder (default: "
        "canary for the quality gate, tiny for every other test)",
    ),
    "recipe": dict(
        default=None, metavar="FILE", help="recipe JSON of Olive workflows (default: recipes/qnn_w8a16.json)"
    ),
    "quantizer": dict(
        default="auto",
        choices=("auto", "olive", "lean"),
        help="how the recipe runs: olive (its workflows), lean (memory-bounded, one component per process), "
        "auto (lean only where olive may not fit a 16 GiB host, decided by the model; default)",
    ),
    "ep": dict(
        default="cpu", choices=EPS, metavar="EP", help="EP that runs the quantized variants: cpu or qnn (default: cpu)"
    ),
    "qnn-soc": dict(
        default=DEFAULT_QNN_SOC,
        choices=sorted(QNN_SOCS),
        metavar="ID",
        help=f"QNN soc_model of the (simulated) chip (default: {DEFAULT_QNN_SOC}, {QNN_SOCS[DEFAULT_QNN_SOC]})",
    ),
    "cache-dir": dict(
        default=None, metavar="DIR", help="artifact cache (default: $SDXL_QDQ_CACHE_DIR or ~/.cache/sdxl-qdq-gate)"
    ),
    "verify-cache": dict(
        action="store_true",
        default=False,
        help="hash every file of every cached artifact used (default: the files changed since their last "
        "verification; sizes always)",
    ),
    "allow-download": dict(
        action="store_true",
        default=False,
        help="allow Hugging Face downloads of a model or backbone that is not cached (default: off; the gate's "
        "fixtures set HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 while they work, then restore them)",
    ),
    "clip-backbone": dict(
        default="auto",
        choices=CLIP_CHOICES,
        metavar="NAME",
        help="CLIP backbone: auto (real ViT-B/16 when cached, else proxy), or a name (default: auto)",
    ),
    "fid-backbone": dict(
        default="auto",
        choices=FID_CHOICES,
        metavar="NAME",
        help="FID backbone: auto (real Inception-v3 when installed and cached, else proxy) (default: auto)",
    ),
    "coco-dir": dict(
        default=None,
        metavar="DIR",
        help="folder of the COCO 2017 train images of the prompts, the FID reference of a real model "
        "(default: none; offline models use their own documented reference set)",
    ),
    "prompt-set": dict(
        default=None,
        metavar="FILE",
        help="your own prompt set instead of the model's (JSON Lines or CSV: text, optional id and split; checked "
        "before anything is built); its baseline is its own file (default: the model's prompts)",
    ),
    "update-baselines": dict(
        action="store_true",
        default=False,
        help="write baselines/<model>/<backbones>.json from this run, with derived tolerances (default: off)",
    ),
    "strict-gate": dict(
        action="store_true",
        default=False,
        help="fail checks that changed (outside their noise window) even when inside their harm floor "
        "(default: a change is a warning and a line of the report; only harm fails)",
    ),
    "report": dict(
        default=None,
        metavar="DIR",
        help="write the quality report (index.html + images) to DIR at the end of the run (default: none)",
    ),
    "history": dict(
        default=None,
        metavar="DIR",
        help="append this gate run to the history store DIR (JSON Lines per model/EP/device; `sdxl-qdq history`) and "
        "show each metric's trend in the report (default: none)",
    ),
    "htp-profile": dict(
        action="store_true",
        default=False,
        help="with --qdq-ep qnn and --qdq-report: profile each QDQ component once on HTP (detailed) and put where it "
        "spends its time in the report, summary.json and perf.json (default: off)",
    ),
    "device": dict(
        default=None,
        metavar="NAME",
        help="the device's name in the history store (default: the EP's description)",
    ),
    "from-device": dict(
        default=None,
        metavar="DIR",
        help="judge the qdq@1/qdq@2 images of a device results folder (`sdxl-qdq device-run`) instead of "
        "drawing them here (default: draw here)",
    ),
    "shards": dict(
        default=None,
        metavar="DIR,DIR",
        help="judge the merge of these shard folders (`sdxl-qdq shard --shard k/N`, comma-separated, every shard "
        "once) instead of drawing here; a missing, overlapping or mismatched shard is refused (default: draw here)",
    ),
    "baseline-ep": dict(
        default=None,
        choices=EPS,
        metavar="EP",
        help="gate by the baseline made on this EP instead of --qdq-ep's own (an explicit cross-EP rule, stated "
        "in the report; default: --qdq-ep's own baseline)",
    ),
    "bundle": dict(
        default=None,
        metavar="DIR",
        help="device tests (-m device): the bundle to run, made by `sdxl-qdq bundle` (default: none; the "
        "device tests skip without one)",
    ),
    "device-out": dict(
        default=None, metavar="DIR", help="device tests: where measured figures go (default: a temporary folder)"
    ),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "qdq_suite",
        type="bool",
        default=False,
        help="this project's own suite: its markers, the slow/device skips, the failure localization and the "
        "benchmark machine info apply (set in its pyproject.toml; off in every other project)",
    )
    group = parser.getgroup("sdxl-qdq", f"SDXL-turbo QDQ quality gate (every option starts with {PREFIX})")
    for name, keywords in OPTIONS.items():
        group.addoption(PREFIX + name, dest="qdq_" + name.replace("-", "_"), **keywords)


def _suite(config: pytest.Config) -> bool:
    """Whether this session is this project's suite (``qdq_suite = true`` in its ini): the hooks that act on
    collection, reporting and benchmarks stay out of every other project's session."""
    return bool(config.getini("qdq_suite"))


_FLAG = re.compile(r"(?<![\w-])--(" + "|".join(OPTIONS) + r")(?![\w-])")


def plugin_flags(message: str) -> str:
    """A message of the package (which names the command line's flags, ``--ep qnn``) as this plugin spells them
    (``--qdq-ep qnn``)."""
    return _FLAG.sub(lambda m: PREFIX + m.group(1), message)


def pytest_configure(config: pytest.Config) -> None:
    _check_options(config)
    if not _suite(config):
        _check_lost_ini(config)
        return
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    _check_stored_benchmarks(config)


@contextlib.contextmanager
def _offline(config: pytest.Config) -> Iterator[None]:
    """No network while the gate's fixtures work unless --qdq-allow-download: HF_HUB_OFFLINE and HF_DATASETS_OFFLINE
    are 1 inside, and as they were after (the loaders also pass ``local_files_only``)."""
    if config.getoption("qdq_allow_download"):
        yield
        return
    with pytest.MonkeyPatch.context() as env:
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if name not in os.environ:
                env.setenv(name, "1")
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Real-size runs take 9 to 13 min, 14 GB and 40 GB of disk; `pytest` or `pytest --benchmark-only` must not
    # start one by surprise.
    if not _suite(config):
        return
    markexpr = config.getoption("markexpr") or ""
    if not config.getoption("qdq_bundle"):
        no_bundle = pytest.mark.skip(
            reason="a device test runs from a bundle: pass --bundle DIR (make one with `sdxl-qdq bundle --model M DIR`)"
        )
        for item in items:
            if "device" in item.keywords:
                item.add_marker(no_bundle)
    if "slow" in markexpr and "not slow" not in markexpr:
        return
    skip = pytest.mark.skip(
        reason="slow (the real-size run: 9 to 13 min on 2 cores, 14 GB of memory, 40 GB of disk; "
        "more canary recipe variants; a second cold build): select it with -m slow"
    )
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def say(config: pytest.Config):
    """A progress writer that reaches the terminal through pytest's own writer, output capture or not (a line,
    not a page: third-party output of a stage goes to its log, see ``sdxl_qdq.procs.stage_log``)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(message: str) -> None:
        if reporter is None or capture is None:  # an xdist worker: nobody to show it to
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(message)

    return write


@contextlib.contextmanager
def _as_usage_errors() -> Iterator[None]:
    """A bad option, recipe, model or baseline found while setting up stops the session with its one-line message
    and the fix (exit code 2), not a traceback per test."""
    try:
        yield
    except QuantError as e:
        pytest.exit(f"error: {plugin_flags(str(e))}", returncode=2)


@pytest.fixture(scope="session")
def qdq_cache(pytestconfig: pytest.Config) -> ArtifactCache:
    root = pytestconfig.getoption("qdq_cache_dir")
    return ArtifactCache(
        Path(root) if root else None,
        verify="full" if pytestconfig.getoption("qdq_verify_cache") else "auto",
        notice=say(pytestconfig),
    )


@pytest.fixture(scope="session")
def qdq_qnn_options(pytestconfig: pytest.Config) -> QnnOptions:
    return QnnOptions(soc_model=pytestconfig.getoption("qdq_qnn_soc"))


def _build(config: pytest.Config, cache: ArtifactCache, default_model: str) -> Build:
    with _as_usage_errors(), _offline(config):
        result = build(
            config.getoption("qdq_model") or default_model,
            recipe=config.getoption("qdq_recipe"),
            cache=cache,
            allow_download=config.getoption("qdq_allow_download"),
            quantizer=config.getoption("qdq_quantizer"),
            prompts=config.getoption("qdq_prompt_set"),
            progress=say(config),
        )
    config.stash[BUILD_KEY] = result
    return result


@pytest.fixture(scope="session")
def qdq_artifacts(pytestconfig: pytest.Config, qdq_cache: ArtifactCache) -> Build:
    """Float and QDQ components of --qdq-model (default tiny: the structural check) built with --qdq-recipe."""
    return _build(pytestconfig, qdq_cache, "tiny")


@pytest.fixture(scope="session")
def qdq_quality_artifacts(pytestconfig: pytest.Config, qdq_cache: ArtifactCache) -> Build:
    """The build the quality gate judges: --qdq-model, by default the canary (a model whose prompts matter)."""
    return _build(pytestconfig, qdq_cache, "canary")


@pytest.fixture(scope="session")
def qdq_test_prompt_feeds(qdq_artifacts: Build) -> dict:
    """Each component's inputs while the float pipeline draws the 50 test prompts (1 step)."""
    from sdxl_qdq.models.prompts import load_prompts
    from sdxl_qdq.run.pipeline import record_inputs

    return record_inputs(qdq_artifacts.float, load_prompts("test"))


@pytest.fixture(scope="session")
def qdq_gate(
    pytestconfig: pytest.Config, qdq_quality_artifacts: Build, qdq_cache: ArtifactCache, qdq_qnn_options: QnnOptions
):
    """The evaluated gate of --qdq-model (default canary) against its baseline (written first with
    --qdq-update-baselines)."""
    from sdxl_qdq.flows import prepare_gate

    with _as_usage_errors(), _offline(pytestconfig):
        result = prepare_gate(
            qdq_quality_artifacts,
            cache=qdq_cache,
            ep=pytestconfig.getoption("qdq_ep"),
            qnn=qdq_qnn_options,
            clip_backbone=pytestconfig.getoption("qdq_clip_backbone"),
            fid_backbone=pytestconfig.getoption("qdq_fid_backbone"),
            coco_dir=pytestconfig.getoption("qdq_coco_dir"),
            update=pytestconfig.getoption("qdq_update_baselines"),
            from_device=pytestconfig.getoption("qdq_from_device"),
            from_shards=_shard_dirs(pytestconfig),
            baseline_ep=pytestconfig.getoption("qdq_baseline_ep"),
            allow_download=pytestconfig.getoption("qdq_allow_download"),
            progress=say(pytestconfig),
        )
    pytestconfig.stash[GATE_KEY] = result
    return result


@pytest.fixture
def qdq_judge(pytestconfig: pytest.Config, record_property):
    """Assert a gate check: harm fails always, a change (outside the noise window) only under --qdq-strict-gate, else it
    is a ``QualityChanged`` warning. Its numbers become JUnit properties (``--junitxml``)."""
    import warnings

    from sdxl_qdq.judge.gate import QualityChanged

    strict = pytestconfig.getoption("qdq_strict_gate")

    def check(c) -> None:
        for name in ("metric", "measured", "baseline", "limit", "harm", "status"):
            record_property(name, getattr(c, name))
        message = c.verdict(strict=strict)
        assert message is None, message
        if c.change:
            warnings.warn(QualityChanged(c.change), stacklevel=2)

    return check


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``qdq_quality_prompt``: every prompt of the quality model's own prompt set (COCO, or the canary world's)."""
    if "qdq_quality_prompt" in metafunc.fixturenames:
        from sdxl_qdq.models.prompts import load_prompts
        from sdxl_qdq.models.source import prompts_for

        own = metafunc.config.getoption("qdq_prompt_set")
        path = Path(own) if own else prompts_for(metafunc.config.getoption("qdq_model") or "canary")
        prompts = load_prompts("all", path=path)
        metafunc.parametrize("qdq_quality_prompt", prompts, ids=[p.id for p in prompts])


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[START_KEY] = time.time()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Where the gate ran (this process, or each xdist worker that ran quality tests): the report and summary.json.
    In the process that reports to the terminal: the Markdown summary for CI (``$GITHUB_STEP_SUMMARY``)."""
    report_dir = session.config.getoption("qdq_report")
    gate = session.config.stash.get(GATE_KEY, None)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if report_dir and gate is not None:
        from sdxl_qdq.judge.report import write_report
        from sdxl_qdq.judge.summary import verdict, write_summary

        strict = session.config.getoption("qdq_strict_gate")
        sections, on_qnn = None, _on_qnn(session.config, [])
        if verdict(gate.all_checks(), strict=strict) == "failed":  # the report shows why; so will the terminal
            sections = _failure_diagnosis(session.config, session.config.stash.get(BUILD_KEY, None), on_qnn)
        perf = _htp_profile(session.config)
        path = write_report(
            gate,
            Path(report_dir),
            strict=strict,
            diagnosis=sections,
            trend=_history(session.config, gate, strict),
            perf=perf,
        )
        write_summary(gate, Path(report_dir), strict=strict, perf=perf)
        if sections is not None:
            from sdxl_qdq.diagnose import failure

            failure.save(sections, Path(report_dir), on_qnn=on_qnn)
        if reporter is not None:
            reporter.write_line(f"quality report: {path}")
    summary_json = Path(report_dir) / "summary.json" if report_dir else None
    if (
        not hasattr(session.config, "workerinput")
        and summary_json is not None
        and summary_json.is_file()
        and summary_json.stat().st_mtime >= session.config.stash[START_KEY]
    ):
        from sdxl_qdq.judge.summary import append_step_summary

        append_step_summary(summary_json)
        if gate is None and reporter is not None:  # xdist: the workers wrote it
            reporter.write_line(f"quality report: {summary_json.parent / 'index.html'}")


def _htp_profile(config: pytest.Config) -> dict | None:
    """With --qdq-htp-profile on the QNN EP: the performance record of the gate's build (perf.json in the report)."""
    built = config.stash.get(BUILD_KEY, None)
    if not config.getoption("qdq_htp_profile") or config.getoption("qdq_ep") != "qnn" or built is None:
        return None
    from sdxl_qdq.diagnose.qnn_profile import perf_record

    say(config)("HTP profile: each QDQ component once, detailed")
    return perf_record(built, soc_model=config.getoption("qdq_qnn_soc"))


def _history(config: pytest.Config, gate, strict: bool) -> str | None:
    """With --qdq-history: this run appended to its history file, and that file's trend for the report."""
    store = config.getoption("qdq_history")
    if not store:
        return None
    from sdxl_qdq.judge import history
    from sdxl_qdq.judge.summary import summary

    record = history.condense(
        summary(gate, strict=strict), device=config.getoption("qdq_device"), commit=os.environ.get("GITHUB_SHA")
    )
    path = history.append(Path(store), record)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"history: {path}")
    return history.trend_html(history.load(path))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """On a failing quality or parity check, say where the error comes from: the layers with the largest
    quantization error (float vs QDQ on the CPU EP) and, for checks run on the QNN EP, where QNN departs from
    the CPU EP (graph cuts, worst block first). The diagnosis the report shows is not computed twice."""
    if not _suite(config):
        return
    failed = [r for r in terminalreporter.stats.get("failed", []) if "quality" in r.keywords or "parity" in r.nodeid]
    if not failed:
        return
    on_qnn = _on_qnn(config, failed)
    report_dir = config.getoption("qdq_report")
    stashed_for, sections = config.stash.get(DIAGNOSIS_KEY, (None, None))
    sections = sections if stashed_for == on_qnn else None
    if sections is None and report_dir and any("quality" in r.keywords for r in failed):
        from sdxl_qdq.diagnose import failure

        sections = failure.load(Path(report_dir), on_qnn=on_qnn, since=config.stash[START_KEY])  # xdist: a worker's
    if sections is None:
        built = config.stash.get(BUILD_KEY, None) or _controller_build(config, failed)
        if built is None:
            return
        sections = _failure_diagnosis(config, built, on_qnn)
    for s in sections:
        terminalreporter.section(s.title)
        for line in s.text():
            terminalreporter.write_line(line)


def _on_qnn(config: pytest.Config, failed: list) -> list[str]:
    """The components whose QNN runs failed checks: all of them for a quality gate on the QNN EP, else those whose
    parity tests failed."""
    if config.getoption("qdq_ep") == "qnn" and (not failed or any("quality" in r.keywords for r in failed)):
        return list(COMPONENTS)
    return sorted({c for r in failed if "parity" in r.nodeid for c in COMPONENTS if f"[{c}]" in r.nodeid})


def _failure_diagnosis(config: pytest.Config, built: Build | None, on_qnn: list[str]) -> list:
    """``sdxl_qdq.diagnose.failure.diagnose`` of ``built``, kept for the terminal summary."""
    from sdxl_qdq.diagnose import failure

    if built is None:
        return [failure.Section(failure.WORST_LAYERS, error="no build in this process to diagnose")]
    sections = failure.diagnose(built, on_qnn=on_qnn, qnn=QnnOptions(soc_model=config.getoption("qdq_qnn_soc")))
    config.stash[DIAGNOSIS_KEY] = (on_qnn, sections)
    return sections


def _controller_build(config: pytest.Config, failed: list) -> Build | None:
    """The build the failed tests used, when they ran in xdist workers: the cache answers (nothing is rebuilt)."""
    quality = any("quality" in r.keywords for r in failed)
    root = config.getoption("qdq_cache_dir")
    try:
        with _offline(config):
            return build(
                config.getoption("qdq_model") or ("canary" if quality else "tiny"),
                recipe=config.getoption("qdq_recipe"),
                cache=ArtifactCache(Path(root) if root else None),
                quantizer=config.getoption("qdq_quantizer"),
            )
    except Exception as e:  # the summary must not hide the failures it explains
        config.pluginmanager.get_plugin("terminalreporter").write_line(f"(no localization: {e})")
        return None


def _check_lost_ini(config: pytest.Config) -> None:
    """pytest takes every argument that names an existing file for a test path when it looks for its ini file, option
    values included: `--qdq-recipe /elsewhere/r.json` run in this suite's folder makes the rootdir a common ancestor,
    and the suite's ini (markers, qdq_suite) is lost. Said before anything runs, with the fix."""
    if config.inipath is not None:
        return
    args = list(config.invocation_params.args)
    here = Path(config.invocation_params.dir)
    for flag, value in itertools.pairwise(args):
        if flag.startswith(PREFIX) and "=" not in flag and Path(value).exists():
            for ini in ("pyproject.toml", "pytest.ini", "tox.ini", "setup.cfg"):
                text = (here / ini).read_text(errors="replace") if (here / ini).is_file() else ""
                if "qdq_suite" in text:
                    raise pytest.UsageError(
                        f"{flag} {value}: pytest took that path for a test path and left this folder's {ini} "
                        f"(rootdir {config.rootpath}); write {flag}={value}"
                    )


def _shard_dirs(config: pytest.Config) -> list[Path] | None:
    value = config.getoption("qdq_shards")
    return [Path(v.strip()) for v in value.split(",") if v.strip()] if value else None


def _check_options(config: pytest.Config) -> None:
    """What can be checked before anything is built: each failure is one line with the value and the fix."""
    from sdxl_qdq.convert.recipe import load_recipe
    from sdxl_qdq.judge.evaluation import check_coco_dir
    from sdxl_qdq.models.prompts import read_prompt_set

    try:
        if config.getoption("qdq_recipe"):
            load_recipe(config.getoption("qdq_recipe"))
        for option in ("qdq_bundle", "qdq_from_device"):
            value = config.getoption(option)
            if value and not Path(value).is_dir():
                flag = PREFIX + option.removeprefix("qdq_").replace("_", "-")
                raise pytest.UsageError(f"{flag} {value}: no such folder")
        for folder in _shard_dirs(config) or []:
            if not folder.is_dir():
                raise pytest.UsageError(f"{PREFIX}shards: {folder}: no such folder")
        execution_provider(config.getoption("qdq_ep")).require()
        if config.getoption("qdq_coco_dir"):
            check_coco_dir(Path(config.getoption("qdq_coco_dir")))
        if config.getoption("qdq_prompt_set"):
            read_prompt_set(Path(config.getoption("qdq_prompt_set")), check_tokens=True)
    except QuantError as e:
        raise pytest.UsageError(plugin_flags(str(e))) from None


def _check_stored_benchmarks(config: pytest.Config) -> None:
    """--benchmark-compare with no stored run for this machine: say so and how to record one, up front."""
    if not config.getoption("benchmark_compare", None) or not config.getoption("benchmark_storage", None):
        return
    from pytest_benchmark.utils import get_machine_id

    storage = str(config.getoption("benchmark_storage")).removeprefix("file://")
    folder = Path(storage) / get_machine_id()
    if not any(folder.glob("*.json")):
        raise pytest.UsageError(
            f"--benchmark-compare: no stored benchmark run for this machine ({get_machine_id()}) in {folder}. "
            "Record one first with `make bench-save` (pytest --benchmark-only --benchmark-save=baseline), "
            "review it and commit it."
        )


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """What makes numbers comparable: package versions, QNN chip and whether it is simulated."""
    if not _suite(config):
        return
    from sdxl_qdq.cache import package_versions
    from sdxl_qdq.runtime import QNN_SOCS, qnn_is_simulated

    soc = config.getoption("qdq_qnn_soc")
    machine_info["sdxl_qdq"] = {
        "model": config.getoption("qdq_model") or "tiny",
        "versions": package_versions(),
        "qnn_soc": f"{soc} ({QNN_SOCS[soc]})",
        "qnn_backend": "htp simulator" if qnn_is_simulated() else "htp device",
    }
