"""The offline rehearsal runs the nightly's own commands, and its stand-ins are what the real loaders read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdxl_qdq.rehearsal import night_steps

ROOT = Path(__file__).resolve().parent.parent
NIGHTLY = ROOT / ".github" / "workflows" / "nightly-npu.yml"


@pytest.mark.parametrize("size", ["tiny", "real"])
def test_rehearsal_runs_every_command_of_the_nightly(size: str, tmp_path: Path) -> None:
    """Each `sdxl-qdq <verb>` the nightly calls is a step of the rehearsal (the COCO download aside: offline, the
    stand-in folder replaces it), in the nightly's order, so the two cannot drift apart."""
    import yaml

    jobs = yaml.safe_load(NIGHTLY.read_text())["jobs"]
    nightly = [
        (job, verb)
        for job, spec in jobs.items()
        for step in spec["steps"]
        for verb in re.findall(r"sdxl-qdq (\w[\w-]*)", str(step.get("run", "")))
        if verb != "coco-images"
    ]
    steps = night_steps(tmp_path, size, prompts=3, context=False)
    rehearsed = [(s.job, s.argv[s.argv.index("sdxl_qdq") + 1]) for s in steps if "sdxl_qdq" in s.argv]
    # at real size the judge scores the device's few prompts (no verdict, no summary.json): no test run, no history
    expected = [(job, verb) for job, verb in nightly if not (size == "real" and verb in ("device-test", "history"))]
    assert [pair for pair in rehearsed if pair[0] != "judge"] == expected
    (judge,) = [s for s in steps if s.job == "judge"]
    assert steps.index(judge) == len(expected) - (size == "tiny")  # after the device's steps, before the history
    if size == "tiny":  # the judge's own command: pytest -m quality --qdq-from-device
        assert (
            judge.argv[1:4] == ["-m", "pytest", "-q"]
            and any(a.startswith("--qdq-from-device=") for a in judge.argv)
            and "quality" in judge.argv
        )
        assert judge.ok_codes == (0, 1)  # stand-in weights against the study's baseline fail its checks


def test_tiny_standins_are_what_the_real_loaders_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """The stand-in snapshot resolves through snapshot_download exactly as a downloaded one (fp16 variants left out by
    the loader's patterns), and the stand-in backbones through the real backbones' resolution. Writing them shows no
    third-party bars or notices (transformers' "Writing model shards", diffusers' float32 notice): those go to the
    work folder's log."""
    from huggingface_hub import constants

    from sdxl_qdq.judge.backbones import REAL_CLIP, REAL_FID, resolve_backbones
    from sdxl_qdq.models.source import resolve_source
    from sdxl_qdq.rehearsal import REAL_MODEL, environment, stage_standins

    env = environment(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    written = stage_standins(tmp_path, "tiny", progress=lambda _: None)
    shown = capfd.readouterr()
    assert "Writing model shards" not in shown.out + shown.err and "kept in float32" not in shown.out + shown.err
    assert "Writing model shards" in (tmp_path / "logs" / "standins.log").read_text()
    source = resolve_source(REAL_MODEL)
    folder = source.materialize(None)
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()  # the hub holds it …
    assert not any("fp16" in name for name, *_ in source.fingerprint["files"])  # … the loader leaves it out
    assert source.fingerprint["revision"] == folder.name and source.fingerprint["repo_id"] == REAL_MODEL
    assert {p.name for p in (folder / "tokenizer").iterdir()} == {
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
    }
    pair = resolve_backbones("auto", "auto", model=REAL_MODEL)
    assert (pair.clip, pair.fid) == (REAL_CLIP, REAL_FID), pair.why
    assert len(list(Path(written["coco"]).glob("*.jpg"))) == 100
