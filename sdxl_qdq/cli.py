"""``sdxl-qdq`` (also ``python -m sdxl_qdq``): the project's one command line.

Host verbs: build, sqnr, parity, coverage, layers, diverge, bundle, verify, coco-images, study-baseline,
canary-train. Device verbs
(the NPU runner, device profile only): device-check, device-run. Verbs starting with ``_`` are the child
processes other verbs start (one component per process); they are not listed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sdxl_qdq.cache import ArtifactCache
from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.calibration import iter_calibration
from sdxl_qdq.convert.export import export_component
from sdxl_qdq.convert.files import model_size_mb
from sdxl_qdq.convert.lean.quantize import DEFAULT_SEGMENT_BYTES, quantize_child
from sdxl_qdq.convert.stages import build
from sdxl_qdq.diagnose.coverage import qdq_coverage
from sdxl_qdq.diagnose.diverge import DEFAULT_THRESHOLD_DB, distinct_samples, localize, run_cut_child
from sdxl_qdq.diagnose.localize import localize_build
from sdxl_qdq.diagnose.sqnr import (
    PARITY_MARGIN_DB,
    PARITY_SIMULATOR_PROMPTS,
    component_sqnr,
    parity_baseline,
    qnn_parity,
)
from sdxl_qdq.errors import ConfigError, QuantError
from sdxl_qdq.judge.backbones import REAL_CLIP, REAL_FID, Backbones
from sdxl_qdq.judge.baseline import baseline_model_name, baseline_path, write_baseline
from sdxl_qdq.judge.evaluation import COCO_REFERENCE
from sdxl_qdq.judge.study import study_baseline
from sdxl_qdq.models.canary.model import WEIGHTS_DIR
from sdxl_qdq.models.canary.train import train
from sdxl_qdq.models.prompts import load_prompts
from sdxl_qdq.models.source import resolve_source
from sdxl_qdq.paths import BASELINES_DIR
from sdxl_qdq.procs import report_peak_at_exit, stage_log
from sdxl_qdq.run.pipeline import record_inputs
from sdxl_qdq.runtime import DEFAULT_QNN_SOC, QNN_SOCS, QnnOptions, qnn_is_simulated, require_qnn_package
from sdxl_qdq.stage_table import STAGES


def _build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="tiny",
        metavar="NAME",
        help="model source: 'tiny' (embedded, offline), 'canary', 'sdxl-turbo:random' (the real "
        "architecture with random weights, for sizing), a Hugging Face id such as stabilityai/sdxl-turbo, "
        "or a local diffusers folder (default: %(default)s)",
    )
    p.add_argument("--recipe", default=None, metavar="FILE", help="recipe JSON (default: recipes/qnn_w8a16.json)")
    p.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="artifact cache (default: $SDXL_QDQ_CACHE_DIR or ~/.cache/sdxl-qdq-gate)",
    )
    p.add_argument(
        "--quantizer",
        choices=("auto", "olive", "lean"),
        default="auto",
        help="'olive': the recipe's Olive workflows; 'lean': the same passes memory-bounded, one component "
        "per process; 'auto': lean where the Olive path may not fit a 16 GiB host (decided by the "
        "model, never by this machine) (default: %(default)s)",
    )
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="let a Hugging Face model be downloaded when it is not cached (default: off)",
    )
    p.add_argument(
        "--prompt-set",
        default=None,
        metavar="FILE",
        help="your own prompt set instead of the model's: JSON Lines or CSV with a text (or prompt) column, id and "
        "split (train: calibration, test) optional; checked whole before anything is built (default: the model's)",
    )
    p.add_argument(
        "--prompts-from-hub",
        action="store_true",
        help="calibrate on rows 0-49 of phiyodr/coco2017 streamed from the hub instead of the bundled "
        "fixture (needs network; default: off)",
    )


def _gate_options(p: argparse.ArgumentParser, *, ep: bool = True) -> None:
    if ep:
        p.add_argument(
            "--ep", choices=("cpu", "qnn"), default="cpu", help="EP of the QDQ models (default: %(default)s)"
        )
        _qnn_soc(p)
        p.add_argument("--coco-dir", default=None, metavar="DIR", help="COCO images, the real model's FID reference")
    p.add_argument("--clip-backbone", default="auto", metavar="NAME", help="(default: %(default)s)")
    p.add_argument("--fid-backbone", default="auto", metavar="NAME", help="(default: %(default)s)")


def _qnn_soc(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--qnn-soc",
        choices=sorted(QNN_SOCS),
        default=DEFAULT_QNN_SOC,
        metavar="ID",
        help=f"QNN soc_model (default: %(default)s, {QNN_SOCS[DEFAULT_QNN_SOC]})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdxl-qdq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{build,sqnr,parity,coverage,layers,diverge,compare,propose,bundle,verify,coco-images,"
        "study-baseline,canary-train,device-check,device-run,shard,shards,judge-shards,canary-prompts}",
    )
    _build_options(sub.add_parser("build", help="export, calibrate and quantize every component, with progress"))
    sq = sub.add_parser("sqnr", help="SQNR of each QDQ component vs float on the model's 50 test prompts")
    _build_options(sq)
    sq.add_argument("--ep", choices=("cpu", "qnn"), default="cpu", help="EP of the QDQ models (default: %(default)s)")
    par = sub.add_parser("parity", help="QNN-vs-CPU SQNR of each QDQ component on the model's test prompts")
    _build_options(par)
    _qnn_soc(par)
    par.add_argument(
        "--prompts",
        type=int,
        default=None,
        metavar="N",
        help="test prompts to run (default: 5 on the HTP simulator, all 50 on a chip)",
    )
    par.add_argument(
        "--write",
        action="store_true",
        help="write baselines/<model>/parity.json (bounds 3 dB below each value); review, then commit",
    )
    hp = sub.add_parser(
        "htp-profile",
        help="where HTP spends its time: each QDQ component once on the QNN EP with detailed profiling, the top ops "
        "by cycles mapped to ONNX nodes, and a performance record (latency, cycles, peak memory, nodes on QNN)",
    )
    _build_options(hp)
    _qnn_soc(hp)
    hp.add_argument("--component", action="append", choices=COMPONENTS, help="only these (default: all four)")
    hp.add_argument("--top", type=int, default=10, help="top ops kept per component (default: %(default)s)")
    hp.add_argument("--out", type=Path, default=None, metavar="JSON", help="write the performance record here")
    _build_options(sub.add_parser("coverage", help="QDQ coverage and float islands of each component"))
    lay = sub.add_parser("layers", help="layers with the largest quantization error (float vs QDQ SQNR), worst first")
    _build_options(lay)
    lay.add_argument("--top", type=int, default=3, metavar="N", help="layers per component (default: %(default)s)")
    dv = sub.add_parser(
        "diverge",
        help="where the QNN EP computes a QDQ component differently from the CPU EP "
        "(single-output graph cuts), worst block first, reduced to the smallest failing subgraph",
    )
    _build_options(dv)
    _qnn_soc(dv)
    dv.add_argument("--component", choices=(*COMPONENTS, "all"), default="all", help="component (default: %(default)s)")
    dv.add_argument(
        "--samples",
        type=int,
        default=2,
        metavar="N",
        help="distinct recorded calibration inputs to run (default: %(default)s)",
    )
    dv.add_argument(
        "--depth",
        type=int,
        default=None,
        metavar="D",
        help="module depth of a block (default: the shallowest giving 6 blocks or more)",
    )
    dv.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD_DB,
        metavar="DB",
        help="SQNR below which a cut counts as diverging (default: %(default)s)",
    )
    dv.add_argument("--no-reduce", action="store_true", help="stop at the first diverging activation (default: reduce)")
    dv.add_argument("--json", default=None, metavar="FILE", help="also write the findings as JSON")
    bu = sub.add_parser(
        "bundle",
        help="everything the NPU runner needs for a night: QDQ models (+ EP-context binaries "
        "for the soc), the host's token ids, latents, noise and scheduler, parity inputs",
    )
    _build_options(bu)
    _qnn_soc(bu)
    bu.add_argument("out", type=Path, metavar="OUT", help="bundle folder (replaced if it exists)")
    bu.add_argument(
        "--prompts", type=int, default=None, metavar="N", help="first N of the model's prompts (default: all)"
    )
    bu.add_argument(
        "--no-context",
        action="store_true",
        help="skip compiling EP-context binaries (default: compile when onnxruntime-qnn is installed)",
    )
    dc = sub.add_parser(
        "device-check", help="on the NPU runner: a native ARM64 Python, onnxruntime-qnn, the HTP backend"
    )
    dc.add_argument("--allow-emulation", action="store_true", help="accept an emulated or simulated setup (rehearsals)")
    dt = sub.add_parser(
        "device-test",
        help="on the NPU runner: the device tests (placement, parity, latency against "
        "this runner's stored benchmark run; a first night records its run instead) on a bundle",
    )
    dt.add_argument("--bundle", type=Path, required=True, metavar="DIR", help="the bundle made by `sdxl-qdq bundle`")
    dt.add_argument(
        "--qnn-soc",
        choices=sorted(QNN_SOCS),
        default=DEFAULT_QNN_SOC,
        metavar="ID",
        help="QNN soc_model of this runner's chip (default: %(default)s)",
    )
    dt.add_argument("--out", type=Path, required=True, metavar="DIR", help="results of the tests (junit, benchmarks)")
    dt.add_argument(
        "--benchmark-storage",
        type=Path,
        default=None,
        metavar="DIR",
        help="stored benchmark runs, one folder per machine (default: baselines/benchmarks)",
    )
    dt.add_argument("pytest_args", nargs="*", metavar="ARG", help="more pytest arguments, after --")
    dr = sub.add_parser(
        "device-run",
        help="on the NPU runner: verify a bundle, check placement and parity, draw its "
        "prompts on the NPU, write the results the host judges",
    )
    _qnn_soc(dr)
    dr.add_argument("--bundle", type=Path, required=True, metavar="DIR", help="the bundle made by `sdxl-qdq bundle`")
    dr.add_argument("--out", type=Path, required=True, metavar="DIR", help="results folder (replaced if it exists)")
    dr.add_argument(
        "--ep", choices=("qnn", "cpu"), default="qnn", help="EP of the quantized components (default: %(default)s)"
    )
    dr.add_argument(
        "--prompts", type=int, default=None, metavar="N", help="first N of the bundle's prompts (default: all)"
    )
    dr.add_argument("--no-context", action="store_true", help="load the QDQ models, not the EP-context binaries")
    cp = sub.add_parser(
        "compare",
        help="recipe A/B: both recipes on the same prompts, paired differences with bootstrap "
        "intervals, a verdict per metric, a side-by-side report",
    )
    cp.add_argument("recipe_a", metavar="A.json")
    cp.add_argument("recipe_b", metavar="B.json")
    cp.add_argument("--model", default="canary", metavar="NAME", help="model source (default: %(default)s)")
    cp.add_argument("--ep", choices=("cpu", "qnn"), default="cpu", help="EP of the QDQ models (default: %(default)s)")
    _qnn_soc(cp)
    cp.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="artifact cache (default: $SDXL_QDQ_CACHE_DIR or ~/.cache/sdxl-qdq-gate)",
    )
    cp.add_argument("--quantizer", choices=("auto", "olive", "lean"), default="auto", help="(default: %(default)s)")
    cp.add_argument("--coco-dir", default=None, metavar="DIR", help="COCO images, the real model's FID reference")
    cp.add_argument(
        "--out",
        type=Path,
        default=Path("reports/compare"),
        metavar="DIR",
        help="report folder (index.html, comparison.json; default: %(default)s)",
    )
    cr = sub.add_parser(
        "compare-results",
        help="toolchain (or device) A/B: two device results folders of one bundle, e.g. drawn with onnxruntime-qnn "
        "2.6.0 and 2.7.0, judged here against the same float images: paired differences, intervals and a verdict per "
        "metric, with each side's placement, QNN-vs-CPU parity and versions",
    )
    cr.add_argument("results_a", type=Path, metavar="A_RESULTS")
    cr.add_argument("results_b", type=Path, metavar="B_RESULTS")
    cr.add_argument(
        "--model", default="canary", metavar="NAME", help="model the bundle was made of (default: %(default)s)"
    )
    cr.add_argument(
        "--recipe", default=None, metavar="FILE", help="recipe the bundle was made with (default: the seed)"
    )
    cr.add_argument("--cache-dir", default=None, metavar="DIR", help="artifact cache")
    cr.add_argument("--coco-dir", default=None, metavar="DIR", help="COCO images, the real model's FID reference")
    cr.add_argument("--out", type=Path, default=Path("reports/compare-results"), metavar="DIR", help="report folder")
    pr = sub.add_parser(
        "propose",
        help="a fix for the worst layers: the activations that lose the most to their own "
        "quantization at 16 bits (TensorQuantOverrides), written as a recipe, gated "
        "against the original with --evaluate",
    )
    _build_options(pr)
    pr.set_defaults(model="canary")
    pr.add_argument("--top", type=int, default=20, metavar="K", help="activations to raise (default: %(default)s)")
    pr.add_argument(
        "--out",
        type=Path,
        default=Path("reports/proposed_recipe.json"),
        metavar="FILE",
        help="where the proposed recipe goes (default: %(default)s)",
    )
    pr.add_argument(
        "--evaluate",
        action="store_true",
        help="build the proposal and compare it with the original recipe on the same prompts (report in "
        "reports/compare)",
    )
    ve = sub.add_parser(
        "verify",
        help="hash every file of every cached artifact against its manifest; move bad ones "
        "aside (the next build rebuilds them)",
    )
    ve.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="artifact cache (default: $SDXL_QDQ_CACHE_DIR or ~/.cache/sdxl-qdq-gate)",
    )
    ve.add_argument(
        "--stage",
        action="append",
        default=None,
        choices=list(STAGES),
        metavar="NAME",
        help=f"only this stage ({', '.join(STAGES)}); repeatable (default: all)",
    )
    co = sub.add_parser(
        "coco-images",
        help="download the 100 COCO 2017 images of the prompts (the real model's FID "
        "reference, for --coco-dir; needs network)",
    )
    co.add_argument("out", type=Path, metavar="DIR", help="folder for the images (completed if it exists)")
    bg = sub.add_parser(
        "bench-gate",
        help="fail a benchmark run that regressed against the stored run, after correcting for the machine's speed "
        "(both runs time the same fixed workload beside each benchmark)",
    )
    bg.add_argument("run", type=Path, metavar="JSON", help="this run, as written by --benchmark-json")
    bg.add_argument(
        "--stored",
        type=Path,
        default=None,
        metavar="JSON",
        help="the stored run to compare with (default: this machine's latest under --storage)",
    )
    bg.add_argument(
        "--storage", type=Path, default=Path("baselines/benchmarks"), help="pytest-benchmark's storage folder"
    )
    bg.add_argument(
        "--fail",
        default="median:200%",
        metavar="STAT:PCT%",
        help="fail when STAT grew more than PCT%% after the correction (default median:200%%, i.e. 3x)",
    )
    hi = sub.add_parser(
        "history",
        help="a store of gate runs (JSON Lines per model/EP/device): append a run's summary.json, or show each "
        "metric's trend with regressions and progressions flagged",
    )
    hi.add_argument("action", choices=("append", "show", "publish"))
    hi.add_argument("summary", type=Path, nargs="?", metavar="SUMMARY_JSON", help="append: the run's summary.json")
    hi.add_argument("--store", type=Path, default=None, metavar="DIR", help="append/show: the history folder")
    hi.add_argument("--remote", default=None, help="publish: the git remote holding the history branch")
    hi.add_argument("--branch", default="gate-history", help="publish: the history branch (default: %(default)s)")
    hi.add_argument(
        "--device", default=None, help="append/publish: the device's name (default: the summary's ep_detail)"
    )
    hi.add_argument("--commit", default=None, help="append/publish: the commit gated (default: $GITHUB_SHA)")
    hi.add_argument("--model", default=None, help="show: only this model")
    hi.add_argument("--ep", default=None, help="show: only this EP")
    hi.add_argument(
        "--fraction",
        type=float,
        default=0.1,
        help="flag a move between two runs larger than this fraction of the check's noise window (default 0.1)",
    )
    hi.add_argument("--plot", type=Path, default=None, metavar="HTML", help="show: also write the trends as HTML")
    hi.add_argument("--fail-on-regression", action="store_true", help="show: exit 1 when the latest run regressed")
    sub.add_parser("study-baseline", help="write baselines/sdxl-turbo/ from the published study in fixtures/")
    ct = sub.add_parser(
        "canary-train", help="train the canary and its scorer (about 14 min on 2 cores), write fp16 safetensors"
    )
    ct.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="output folder (default: sdxl_qdq/data/canary)"
    )
    sh = sub.add_parser(
        "shard",
        help="part k of N of the gate's work: the shard's images of the four gated sets and the FID reference, their "
        "per-image records and a manifest, in a new folder (judge the shards with judge-shards or pytest --qdq-shards)",
    )
    _build_options(sh)
    sh.set_defaults(model="canary")
    sh.add_argument("--shard", required=True, metavar="K/N", help="which part: 2/3 is the second of three")
    sh.add_argument("--out", type=Path, required=True, metavar="DIR", help="the shard folder (must not exist)")
    _gate_options(sh)
    ss = sub.add_parser(
        "shards",
        help="every shard of the gate's work through an engine (serial here, or Ray), then the judge of the merge",
    )
    _build_options(ss)
    ss.set_defaults(model="canary")
    ss.add_argument("--shards", type=int, required=True, metavar="N", help="how many shards")
    ss.add_argument("--executor", choices=("serial", "ray"), default="serial", help="(default: %(default)s)")
    ss.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="a running Ray cluster (ray://host:10001 or auto); default: a local one of --workers CPU slots",
    )
    ss.add_argument("--workers", type=int, default=None, metavar="N", help="local Ray CPU slots (default: every core)")
    ss.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads of each shard's ONNX Runtime sessions and torch (default: theirs, every core). The CPU EP's "
        "sums depend on its thread count: images drawn with other counts differ in their last bits, so a sharded "
        "run equals the single run byte for byte only at the same count",
    )
    ss.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder of the shards and the judge")
    _gate_options(ss)
    js_ = sub.add_parser(
        "judge-shards",
        help="merge shard folders (refusing missing, overlapping or mismatched ones) and compute the set metrics with "
        "intervals from their records (no verdict: pytest -m quality --qdq-shards gates against a baseline)",
    )
    _build_options(js_)
    js_.set_defaults(model="canary")
    js_.add_argument("shard_dirs", nargs="+", type=Path, metavar="SHARD")
    js_.add_argument("--out", type=Path, required=True, metavar="DIR", help="merged images and evaluation.json")
    js_.add_argument(
        "--sizes",
        default="100,1000",
        metavar="N,N",
        help="also the metrics of the first N prompts (convergence; default: %(default)s, those below the set's size)",
    )
    _gate_options(js_, ep=False)
    cw = sub.add_parser(
        "canary-prompts",
        help="a synthetic canary prompt set of any size (the canary's 100 prompts, then seeded draws of its scenes)",
    )
    cw.add_argument("count", type=int, metavar="N", help="rows (at least 100)")
    cw.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    cw.add_argument("--out", type=Path, required=True, metavar="FILE", help="the JSON Lines file to write")
    # child processes (not listed)
    rh = sub.add_parser(
        "rehearse",
        help="the nightly's three jobs offline on stand-ins of the real model and backbones "
        "(random weights laid out where the real loaders look), each step timed with its peak memory",
    )
    rh.add_argument(
        "--size",
        choices=("tiny", "real"),
        default="tiny",
        help="stand-in width: tiny (minutes; the device steps on the HTP simulator) or real (about 1.5 h on "
        "2 cores, 14 GB, 60 GB of disk; the device job's code on the CPU EP) (default: %(default)s)",
    )
    rh.add_argument("--work", type=Path, required=True, metavar="DIR", help="stand-ins, bundle, results and the record")
    rh.add_argument(
        "--prompts",
        type=int,
        default=None,
        metavar="K",
        help="the first K prompts for the bundle and the device (default: all 100; real: 3)",
    )
    rh.add_argument("--no-context", action="store_true", help="skip compiling EP-context binaries")
    rh.add_argument(
        "--cache-dir", type=Path, default=None, metavar="DIR", help="artifact cache (default: DIR/cache under --work)"
    )
    js = sub.add_parser("_judge-subset")
    js.add_argument("--results", type=Path, required=True)
    js.add_argument("--coco-dir", type=Path, default=None)
    js.add_argument("--out", type=Path, required=True)
    js.add_argument("--model", default="stabilityai/sdxl-turbo")
    ex = sub.add_parser("_export")
    for name in ("folder", "model", "component", "dest"):
        ex.add_argument(name)
    le = sub.add_parser("_lean")
    for name in ("recipe", "component", "model", "calibration_dir", "out"):
        le.add_argument(name)
    le.add_argument("--segment-bytes", type=int, default=None)
    le.add_argument("--prepare", action="store_true")
    le.add_argument("--prepared", type=Path, default=None)
    le.add_argument("--ranges", type=Path, default=None)
    le.add_argument("--optimized-calibration", action="store_true")
    sub.add_parser("_qnn-cut").add_argument("work", type=Path)
    sub.add_parser("_olive-pass-options")  # rewrites sdxl_qdq/data/olive_pass_options.json from the installed Olive
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if _needs_qnn(args):
            require_qnn_package()  # before minutes of building, not after
        return VERBS[args.command](args)
    except QuantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _needs_qnn(args: argparse.Namespace) -> bool:
    if args.command in ("parity", "diverge", "htp-profile"):
        return True
    if args.command == "compare":
        return args.ep == "qnn"
    if args.command == "bundle":
        return not args.no_context
    return args.command == "sqnr" and args.ep == "qnn"


# ---------------------------------------------------------------------------------------------- verbs
def _build(args: argparse.Namespace):

    calibration = None
    if args.prompts_from_hub:
        calibration = load_prompts("train", stream_from_hub=True)
    return build(
        args.model,
        recipe=args.recipe,
        cache=ArtifactCache(Path(args.cache_dir) if args.cache_dir else None),
        calibration_prompts=calibration,
        allow_download=args.allow_download,
        quantizer=args.quantizer,
        prompts=args.prompt_set,
        progress=lambda m: print(m, flush=True),
    )


def _cmd_build(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = _build(args)
    for c, path in result.qdq.models.items():
        print(
            f"{c:15s} float {model_size_mb(result.float.models[c]):8.2f} MB  qdq {model_size_mb(path):8.2f} MB  {path}"
        )
    print(f"build took {time.perf_counter() - start:.1f}s")
    return 0


def _cmd_sqnr(args: argparse.Namespace) -> int:
    result = _build(args)
    feeds = record_inputs(result.float, load_prompts("test", path=result.source.prompts))
    for c, outputs in component_sqnr(result.float, result.qdq, feeds, ep=args.ep).items():
        for name, value in outputs.items():
            print(f"{c:15s} {name:26s} SQNR {value:6.2f} dB")
    return 0


def _cmd_parity(args: argparse.Namespace) -> int:
    result = _build(args)
    prompts = load_prompts("test", path=result.source.prompts)
    count = args.prompts or (PARITY_SIMULATOR_PROMPTS if qnn_is_simulated() else len(prompts))
    qnn = QnnOptions(soc_model=args.qnn_soc)
    measured = qnn_parity(result, prompts[:count], qnn=qnn)
    for c, outputs in measured.items():
        for name, value in outputs.items():
            print(f"{c:15s} {name:26s} QNN vs CPU {value:6.2f} dB")
    if args.write:
        path = BASELINES_DIR / baseline_model_name(result.source.name) / "parity.json"
        previous = json.loads(path.read_text()) if path.is_file() else None
        baseline = parity_baseline(result, measured, prompts=count, qnn=qnn, previous=previous)
        for c, outputs in baseline["outputs"].items():
            for name, entry in outputs.items():
                if entry["bound_db"] > entry["measured_db"] - PARITY_MARGIN_DB + 1e-9:
                    print(
                        f"{c}.{name}: kept the previous bound {entry['bound_db']} dB "
                        f"(measured {entry['measured_db']} dB); "
                        "lower it by hand in the file, with the reason"
                    )
        write_baseline(baseline, path)
        print(f"wrote {path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    """Exit 0 whatever the verdicts: a comparison informs, the gate decides."""
    from sdxl_qdq.flows import compare_builds
    from sdxl_qdq.judge.evaluation import check_coco_dir
    from sdxl_qdq.judge.report import write_comparison

    if args.coco_dir:
        check_coco_dir(Path(args.coco_dir))
    cache = ArtifactCache(Path(args.cache_dir) if args.cache_dir else None)
    say = lambda m: print(m, flush=True)  # noqa: E731
    a, b = (
        build(args.model, recipe=r, cache=cache, quantizer=args.quantizer, progress=say)
        for r in (args.recipe_a, args.recipe_b)
    )
    ev_a, ev_b, rows = compare_builds(
        a, b, cache=cache, ep=args.ep, qnn=QnnOptions(soc_model=args.qnn_soc), coco_dir=args.coco_dir, progress=say
    )
    names = (Path(args.recipe_a).stem, Path(args.recipe_b).stem)
    if names[0] == names[1]:
        names = ("A", "B")
    for row in rows:
        print(row.line(*names))
    print(f"report: {write_comparison(ev_a, ev_b, rows, args.out, names=names)}")
    return 0


def _cmd_compare_results(args: argparse.Namespace) -> int:
    """Exit 0 whatever the verdicts: a comparison informs, the gate decides."""
    from sdxl_qdq.flows import compare_results
    from sdxl_qdq.judge.report import write_comparison

    for path in (args.results_a, args.results_b):
        if not (path / "manifest.json").is_file():
            raise ConfigError(f"{path} is not a device results folder (no manifest.json); make one with device-run")
    cache = ArtifactCache(Path(args.cache_dir) if args.cache_dir else None)
    say = lambda m: print(m, flush=True)  # noqa: E731
    result = build(args.model, recipe=args.recipe, cache=cache, progress=say)
    ev_a, ev_b, rows, toolchains = compare_results(
        result, args.results_a, args.results_b, cache=cache, coco_dir=args.coco_dir, progress=say
    )
    names = tuple(
        f"onnxruntime-qnn {t['versions'].get('onnxruntime-qnn', '?')}" for t in (toolchains["a"], toolchains["b"])
    )
    if names[0] == names[1]:
        names = (f"A ({names[0]})", f"B ({names[1]})")
    for side, name in zip(("a", "b"), names):
        t = toolchains[side]
        parity = ", ".join(f"{c} {v:.1f} dB" for c, v in t["parity_db"].items()) or "not measured"
        placement = ", ".join(f"{c} {n}" for c, n in t["placement"].items()) or "not measured"
        print(f"{name}: {t['backend']}; QNN-vs-CPU parity {parity}; nodes on QNN {placement}")
    for row in rows:
        print(row.line(*names))
    page = write_comparison(ev_a, ev_b, rows, args.out, names=names, toolchains=toolchains)
    print(f"report: {page}")
    return 0


def _shard_job(args: argparse.Namespace, threads: int | None = None):
    from sdxl_qdq.executors import ShardJob

    if args.prompts_from_hub:
        raise ConfigError("--prompts-from-hub is not for shards: give the prompt set as a file (--prompt-set)")
    return ShardJob(
        model=args.model,
        recipe=args.recipe,
        cache_dir=args.cache_dir,
        quantizer=args.quantizer,
        prompt_set=args.prompt_set,
        ep=args.ep,
        qnn_soc=args.qnn_soc if args.ep == "qnn" else None,
        clip_backbone=args.clip_backbone,
        fid_backbone=args.fid_backbone,
        coco_dir=args.coco_dir,
        threads=threads,
    )


def _cmd_shard(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from sdxl_qdq.executors import run_one
    from sdxl_qdq.models.prompts import Shard

    shard = Shard.parse(args.shard)
    if args.out.exists():
        raise ConfigError(f"--out {args.out} exists; a shard is written to a new folder")
    job = _shard_job(args)
    result = run_one(asdict(job), str(shard), str(args.out), built=job.build(lambda m: print(m, flush=True)))
    print(f"shard {shard}: {result['prompts']} prompts in {result['wall_s']:.1f}s -> {args.out}")
    return 0


def _cmd_shards(args: argparse.Namespace) -> int:
    import os

    from sdxl_qdq.executors import run_shards, shard_folder
    from sdxl_qdq.models.prompts import Shard

    say = lambda m: print(m, flush=True)  # noqa: E731
    workers = args.workers or os.cpu_count() or 1
    threads = args.threads
    start = time.perf_counter()
    timing = run_shards(
        _shard_job(args, threads),
        args.shards,
        args.out,
        executor=args.executor,
        address=args.ray_address,
        workers=workers,
        progress=say,
    )
    drawn = time.perf_counter() - start
    folders = [shard_folder(args.out, Shard(k, args.shards)) for k in range(1, args.shards + 1)]
    summary = _judge(args, folders, args.out / "merged", say)
    summary["shards"] = {"executor": args.executor, "wall_s": round(drawn, 1), "each": timing}
    _write_json(args.out / "evaluation.json", summary)
    print(f"shards: {args.shards} in {drawn:.1f}s with {args.executor}; judge {summary['judge_s']:.1f}s")
    print(f"evaluation: {args.out / 'evaluation.json'}")
    return 0


def _cmd_judge_shards(args: argparse.Namespace) -> int:
    say = lambda m: print(m, flush=True)  # noqa: E731
    summary = _judge(args, args.shard_dirs, args.out / "merged", say)
    args.out.mkdir(parents=True, exist_ok=True)
    _write_json(args.out / "evaluation.json", summary)
    print(f"evaluation: {args.out / 'evaluation.json'}")
    return 0


def _judge(args: argparse.Namespace, folders: list[Path], merged_dir: Path, say) -> dict:
    """Merge ``folders`` and compute the set metrics from their records (the whole set, and its first N of
    ``--sizes``), printed and returned; the gate on the merge is ``pytest -m quality --qdq-shards``."""
    from sdxl_qdq.flows import merge_shards
    from sdxl_qdq.judge.backbones import resolve_backbones
    from sdxl_qdq.judge.shards import set_metrics

    sizes = [int(n) for n in str(getattr(args, "sizes", "100,1000")).split(",") if n.strip()]
    start = time.perf_counter()
    result = _build(args)
    backbones = resolve_backbones(args.clip_backbone, args.fid_backbone, model=result.source.name)
    merged = merge_shards(result, folders, merged_dir, backbones=backbones)
    n = len(merged.prompts)
    metrics = {str(n): set_metrics(merged.records)}
    for size in sizes:
        if 3 <= size < n:
            metrics[str(size)] = set_metrics(merged.records, first=size)
    for size, m in metrics.items():
        for name in ("fid", "kid", "cmmd", "clip_mean"):
            cells = "  ".join(
                f"{label} {v['value']:.4g} [{v['interval'][0]:.4g}, {v['interval'][1]:.4g}]"
                for label, v in m[name].items()
            )
            say(f"{size:>6} prompts  {name:9s} {cells}")
    return {
        "model": result.source.name,
        "recipe": result.recipe_name,
        "prompt_set": merged.manifest["prompt_set"]["name"],
        "prompts": n,
        "shards": [str(f) for f in folders],
        "backbones": backbones.record(),
        "reference": merged.manifest["reference"],
        "ep": f"{merged.manifest['ep_detail']}; {len(folders)} shards merged",
        "metrics": metrics,
        "shard_seconds": merged.seconds,
        "judge_s": round(time.perf_counter() - start, 1),
    }


def _write_json(path: Path, data: dict) -> None:
    import json
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _cmd_canary_prompts(args: argparse.Namespace) -> int:
    import json
    import os

    from sdxl_qdq.models.canary.world import synthetic_prompt_rows
    from sdxl_qdq.models.prompts import read_prompt_set

    if args.count < 100:
        raise ConfigError(
            f"canary-prompts {args.count}: a synthetic set holds the 100 canary prompts and more; give 100+"
        )
    rows = synthetic_prompt_rows(args.count, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read_prompt_set(tmp)  # what is written reads back
    os.replace(tmp, args.out)
    print(f"{len(rows)} prompts -> {args.out}")
    return 0


def _cmd_propose(args: argparse.Namespace) -> int:
    from sdxl_qdq.convert.recipe import DEFAULT_RECIPE, load_recipe
    from sdxl_qdq.diagnose.propose import propose
    from sdxl_qdq.flows import compare_builds
    from sdxl_qdq.judge.report import write_comparison

    result = _build(args)
    recipe_path = Path(args.recipe) if args.recipe else DEFAULT_RECIPE
    proposal = propose(result, load_recipe(recipe_path), top=args.top)
    if not proposal.tensors:
        print("every quantized activation is 16-bit already: nothing to raise (weights are not proposed)")
        return 0
    for line in proposal.lines():
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(proposal.recipe, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"proposed recipe: {args.out}")
    if args.evaluate:
        args.recipe = str(args.out)
        ev_a, ev_b, rows = compare_builds(
            result, _build(args), cache=result_cache(args), progress=lambda m: print(m, flush=True)
        )
        for row in rows:
            print(row.line("original", "proposed"))
        print(f"report: {write_comparison(ev_a, ev_b, rows, Path('reports/compare'), names=('original', 'proposed'))}")
    return 0


def result_cache(args: argparse.Namespace) -> ArtifactCache:
    return ArtifactCache(Path(args.cache_dir) if args.cache_dir else None)


def _cmd_coverage(args: argparse.Namespace) -> int:
    for c, path in _build(args).qdq.models.items():
        cov = qdq_coverage(path)
        print(
            f"{c:15s} compute {cov.compute:5d}  covered {cov.covered:5d}  coverage {cov.ratio:7.2%}  "
            f"float islands {[list(i.op_types) for i in cov.islands]}"
        )
    return 0


def _cmd_layers(args: argparse.Namespace) -> int:
    for c, layers in localize_build(_build(args), top=args.top).items():
        for layer in layers:
            print(f"{c:15s} {layer.sqnr_db:7.2f} dB  {layer.tensor}")
    return 0


def _cmd_diverge(args: argparse.Namespace) -> int:
    """Localize QNN-vs-CPU divergence in each chosen component; exit 1 when one diverges."""
    result = _build(args)
    findings, diverged = {}, False
    for c in COMPONENTS if args.component == "all" else (args.component,):
        print(f"== {c}", flush=True)
        found = localize(
            result.qdq.models[c],
            distinct_samples(iter_calibration(result.calibration_dir, c), args.samples),
            qnn=QnnOptions(soc_model=args.qnn_soc),
            depth=args.depth,
            threshold_db=args.threshold,
            reduce=not args.no_reduce,
            progress=lambda m: print(f"  {m}", flush=True),
        )
        print("\n".join(found.lines()), flush=True)
        findings[c] = found.to_json()
        diverged |= found.worst is not None and found.worst.local_db < args.threshold
    if args.json:
        Path(args.json).write_text(json.dumps(findings, indent=1))
        print(f"wrote {args.json}")
    return 1 if diverged else 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    from sdxl_qdq.convert.bundle import write_bundle
    from sdxl_qdq.models.prompts import load_prompts

    result = _build(args)
    prompts = load_prompts("all", path=result.source.prompts)
    write_bundle(
        result,
        args.out,
        qnn=QnnOptions(soc_model=args.qnn_soc),
        prompts=prompts[: args.prompts or len(prompts)],
        context=False if args.no_context else None,
        progress=lambda m: print(m, flush=True),
    )
    return 0


def _cmd_device_check(args: argparse.Namespace) -> int:
    from sdxl_qdq.device.check import require_device

    for key, value in require_device(native=not args.allow_emulation).items():
        print(f"{key:16s} {value}")
    return 0


def _cmd_device_test(args: argparse.Namespace) -> int:
    from sdxl_qdq.device.night import device_test_command

    command, notice = device_test_command(
        args.bundle,
        args.out,
        soc=args.qnn_soc,
        storage=args.benchmark_storage or BASELINES_DIR / "benchmarks",
        extra=tuple(args.pytest_args),
    )
    if notice:
        print(notice, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(command, check=False).returncode


def _cmd_rehearse(args: argparse.Namespace) -> int:
    from sdxl_qdq.rehearsal import rehearse

    prompts = args.prompts if args.prompts is not None else (3 if args.size == "real" else None)
    record = rehearse(
        args.work,
        args.size,
        prompts=prompts,
        context=not args.no_context,
        cache_dir=args.cache_dir,
        progress=lambda m: print(m, flush=True),
    )
    for step in record["steps"]:
        print(
            f"{step['job']:7s} {step['name']:36s} {step['seconds']:8.1f} s  peak {step.get('peak_rss_gb') or 0:5.1f} GB"
        )
    print(f"judge: {record.get('judge', {}).get('verdict')}; record: {args.work / 'rehearsal.json'}")
    return 0


def _cmd_judge_subset(args: argparse.Namespace) -> int:
    from sdxl_qdq.flows import judge_subset

    result = build(args.model, cache=ArtifactCache(), progress=lambda m: print(m, flush=True))
    record = judge_subset(
        result, args.results, cache=ArtifactCache(), coco_dir=args.coco_dir, progress=lambda m: print(m, flush=True)
    )
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(args.out)
    return 0


def _cmd_device_run(args: argparse.Namespace) -> int:
    from sdxl_qdq.device.bundle import Bundle
    from sdxl_qdq.device.night import run_night

    bundle = Bundle.load(args.bundle, soc=args.qnn_soc)
    out = run_night(
        bundle,
        args.out,
        qnn=QnnOptions(soc_model=args.qnn_soc),
        ep=args.ep,
        context=not args.no_context,
        prompt_count=args.prompts,
        progress=lambda m: print(m, flush=True),
    )
    print(f"device results written to {out}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """Exit 1 when an artifact was bad (it is moved aside), else 0."""
    cache = ArtifactCache(Path(args.cache_dir) if args.cache_dir else None)
    start, found = time.perf_counter(), cache.verify_all(stages=tuple(args.stage) if args.stage else None)
    size = sum(p.stat().st_size for folder, _ in found for p in folder.rglob("*") if p.is_file())
    bad = [(folder, problem) for folder, problem in found if problem]
    for folder, problem in bad:
        cache.quarantine(folder, problem)
    seconds = time.perf_counter() - start
    print(
        f"{len(found)} artifacts, {size / 1e9:.2f} GB hashed in {seconds:.1f}s "
        f"({size / 1e9 / max(seconds, 1e-9):.2f} GB/s); "
        f"{len(bad)} bad"
    )
    return 1 if bad else 0


def _cmd_coco_images(args: argparse.Namespace) -> int:
    from sdxl_qdq.judge.evaluation import download_coco_images

    print(f"{download_coco_images(args.out, progress=lambda m: print(m, flush=True))} images in {args.out}")
    return 0


def _cmd_bench_gate(args: argparse.Namespace) -> int:
    """Exit 1 when a benchmark regressed past the threshold after the machine-speed correction, else 0."""
    from pytest_benchmark.utils import get_machine_id

    from sdxl_qdq.benchgate import compare, latest_stored, parse_fail, regressions

    stat, limit = parse_fail(args.fail)
    stored = args.stored or latest_stored(args.storage, get_machine_id())
    rows = compare(args.run, stored, stat=stat)
    print(f"{stat} of {args.run} against {stored}, corrected for the machine's speed:")
    for row in rows:
        print("  " + row.line(limit))
    bad = regressions(rows, limit)
    if bad:
        print(f"{len(bad)} benchmark(s) regressed: {', '.join(r.name for r in bad)}")
    return 1 if bad else 0


def _cmd_htp_profile(args: argparse.Namespace) -> int:
    from sdxl_qdq.diagnose.qnn_profile import perf_lines, perf_record

    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    result = _build(args)
    record = perf_record(result, soc_model=args.qnn_soc, components=tuple(args.component or ()) or None, top=args.top)
    for line in perf_lines(record, top=args.top):
        print(line)
    if args.out:
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(args.out)
        print(f"performance record: {args.out}")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    """append: one line per run; show: per history file, the table of the last runs and every flagged move."""
    import os

    from sdxl_qdq.judge import history

    if args.action in ("append", "publish"):
        if args.summary is None or not args.summary.is_file():
            raise ConfigError(f"history {args.action} needs a run's summary.json; {str(args.summary)!r} is not a file")
        summary = json.loads(args.summary.read_text())
        if args.action == "publish":
            if not args.remote:
                raise ConfigError("history publish needs --remote URL (the repository holding the history branch)")
            with tempfile.TemporaryDirectory(prefix="gate-history-") as work:
                path = history.publish(
                    summary,
                    remote=args.remote,
                    branch=args.branch,
                    work=Path(work),
                    device=args.device,
                    commit=args.commit or os.environ.get("GITHUB_SHA"),
                )
                print(f"published to {args.branch}: {path.relative_to(work)}")
            return 0
        if args.store is None:
            raise ConfigError("history append needs --store DIR")
        record = history.condense(summary, device=args.device, commit=args.commit or os.environ.get("GITHUB_SHA"))
        path = history.append(args.store, record)
        print(f"appended {record['model']} {record['ep']} {record['device']} ({record['verdict']}) to {path}")
        return 0
    if args.store is None:
        raise ConfigError("history show needs --store DIR (a folder, or a checkout of the history branch)")
    latest_regressed, pages = False, []
    for path in history.files(args.store):
        records = history.load(path)
        if (
            not records
            or (args.model and records[-1]["model"] != args.model)
            or (args.ep and records[-1]["ep"] != args.ep)
        ):
            continue
        print(f"{path} ({len(records)} runs)")
        for line in history.table(records):
            print("  " + line)
        for flag in history.flags(records, fraction=args.fraction):
            print("  " + flag.line())
            latest_regressed |= flag.kind == "regression" and flag.run == len(records) - 1
        pages.append(history.trend_html(records, fraction=args.fraction))
    if not pages:
        print(
            f"no runs in {args.store}"
            + (f" for {args.model or ''} {args.ep or ''}".rstrip() if args.model or args.ep else "")
        )
    if args.plot:
        from sdxl_qdq.judge.report import CSS

        tmp = args.plot.with_name(f".{args.plot.name}.tmp")
        tmp.write_text(f"<!doctype html><meta charset=utf-8><style>{CSS}</style>{''.join(pages)}", encoding="utf-8")
        tmp.replace(args.plot)
        print(f"trends: {args.plot}")
    return 1 if args.fail_on_regression and latest_regressed else 0


def _cmd_study_baseline(args: argparse.Namespace) -> int:
    path = baseline_path("sdxl-turbo", Backbones(REAL_CLIP, REAL_FID), ep="cpu", reference=COCO_REFERENCE)
    write_baseline(study_baseline(), path)
    print(f"wrote {path}")
    return 0


def _cmd_canary_train(args: argparse.Namespace) -> int:
    train(args.out or WEIGHTS_DIR)
    return 0


def _cmd_export_child(args: argparse.Namespace) -> int:
    report_peak_at_exit()
    with stage_log(Path(args.dest).parent / "build.log"):  # the parent's artifact folder: its log
        export_component(Path(args.folder), resolve_source(args.model), args.component, Path(args.dest), progress=print)
    return 0


def _cmd_lean_child(args: argparse.Namespace) -> int:
    out = Path(args.out)
    with contextlib.ExitStack() as stack:
        # third-party output goes to the log of the parent's artifact folder; run by hand, to a temp file that goes
        # (the child's own errors still reach stderr: they are printed after the log is closed)
        folder = (
            out if out.is_dir() else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sdxl-qdq-lean-")))
        )
        stack.enter_context(stage_log(folder / "build.log"))
        quantize_child(
            Path(args.recipe),
            args.component,
            Path(args.model),
            Path(args.calibration_dir),
            out,
            args.segment_bytes or DEFAULT_SEGMENT_BYTES,
            prepare=args.prepare,
            prepared=args.prepared,
            ranges=args.ranges,
            optimized=args.optimized_calibration,
        )
    return 0


def _cmd_qnn_cut_child(args: argparse.Namespace) -> int:
    return run_cut_child(args.work)


def _cmd_olive_pass_options(args: argparse.Namespace) -> int:
    from sdxl_qdq.convert.recipe_passes import write_olive_schema

    print(write_olive_schema())
    return 0


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "build": _cmd_build,
    "sqnr": _cmd_sqnr,
    "parity": _cmd_parity,
    "coverage": _cmd_coverage,
    "layers": _cmd_layers,
    "diverge": _cmd_diverge,
    "compare": _cmd_compare,
    "propose": _cmd_propose,
    "bundle": _cmd_bundle,
    "study-baseline": _cmd_study_baseline,
    "canary-train": _cmd_canary_train,
    "device-check": _cmd_device_check,
    "device-test": _cmd_device_test,
    "device-run": _cmd_device_run,
    "rehearse": _cmd_rehearse,
    "_judge-subset": _cmd_judge_subset,
    "coco-images": _cmd_coco_images,
    "verify": _cmd_verify,
    "_export": _cmd_export_child,
    "_lean": _cmd_lean_child,
    "_qnn-cut": _cmd_qnn_cut_child,
    "_olive-pass-options": _cmd_olive_pass_options,
    "bench-gate": _cmd_bench_gate,
    "history": _cmd_history,
    "htp-profile": _cmd_htp_profile,
    "compare-results": _cmd_compare_results,
    "shard": _cmd_shard,
    "shards": _cmd_shards,
    "judge-shards": _cmd_judge_shards,
    "canary-prompts": _cmd_canary_prompts,
}
