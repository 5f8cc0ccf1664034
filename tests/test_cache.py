"""The artifact cache: atomic, locked, content-addressed; warm builds reuse, cold rebuilds reproduce."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from sdxl_qdq.cache import ArtifactCache, make_key
from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.stages import build


def test_key_changes_with_any_input() -> None:
    base = {"recipe": {"activation_type": "uint16"}, "versions": {"onnxruntime": "1.32.0"}}
    assert make_key(base) == make_key({"versions": {"onnxruntime": "1.32.0"}, "recipe": {"activation_type": "uint16"}})
    assert make_key(base) != make_key({**base, "recipe": {"activation_type": "uint8"}})
    assert make_key(base) != make_key({**base, "versions": {"onnxruntime": "1.33.0"}})


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)

    def half_written(out: Path) -> None:
        (out / "model.onnx").write_bytes(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        cache.get_or_build("stage", {"a": 1}, half_written)
    final = cache.path("stage", {"a": 1})
    assert not final.exists()
    # nothing of the artifact is left; only the failed stage's log, beside it, for its third-party output
    assert [p.name for p in (tmp_path / "stage").iterdir() if not p.name.endswith(".lock")] == [
        f"{final.name}.failed.log"
    ]


def test_a_killed_build_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    """A process killed mid-build cannot clean up; the next build of that key removes what it left."""
    cache = ArtifactCache(tmp_path)
    final = cache.path("stage", {"a": 1})
    final.parent.mkdir(parents=True)
    left = final.parent / f".{final.name}.abc123"
    (left / "big").mkdir(parents=True)
    other = final.parent / ".someotherkey.abc123"
    other.mkdir()
    cache.get_or_build("stage", {"a": 1}, lambda out: (out / "m").write_text("ok"))
    assert not left.exists() and other.exists() and (final / "m").read_text() == "ok"


def test_parallel_requests_build_once(tmp_path: Path) -> None:
    calls = []

    def slow_build(out: Path) -> None:
        calls.append(1)
        threading.Event().wait(0.2)
        (out / "artifact").write_text("done")

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ArtifactCache(tmp_path).get_or_build("s", {"k": 1}, slow_build)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1
    assert (results[0] / "artifact").read_text() == "done" and (results[0] / "key.json").is_file()


def _digests(models: dict[str, Path]) -> dict[str, str]:
    return {
        c: hashlib.sha256(p.read_bytes() + (p.parent / "model.onnx.data").read_bytes()).hexdigest()
        for c, p in models.items()
    }


def test_second_build_is_a_cache_hit(qdq_artifacts, qdq_cache) -> None:
    again_cache = ArtifactCache(qdq_cache.root)
    again = build("tiny", cache=again_cache)
    assert again_cache.misses == [] and set(again_cache.hits) >= {"source", "export", "calibration", "qdq"}
    assert again.qdq.models == qdq_artifacts.qdq.models


@pytest.mark.slow
def test_cold_rebuild_gives_byte_identical_models(qdq_artifacts, tmp_path: Path) -> None:
    """A second cold build in an empty cache reproduces every float and QDQ model byte for byte. (In CI the same
    holds through tests/test_faults.py, whose killed-export case rebuilds everything and compares every file; this
    one, 90 s, runs with -m slow.)"""
    fresh_cache = ArtifactCache(tmp_path)
    fresh = build("tiny", cache=fresh_cache)
    assert "qdq" in fresh_cache.misses
    assert _digests(fresh.float.models) == _digests(qdq_artifacts.float.models)
    assert _digests(fresh.qdq.models) == _digests(qdq_artifacts.qdq.models)
    assert set(fresh.qdq.models) == set(COMPONENTS)


def test_a_warm_build_imports_no_heavy_package(qdq_artifacts, qdq_cache) -> None:
    """A warm build reads what its stages stored (the quantizer's memory estimate included) and imports neither
    torch, datasets, diffusers, transformers, Olive nor onnxruntime.tools (which imports torch): 2.5 s of imports
    that a hit has no use for."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\nfrom sdxl_qdq.convert.stages import build\nfrom sdxl_qdq.cache import ArtifactCache\n"
        f"cache = ArtifactCache({str(qdq_cache.root)!r})\nb = build({qdq_artifacts.source.name!r}, cache=cache)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('torch', 'datasets', 'diffusers', "
        "'transformers', 'olive')} | {m for m in sys.modules if m.startswith('onnxruntime.tools')})\n"
        "print(json.dumps({'heavy': heavy, 'misses': cache.misses, 'quantizer': b.keys['quantizer']}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["misses"] == [] and set(result["quantizer"].values()) == {"olive"}
    assert result["heavy"] == [], f"a warm build imported {result['heavy']}"
