"""The real backbones' path, offline: stand-in weights of the real architectures placed where the real loaders look
(the Hugging Face cache, torch hub's cache), never a mocked loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdxl_qdq.errors import ConfigError, ModelNotAvailableError
from sdxl_qdq.judge import backbones as bb
from sdxl_qdq.judge.backbones import PROXY_CLIP, PROXY_FID, REAL_CLIP, REAL_FID, Backbones, resolve_backbones


@pytest.fixture
def hubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty Hugging Face and torch hub caches for this test (this process and its children)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "hf").mkdir()
    bb._clip_model_and_processor.cache_clear()
    bb._real_inception.cache_clear()
    yield tmp_path
    bb._clip_model_and_processor.cache_clear()
    bb._real_inception.cache_clear()


def _inception_at(name: str, hubs: Path) -> Path:
    from sdxl_qdq.judge.inception import write_random_weights

    return write_random_weights(hubs / "torch" / "hub" / "checkpoints" / name)


def test_auto_finds_inception_under_torch_fidelitys_name_and_computes_fid(hubs: Path) -> None:
    """torchmetrics' FID uses torch-fidelity's weights file: weights-inception-2015-12-05-6726825d.pth."""
    _inception_at("weights-inception-2015-12-05-6726825d.pth", hubs)
    pair = resolve_backbones("auto", "auto", model="tiny")
    assert pair.fid == REAL_FID and "its weights are in torch hub's cache" in pair.why[1]
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    b = [np.clip(x.astype(int) + 60, 0, 255).astype(np.uint8) for x in a]
    assert bb.fid(a, a, REAL_FID) == pytest.approx(0.0, abs=1e-6)
    assert bb.fid(a, b, REAL_FID) > 1e-3
    assert bb.fid_features(a, REAL_FID).shape == (6, 2048)


def test_pytorch_fid_name_is_not_what_torchmetrics_reads(hubs: Path) -> None:
    """Only pytorch-fid's pt_inception-… file: ``auto`` falls back to the proxy and says why; asking for the real one
    is one line naming the file torchmetrics reads and where."""
    _inception_at("pt_inception-2015-12-05-6726825d.pth", hubs)
    pair = resolve_backbones("auto", "auto", model="tiny")
    assert pair.fid == PROXY_FID and "weights-inception-2015-12-05-6726825d.pth" in pair.why[1]
    with pytest.raises(
        ModelNotAvailableError,
        match=r"--fid-backbone inception-v3-2048: .*checkpoints.*weights-inception.*"
        r"downloads are off.*--fid-backbone proxy-conv64-s0-v2",
    ):
        resolve_backbones("auto", REAL_FID, model="tiny")


def test_allow_download_fetches_what_auto_needs(hubs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--allow-download fetches both real backbones (offline here: the fetch fails, and auto says so in one line)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pair = resolve_backbones("auto", "auto", model="tiny", allow_download=True)
    assert (pair.clip, pair.fid) == (PROXY_CLIP, PROXY_FID)
    assert all("fetching them failed" in why for why in pair.why), pair.why
    with pytest.raises(
        ModelNotAvailableError, match=r"--clip-backbone openai/clip-vit-base-patch16: .*fetching them failed"
    ):
        resolve_backbones(REAL_CLIP, "auto", model="tiny", allow_download=True)


def test_allow_download_uses_what_it_fetched(hubs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fetch that delivers (here: the stand-ins written where the downloads land) gives the real pair."""
    from sdxl_qdq.models.standin import write_clip_snapshot

    fetched = {
        REAL_CLIP: lambda: write_clip_snapshot(hubs / "hf", width="small"),
        REAL_FID: lambda: _inception_at("weights-inception-2015-12-05-6726825d.pth", hubs),
    }
    for name, fetch in fetched.items():
        proxy, available, _, where, how = bb._REAL[name]
        monkeypatch.setitem(bb._REAL, name, (proxy, available, fetch, where, how))
    assert resolve_backbones("auto", "auto", model="tiny").name == f"{PROXY_CLIP}__{PROXY_FID}"  # off: nothing fetched
    pair = resolve_backbones("auto", "auto", model="tiny", allow_download=True)
    assert (pair.clip, pair.fid) == (REAL_CLIP, REAL_FID) and all("fetched into" in w for w in pair.why)


def test_real_clip_preprocesses_with_the_recorded_processor(hubs: Path) -> None:
    """Whatever else is installed, the real CLIP's images go through CLIPImageProcessorPil, and baselines say so."""
    from sdxl_qdq.models.standin import write_clip_snapshot

    write_clip_snapshot(hubs / "hf", width="small")
    pair = resolve_backbones("auto", PROXY_FID, model="tiny")
    assert pair.clip == REAL_CLIP
    _, processor = bb._clip_model_and_processor(REAL_CLIP)
    assert type(processor.image_processor).__name__ == bb.REAL_CLIP_PREPROCESSING == pair.record()["clip_preprocessing"]
    rng = np.random.default_rng(0)
    scores = bb.clip_scores([rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)], ["a cat"], REAL_CLIP)
    assert len(scores) == 1 and 0.0 <= scores[0] <= 100.0
    assert "clip_preprocessing" not in Backbones(PROXY_CLIP, PROXY_FID).record()


def test_baseline_without_the_clip_preprocessing_never_gates(tmp_path: Path) -> None:
    """A real-CLIP baseline made before the preprocessing was recorded (or with another one) is refused."""
    from sdxl_qdq.judge.baseline import REQUIRED, baseline_path, load_baseline

    pair = Backbones(REAL_CLIP, REAL_FID)
    path = baseline_path("sdxl-turbo", pair, tmp_path, reference="coco2017-crop256")
    path.parent.mkdir(parents=True)
    base = {k: {} for k in REQUIRED} | {
        "backbones": {"clip": REAL_CLIP, "fid": REAL_FID},
        "ep": "cpu",
        "fid_reference_id": "coco2017-crop256",
    }
    path.write_text(json.dumps(base))
    with pytest.raises(ConfigError, match=r"records backbones .*this run's is .*CLIPImageProcessorPil"):
        load_baseline("sdxl-turbo", pair, tmp_path, reference="coco2017-crop256")
    path.write_text(json.dumps(base | {"backbones": pair.record()}))
    assert load_baseline("sdxl-turbo", pair, tmp_path, reference="coco2017-crop256")["ep"] == "cpu"


@pytest.mark.parametrize("backbone", [PROXY_FID, "canary-image-tower-v1"])
def test_fid_of_several_sets_is_each_sets_fid(backbone: str) -> None:
    """Each set's features extracted once per process (shared with KID and the A/B's intervals) give torchmetrics'
    FrechetInceptionDistance of that set against the reference, to float rounding."""
    import torch

    rng = np.random.default_rng(1)
    reference = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    sets = {
        name: [np.clip(r.astype(int) + shift, 0, 255).astype(np.uint8) for r in reference]
        for name, shift in (("a", 5), ("b", 40), ("c", -30))
    }
    together = bb.fids(sets, reference, backbone)
    for name, images in sets.items():
        metric = bb._fid_metric(backbone)
        with torch.inference_mode():
            metric.update(bb._batch(reference), real=True)
            metric.update(bb._batch(images), real=False)
            assert together[name] == pytest.approx(float(metric.compute()), rel=1e-9, abs=1e-12)
    assert len(set(together.values())) == 3
    features = bb.fid_features(sets["a"], backbone)
    assert bb.fid_features(list(sets["a"]), backbone) is features and not features.flags.writeable
