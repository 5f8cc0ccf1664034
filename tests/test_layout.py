"""The package's shape: one folder per stage, imports that point down the data flow, no private name used
across modules, and a README layout table that matches the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sdxl_qdq"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]) -> dict[str, set[tuple[str, str | None]]]:
    """Per module: (imported module, imported name or None) for every import inside the package, at any depth
    (an import inside a function is still an arrow of the design)."""
    found: dict[str, set[tuple[str, str | None]]] = {}
    for name, path in modules.items():
        edges = found.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {(a.name, None) for a in node.names if a.name.split(".")[0] == "sdxl_qdq"}
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, path.name == "__init__.py", node)
                if target.split(".")[0] != "sdxl_qdq":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add((sub, None) if sub in modules else (target, alias.name))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, edges in _imports(modules).items():
        targets = set()
        for imported, _ in edges:
            target = imported
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name and not name.startswith(target + "."):
                targets.add(target)
        graph[name] = targets
    return graph


def test_no_import_cycles() -> None:
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_name_imported_across_modules() -> None:
    private = [
        f"{importer} imports {target}.{name}"
        for importer, edges in _imports(_modules()).items()
        for target, name in edges
        if name and name.startswith("_") and target != importer
    ]
    assert not private, private


STAGES = (
    "sdxl_qdq.models",
    "sdxl_qdq.run",
    "sdxl_qdq.convert",
    "sdxl_qdq.judge",
    "sdxl_qdq.diagnose",
    "sdxl_qdq.device",
)
# they tie the stages together
TOP = (
    "sdxl_qdq.cli",
    "sdxl_qdq.flows",
    "sdxl_qdq.executors",
    "sdxl_qdq.plugin",
    "sdxl_qdq.rehearsal",
    "sdxl_qdq.__main__",
)


def test_stages_import_down_the_data_flow() -> None:
    """Import order models → run → convert → judge (convert records its calibration inputs by running run's float
    pipeline); diagnose and device (what the NPU runner runs) beside them; a stage never imports a later one, and
    none imports diagnose or device."""
    order = {
        "sdxl_qdq.models": 0,
        "sdxl_qdq.run": 1,
        "sdxl_qdq.convert": 2,
        "sdxl_qdq.judge": 3,
        "sdxl_qdq.diagnose": 3,
        "sdxl_qdq.device": 3,
    }
    wrong = []
    for importer, targets in _graph().items():
        stage = next((s for s in order if importer.startswith(s + ".")), None)
        for target in targets:
            other = next((s for s in order if target.startswith(s + ".")), None)
            beside = other in ("sdxl_qdq.diagnose", "sdxl_qdq.device") and stage != other
            if stage and other and (order[other] > order[stage] or beside):
                wrong.append(f"{importer} -> {target}")
    assert not wrong, wrong


def test_shared_modules_import_no_stage() -> None:
    """errors, paths, cache, procs, components, runtime sit below every stage."""
    wrong = [
        f"{m} -> {t}"
        for m, targets in _graph().items()
        if m.count(".") == 1 and m not in TOP
        for t in targets
        if t.startswith(STAGES)
    ]
    assert not wrong, wrong


def test_readme_layout_table_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(sdxl_qdq/[\w/]+(?:\.py)?)`", section))
    assert named, "the README's layout table names no sdxl_qdq/ path"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"README names paths that do not exist: {missing}"
    folders = {str(p.parent.relative_to(ROOT)) for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}
    unnamed = sorted(f for f in folders if not any(n.rstrip("/") == f or n.startswith(f + "/") for n in named))
    assert not unnamed, f"packages missing from the README's layout table: {unnamed}"


def test_no_source_file_is_git_ignored() -> None:
    """An ignore pattern that matches a package folder (``build/`` once matched the stage now in ``convert/``)
    leaves it out of every
    clone while the tree that wrote it still works."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an installed copy): nothing can be left out of a clone")
    listed = subprocess.run(
        [
            "git",
            "ls-files",
            "--cached",
            "--others",
            "--ignored",
            "--exclude-standard",
            "--",
            "sdxl_qdq",
            "tests",
            "recipes",
            "baselines",
            "requirements",
            "fixtures",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    sources = [
        f for f in listed if "__pycache__" not in f and ".egg-info" not in f and not Path(f).name.startswith(".")
    ]
    assert not sources, f"matched by .gitignore (new files there never reach a clone): {sources[:10]}"


OUTPUT_NAMES = {"build", "dist", "out", "tmp", "cache", "output", "outputs"}


def test_no_package_folder_is_named_like_an_output() -> None:
    """Folders named like build output are skipped by linters', collectors' and ignore files' defaults: the package
    has none (its stages are models, run, convert, judge, diagnose, device)."""
    named = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*") if p.is_dir() and p.name in OUTPUT_NAMES)
    assert not named, named


def test_the_import_package_is_named_for_the_project() -> None:
    """``import sdxl_qdq`` (the distribution sdxl-qdq-gate, the CLI sdxl-qdq); no generic top-level name."""
    import importlib.util

    assert importlib.util.find_spec("sdxl_qdq") is not None
    assert importlib.util.find_spec("quant") is None
    assert PACKAGE.is_dir() and not (ROOT / "quant").exists()


def test_every_cached_stage_is_declared_in_the_stage_table() -> None:
    """Each stage name the package hands the cache (``get_or_build``/``path`` with a literal) is a row of
    ``sdxl_qdq.stage_table.STAGES``, whose reads name declared stages; a declared stage's inputs without one of
    its key fields are refused."""
    import pytest

    from sdxl_qdq.stage_table import STAGES, check_inputs

    used = set()
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get_or_build", "path")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                used.add(node.args[0].value)
    assert used and used <= set(STAGES), sorted(used - set(STAGES))
    assert all(set(s.reads) <= set(STAGES) for s in STAGES.values())
    with pytest.raises(ValueError, match=r"inputs of stage 'qdq' lack its key fields \['workflow'\]"):
        check_inputs("qdq", {"export": 1, "calibration": 2, "component": "unet", "revision": 2})
