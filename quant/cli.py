"""Command line: ``python -m quant build|sqnr|coverage|layers|study-baseline`` (also installed as ``sdxl-qdq``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from quant.errors import QuantError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", metavar="NAME",
                   help="model source: 'tiny' (embedded, offline), 'canary', 'sdxl-turbo:random' (the real "
                        "architecture with random weights, for sizing), a Hugging Face id such as stabilityai/sdxl-turbo, "
                        "or a local diffusers folder (default: %(default)s)")
    p.add_argument("--recipe", default=None, metavar="FILE", help="recipe JSON (default: recipes/qnn_w8a16.json)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="artifact cache (default: $SDXL_QDQ_CACHE_DIR or ~/.cache/sdxl-qdq-gate)")
    p.add_argument("--quantizer", choices=("auto", "olive", "lean"), default="auto",
                   help="'olive': the recipe's Olive workflows; 'lean': the same passes memory-bounded, one component "
                        "per process; 'auto': lean where the Olive path would not fit this machine (default: %(default)s)")
    p.add_argument("--allow-download", action="store_true",
                   help="let a Hugging Face model be downloaded when it is not cached (default: off)")
    p.add_argument("--prompts-from-hub", action="store_true",
                   help="calibrate on rows 0-49 of phiyodr/coco2017 streamed from the hub instead of the bundled "
                        "fixture (needs network; default: off)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdxl-qdq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("build", help="export, calibrate and quantize every component, with progress"))
    sq = sub.add_parser("sqnr", help="SQNR of each QDQ component vs float on the model's 50 test prompts")
    _common(sq)
    sq.add_argument("--ep", choices=("cpu", "qnn"), default="cpu", help="EP of the QDQ models (default: %(default)s)")
    _common(sub.add_parser("coverage", help="QDQ coverage and float islands of each component"))
    lay = sub.add_parser("layers", help="layers with the largest quantization error (float vs QDQ SQNR), worst first")
    _common(lay)
    lay.add_argument("--top", type=int, default=3, metavar="N", help="layers per component (default: %(default)s)")
    sub.add_parser("study-baseline", help="write baselines/sdxl-turbo/ from the published study in fixtures/")
    args = parser.parse_args(argv)

    if args.command == "study-baseline":
        from quant.gate import baseline_path, write_baseline
        from quant.backbones import REAL_CLIP, REAL_FID, Backbones
        from quant.study import study_baseline

        path = baseline_path("sdxl-turbo", Backbones(REAL_CLIP, REAL_FID))
        write_baseline(study_baseline(), path)
        print(f"wrote {path}")
        return 0

    from quant.build import build
    from quant.cache import ArtifactCache

    try:
        start = time.perf_counter()
        calibration = None
        if args.prompts_from_hub:
            from quant.prompts import load_prompts

            calibration = load_prompts("train", stream_from_hub=True)
        result = build(args.model, recipe=args.recipe, cache=ArtifactCache(Path(args.cache_dir) if args.cache_dir else None),
                       calibration_prompts=calibration, allow_download=args.allow_download, quantizer=args.quantizer,
                       progress=lambda m: print(m, flush=True))
        if args.command == "build":
            from quant.evaluate import model_size_mb

            for c, path in result.qdq.models.items():
                print(f"{c:15s} float {model_size_mb(result.float.models[c]):8.2f} MB  qdq {model_size_mb(path):8.2f} MB  {path}")
            print(f"build took {time.perf_counter() - start:.1f}s")
        elif args.command == "coverage":
            from quant.coverage import qdq_coverage

            for c, path in result.qdq.models.items():
                cov = qdq_coverage(path)
                print(f"{c:15s} compute {cov.compute:5d}  covered {cov.covered:5d}  coverage {cov.ratio:7.2%}  "
                      f"float islands {[list(i.op_types) for i in cov.islands]}")
        elif args.command == "layers":
            from quant.localize import localize_build

            for c, layers in localize_build(result, top=args.top).items():
                for layer in layers:
                    print(f"{c:15s} {layer.sqnr_db:7.2f} dB  {layer.tensor}")
        else:
            from quant.evaluate import component_sqnr, record_inputs
            from quant.prompts import load_prompts

            feeds = record_inputs(result.float, load_prompts("test", path=result.source.prompts))
            for c, outputs in component_sqnr(result.float, result.qdq, feeds, ep=args.ep).items():
                for name, value in outputs.items():
                    print(f"{c:15s} {name:26s} SQNR {value:6.2f} dB")
    except QuantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
