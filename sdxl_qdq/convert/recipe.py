"""Recipes: Olive workflows as JSON data, one per component, run through Olive's Python API.

A recipe file is ``{"name", "description", "calibration": {"steps": [...]}, "workflows": {<component>: <Olive
run config>}}``; ``calibration.steps`` (default ``[1]``) lists the step counts whose float trajectories are
recorded as calibration data; ``calibration.prompts`` (default: all) how many of the prompt set's train prompts
(the first N) are drawn for it. String values
of the form ``${name}`` are filled in before the run (``model_path``, ``calibration_dir``, ``input_names``,
``input_shapes``, ``input_types``, ``output_dir``, ``olive_cache_dir``); a value that is exactly one
placeholder is replaced by a JSON value (lists stay lists). With those filled by hand, a workflow also
runs with ``olive run --config``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.calibration import write_distinct
from sdxl_qdq.convert.files import save_with_external_data
from sdxl_qdq.convert.ort_patches import linear_quantizer, patched
from sdxl_qdq.convert.recipe_passes import check_workflow_passes
from sdxl_qdq.errors import BuildError, ConfigError
from sdxl_qdq.paths import RECIPES_DIR
from sdxl_qdq.runtime import register_qnn

DEFAULT_RECIPE = RECIPES_DIR / "qnn_w8a16.json"
PLACEHOLDERS = (
    "model_path",
    "calibration_dir",
    "input_names",
    "input_shapes",
    "input_types",
    "output_dir",
    "olive_cache_dir",
)
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")


def load_recipe(path: Path | str = DEFAULT_RECIPE) -> dict[str, Any]:
    """Read and validate a recipe file; errors name the file, the problem and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist; pass a JSON recipe such as {DEFAULT_RECIPE}")
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"recipe file {path} is not valid JSON: {e}") from e
    workflows = recipe.get("workflows") if isinstance(recipe, dict) else None
    if not isinstance(workflows, dict):
        raise ConfigError(f"recipe file {path} needs a 'workflows' object mapping each component to an Olive workflow")
    missing = [c for c in COMPONENTS if c not in workflows]
    unknown = [c for c in workflows if c not in COMPONENTS]
    if missing or unknown:
        raise ConfigError(
            f"recipe file {path}: workflows must be exactly {list(COMPONENTS)}; missing {missing}, unknown {unknown}"
        )
    steps = recipe.get("calibration", {}).get("steps", [1])
    if not (isinstance(steps, list) and steps and all(isinstance(k, int) and k >= 1 for k in steps)):
        raise ConfigError(
            f"recipe file {path}: calibration.steps must be a non-empty list of step counts >= 1, got {steps!r}"
        )
    count = recipe.get("calibration", {}).get("prompts")
    if count is not None and not (isinstance(count, int) and not isinstance(count, bool) and count >= 1):
        raise ConfigError(
            f"recipe file {path}: calibration.prompts must be a count of train prompts >= 1 (the first N of the "
            f"prompt set's train split), got {count!r}; leave it out to calibrate on all of them"
        )
    for component, workflow in workflows.items():
        if not isinstance(workflow, dict) or not isinstance(workflow.get("passes"), dict) or not workflow["passes"]:
            raise ConfigError(f"recipe file {path}: workflow {component!r} needs a non-empty 'passes' object")
        check_workflow_passes(path, component, workflow)  # every option against Olive's own pass config
        for name in set(_PLACEHOLDER.findall(json.dumps(workflow))) - set(PLACEHOLDERS):
            raise ConfigError(
                f"recipe file {path}: workflow {component!r} uses unknown placeholder ${{{name}}}; "
                f"allowed: {', '.join('${' + p + '}' for p in PLACEHOLDERS)}"
            )
        if workflow.get("output_dir") != "${output_dir}":
            raise ConfigError(
                f"recipe file {path}: workflow {component!r} has output_dir {workflow.get('output_dir')!r}; "
                "it must be \"${output_dir}\", where the build looks for the model its last pass emits"
            )
    return recipe


def calibration_steps(recipe: dict[str, Any]) -> tuple[int, ...]:
    """The step counts whose float trajectories the recipe calibrates on."""
    return tuple(recipe.get("calibration", {}).get("steps", [1]))


def calibration_prompt_count(recipe: dict[str, Any]) -> int | None:
    """How many train prompts the recipe calibrates on (the first N of the split); None: all of them."""
    return recipe.get("calibration", {}).get("prompts")


def fill(value: Any, values: dict[str, Any]) -> Any:
    """Substitute ``${name}`` placeholders in a JSON value."""
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
    return value


def quantize_component(
    recipe: dict[str, Any], component: str, *, model: Path, calibration_dir: Path, out: Path
) -> Path:
    """Run ``component``'s workflow on ``model``; write the result as ``out/model.onnx`` (+ external data)."""
    import onnx

    with _olive_output():  # Olive's logger, made at import, writes where sys.stdout is
        from olive.workflows import run as olive_run

        import sdxl_qdq.convert.surgeons  # noqa: F401  (registers this project's surgeons with Olive's GraphSurgeries)

    register_qnn()  # Olive's QNN passes look the EP up in this process
    meta = json.loads((calibration_dir / component / "inputs.json").read_text())
    with tempfile.TemporaryDirectory(prefix=f"olive-{component}-") as tmp:
        samples = calibration_dir / component
        if minmax_only(recipe["workflows"][component]):  # a repeated sample cannot move a min or a max
            samples = Path(tmp, "distinct")
            write_distinct(calibration_dir, component, samples)
        values = {
            "model_path": str(model),
            "calibration_dir": str(samples),
            "input_names": meta["input_names"],
            "input_shapes": meta["input_shapes"],
            "input_types": meta["input_types"],
            "output_dir": str(Path(tmp) / "output"),
            "olive_cache_dir": str(Path(tmp) / "cache"),  # our cache answers first; Olive's is per build
        }
        config = with_quant_types(fill(recipe["workflows"][component], values))
        _quiet_olive()
        saved_tempdir = tempfile.tempdir  # olive's run() sets the process-wide tempfile.tempdir
        try:
            with _olive_output(), patched(linear_quantizer()):  # onnxruntime's calibration and quantizer, linear
                olive_run(config, tempdir=tmp)
        except Exception as e:
            raise BuildError(f"Olive workflow for {component!r} of recipe {recipe.get('name')!r} failed: {e}") from e
        finally:
            tempfile.tempdir = saved_tempdir
        produced = sorted(Path(tmp, "output").rglob("*.onnx"))
        if len(produced) != 1:
            raise BuildError(
                f"Olive workflow for {component!r} produced {len(produced)} ONNX models ({produced}); expected one. "
                "Does the recipe end in a single quantization pass?"
            )
        proto = onnx.load(str(produced[0]))
        out.mkdir(parents=True, exist_ok=True)
        save_with_external_data(proto, out / "model.onnx")
    shutil.copy(model.parent / "io.json", out / "io.json")
    return out / "model.onnx"


STATIC_QUANTIZATION_PASSES = ("onnxstaticquantization", "onnxquantization")


def minmax_only(workflow: dict[str, Any]) -> bool:
    """Whether every pass of ``workflow`` that reads a data config is static quantization calibrated by plain MinMax
    (Olive's default; no moving average), whose ranges do not depend on how often a sample occurs."""
    for spec in workflow.get("passes", {}).values():
        if not isinstance(spec, dict) or "data_config" not in spec:
            continue
        extra = spec.get("extra_options") or {}
        if (
            str(spec.get("type", "")).lower() not in STATIC_QUANTIZATION_PASSES
            or spec.get("quant_mode", "static") != "static"
            or spec.get("calibrate_method", "MinMax") != "MinMax"
            or extra.get("CalibMovingAverage")
        ):
            return False
    return True


def with_quant_types(workflow: dict[str, Any]) -> dict[str, Any]:
    """``extra_options.TensorQuantOverrides`` as onnxruntime reads it: a recipe is JSON, so it names each
    ``quant_type`` (and ``convert.quant_type``) as a string ("QUInt16"); onnxruntime compares ``QuantType`` members
    (given strings, Olive's run emits no model at all). Converted here, where the workflow is handed to Olive."""
    out = copy.deepcopy(workflow)
    for name, spec in out.get("passes", {}).items():
        extra = (spec.get("extra_options") or {}) if isinstance(spec, dict) else {}
        if extra.get("TensorQuantOverrides"):
            extra["TensorQuantOverrides"] = overrides_with_quant_types(extra["TensorQuantOverrides"], f"pass {name!r}")
    return out


def overrides_with_quant_types(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """A copy of one pass's ``TensorQuantOverrides`` with onnxruntime ``QuantType`` members for their JSON names."""
    from onnxruntime.quantization import QuantType

    def convert(value: Any, tensor: str) -> Any:
        if isinstance(value, QuantType):
            return value
        try:
            return QuantType.from_string(value)
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"{where}, TensorQuantOverrides[{tensor!r}]: quant_type {value!r} is not one of "
                f"{[q.name for q in QuantType]}"
            ) from None

    out = copy.deepcopy(overrides)
    for tensor, entries in out.items():
        for entry in entries:
            if "quant_type" in entry:
                entry["quant_type"] = convert(entry["quant_type"], tensor)
            if isinstance(entry.get("convert"), dict) and "quant_type" in entry["convert"]:
                entry["convert"]["quant_type"] = convert(entry["convert"]["quant_type"], tensor)
    return out


def _quiet_olive() -> None:
    for name in ("olive", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _olive_output() -> Iterator[None]:
    """Olive's output on stderr, which a build stage sends to its log (``sdxl_qdq.procs.stage_log``), and no handler
    left behind: Olive logs to ``sys.stdout`` (where this project's progress goes), forces INFO to report its run
    history, and adds a handler to onnxruntime's logger on every run."""
    ort_logger = logging.getLogger("onnxruntime")
    handlers = ort_logger.handlers[:]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        ort_logger.handlers = handlers
