"""One table of the recipe's passes, read by the recipe validator, the stock (Olive) path and the memory-bounded one.

Olive accepts a pass option by its own pass config (``Pass._default_config``: a type, an enum's values; for the
quantization passes' ``calibrate_method`` and ``quant_format``, strings Olive looks up by name in onnxruntime's
``CalibrationMethod`` and ``QuantFormat``) and ignores an unknown one silently; a typo would build
a different model and gate it as the one meant. ``check_pass`` checks every option of a recipe's pass against
Olive's config before anything is built: an unknown option (with the closest names), a value outside its enum or
its listed values (a case typo named), a value of the wrong type. Olive's configs are read once per Olive version
and shipped as ``sdxl_qdq/data/olive_pass_options.json`` (``python -m sdxl_qdq _olive-pass-options`` writes it;
a test compares it with the installed Olive), so a warm build does not import Olive; another Olive version is read
live.

``LEAN`` is what the memory-bounded quantizer implements of each pass: an option either any value or the one value
it implements; ``extra_options`` only ``TensorQuantOverrides``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from sdxl_qdq.errors import ConfigError
from sdxl_qdq.paths import DATA_DIR

SCHEMA_PATH = DATA_DIR / "olive_pass_options.json"
ANY = "*"  # LEAN: any value of the option
PASS_DOCS = "https://microsoft.github.io/Olive/reference/pass.html"

# pass type -> option -> ANY or the one value implemented (absent: not implemented)
LEAN: dict[str, dict[str, Any]] = {
    "QNNPreprocess": {"fuse_layernorm": ANY},
    "GraphSurgeries": {"surgeries": ANY, "remove_duplicate_initializers": ANY},
    "OnnxStaticQuantization": {
        "data_config": ANY,
        "activation_type": ANY,
        "precision": ANY,
        "quant_preprocess": ANY,
        "per_channel": ANY,
        "extra_options": ANY,
        "quant_format": "QDQ",
        "calibrate_method": "MinMax",
        "prepare_qdq_config": True,
        "quant_mode": "static",
    },
}
LEAN_EXTRA_OPTIONS = ("TensorQuantOverrides",)


# ------------------------------------------------------------------------------------------- Olive's pass configs
def olive_version() -> str | None:
    try:
        return importlib.metadata.version("olive-ai")
    except importlib.metadata.PackageNotFoundError:
        return None


# string options Olive turns into onnxruntime enums by name (``CalibrationMethod[value]``): their closed value sets
ORT_NAMED = {"calibrate_method": "CalibrationMethod", "quant_format": "QuantFormat"}
ORT_NAMED_PASSES = ("onnxquantization", "onnxstaticquantization")


def _describe(pass_type: str, option: str, param: Any) -> dict[str, Any]:
    """An Olive ``PassConfigParam`` as JSON: its kind, and the values a closed option takes."""
    import enum

    import onnxruntime.quantization as ortq

    kind = param.type_
    out: dict[str, Any] = {"required": bool(param.required)}
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        out.update(kind="enum", values=[m.value for m in kind])
        if getattr(kind._missing_, "__func__", None) is not enum.Enum._missing_.__func__:  # CaseInsensitiveEnum
            out["any_case"] = True
    elif kind in (bool, int, float, str, list, dict):
        out["kind"] = kind.__name__
        if kind is str and pass_type in ORT_NAMED_PASSES and option in ORT_NAMED:
            out["values"] = [m.name for m in getattr(ortq, ORT_NAMED[option])]
    else:
        out["kind"] = "any"  # unions, Olive's own config classes, callables
    return out


def read_olive_schema() -> dict[str, Any]:
    """Every Olive pass's options (imports Olive: seconds), by lowercase pass type; the accelerator's options of
    the CPU and QNN specs together (a few passes add options for an EP)."""
    import olive
    from olive.engine.config import RunPassConfig
    from olive.hardware.accelerator import AcceleratorSpec

    registry = json.loads((Path(olive.__file__).parent / "olive_config.json").read_text())["passes"]
    specs = [
        AcceleratorSpec(accelerator_type="cpu", execution_provider="CPUExecutionProvider"),
        AcceleratorSpec(accelerator_type="npu", execution_provider="QNNExecutionProvider"),
    ]
    passes: dict[str, Any] = {}
    for name, entry in sorted(registry.items()):
        module, cls = entry["module_path"].rsplit(".", 1)
        options: dict[str, Any] | None = None
        why = None
        for spec in specs:
            try:
                pass_cls = getattr(importlib.import_module(module), cls)
                params = pass_cls._default_config(spec)
            except Exception as e:  # an extra dependency absent, or an EP the pass refuses
                why = f"{type(e).__name__}: {e}"[:200]
                continue
            options = {**(options or {}), **{k: _describe(name.lower(), k, v) for k, v in params.items()}}
        if options is None:  # its type is known, its options are not
            passes[name.lower()] = {"type": name, "options": None, "why": why}
            continue
        passes[name.lower()] = {"type": name, "options": dict(sorted(options.items()))}
    return {
        "olive": olive_version(),
        "made_by": "python -m sdxl_qdq _olive-pass-options",
        "common": sorted(RunPassConfig.model_fields),
        "passes": passes,
    }


def write_olive_schema(path: Path = SCHEMA_PATH) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(read_olive_schema(), indent=1) + "\n")
    tmp.replace(path)
    return path


@functools.lru_cache(maxsize=1)
def olive_schema() -> dict[str, Any] | None:
    """Olive's pass configs: the shipped copy when it was read from the installed Olive version, else read live;
    None where Olive is not installed (the NPU runner, which builds nothing)."""
    installed = olive_version()
    if installed is None:
        return None
    if SCHEMA_PATH.is_file():
        shipped = json.loads(SCHEMA_PATH.read_text())
        if shipped.get("olive") == installed:
            return shipped
    return read_olive_schema()


# ------------------------------------------------------------------------------------------- the validator
def _close(word: str, candidates: list[str]) -> list[str]:
    lowered = {c.lower(): c for c in candidates}
    if word.lower() in lowered:  # a case typo
        return [lowered[word.lower()]]
    return difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)


def _hint(word: str, candidates: list[str]) -> str:
    close = _close(word, candidates)
    return (
        f" (did you mean {close[0]!r}?)" if len(close) == 1 else (f" (did you mean one of {close}?)" if close else "")
    )


def _type_problem(value: Any, spec: dict[str, Any]) -> str | None:
    """Why ``value`` is not what an option of ``spec`` takes, or None."""
    kind = spec["kind"]
    if isinstance(value, str) and value.startswith("${"):  # a placeholder, filled in before the run
        return None
    if isinstance(value, dict) and value.get("olive_parameter_type"):  # a search parameter
        return None
    if value is None and not spec["required"]:
        return None
    if kind in ("enum",) or "values" in spec:
        values = [str(v) for v in spec["values"]]
        fold = (lambda v: v.lower()) if spec.get("any_case") else (lambda v: v)
        if not isinstance(value, str) or fold(value) not in {fold(v) for v in values}:
            return f"is {value!r}; allowed: {', '.join(values)}{_hint(str(value), values)}"
        return None
    expected = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "list": (list,), "dict": (dict,)}
    if kind in expected and (not isinstance(value, expected[kind]) or (kind != "bool" and isinstance(value, bool))):
        shown = "true or false" if kind == "bool" else f"a JSON {'object' if kind == 'dict' else kind}"
        return f"is {value!r} ({type(value).__name__}); Olive expects {shown}"
    return None


def check_pass(where: str, name: str, spec: Any, schema: dict[str, Any] | None) -> None:
    """One pass of a recipe's workflow against Olive's config of its type; ``where`` names the file and workflow.
    Raises ``ConfigError`` (one line: file, workflow, pass, option, value, what is allowed)."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: pass {name!r} needs a \"type\" (an Olive pass, see {PASS_DOCS})")
    if schema is None:
        return
    passes = schema["passes"]
    entry = passes.get(kind.lower())
    if entry is None:
        known = sorted({p["type"] for p in passes.values()})
        close = _close(kind, known) or sorted(k for k in known if kind.lower()[:6] in k.lower())[:3]
        raise ConfigError(
            f"{where}: pass {name!r} has type {kind!r}, which Olive does not know"
            f"{f' (did you mean {close}?)' if close else ''}; see {PASS_DOCS}"
        )
    options = entry["options"]
    if options is None:  # Olive could not read this pass's options here (its extra dependency is absent)
        return
    given = {k: v for k, v in spec.items() if k not in schema["common"]}
    if isinstance(spec.get("config"), dict):  # the nested form {"type": ..., "config": {...}}
        given.update(spec["config"])
    label = f"{where}: pass {name!r} ({entry['type']})"
    for option, value in given.items():
        if option not in options:
            raise ConfigError(
                f"{label}: unknown option {option!r}{_hint(option, list(options))}; Olive would ignore "
                f"it silently (its options: {', '.join(options)})"
            )
        problem = _type_problem(value, options[option])
        if problem:
            raise ConfigError(f"{label}: option {option!r} {problem}")


def check_workflow_passes(path: Path, component: str, workflow: dict[str, Any]) -> None:
    schema = olive_schema()
    for name, spec in workflow["passes"].items():
        check_pass(f"recipe file {path}: workflow {component!r}", name, spec, schema)


# ------------------------------------------------------------------------------------------- the lean path's share
def lean_problem(kind: str, options: dict[str, Any]) -> str | None:
    """Why the memory-bounded quantizer cannot run a pass of ``kind`` with ``options`` (None: it can)."""
    implemented = LEAN.get(kind)
    if implemented is None:
        return f"type {kind!r} is not implemented by the memory-bounded quantizer (it runs {', '.join(LEAN)})"
    unknown = sorted(set(options) - set(implemented))
    if unknown:
        return f"({kind}) sets {unknown}, which the memory-bounded quantizer does not implement"
    wrong = {k: options[k] for k, v in implemented.items() if v != ANY and k in options and options[k] != v}
    if wrong:
        fixed = {k: v for k, v in implemented.items() if v != ANY}
        return f"({kind}): the memory-bounded quantizer implements {fixed} only; got {wrong}"
    extra = sorted(set(options.get("extra_options") or {}) - set(LEAN_EXTRA_OPTIONS))
    if extra:
        return (
            f"({kind}) sets extra_options {extra}; the memory-bounded quantizer implements "
            f"{', '.join(LEAN_EXTRA_OPTIONS)} only"
        )
    return None
