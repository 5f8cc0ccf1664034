"""FID's Inception-v3 in plain torch agrees with torch-fidelity's (the extractor torchmetrics' FID uses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).resolve().parent / "data" / "inception_reference.npz"


def _images(size: int) -> np.ndarray:
    """The reference's images: two of seeded noise and one smooth gradient, uint8 N×3×H×W."""
    rng = np.random.default_rng(size)
    noise = rng.integers(0, 256, size=(2, 3, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    smooth = np.stack([np.stack([255 * xx, 255 * yy, 255 * (1 - xx) * yy])]).astype(np.uint8)
    return np.concatenate([noise, smooth])


@pytest.fixture(scope="module")
def inception(tmp_path_factory: pytest.TempPathFactory):
    from sdxl_qdq.judge.inception import FidInceptionV3, write_random_weights

    # the reference was made from this file, written by write_random_weights(seed=0) with torch 2.13.0
    return FidInceptionV3(write_random_weights(tmp_path_factory.mktemp("inception") / "w.pth", seed=0))


@pytest.mark.parametrize("size", [512, 64, 300], ids=["real-512", "tiny-64", "odd-300"])
def test_features_match_torch_fidelity(inception, size: int) -> None:
    """Reference: torch-fidelity 0.4.0's FeatureExtractorInceptionV3 on the same weights file and images
    (made with torch 2.14.1 + torchvision 0.29.1, the only pair that imports here; see made_with)."""
    import torch

    ref = np.load(REFERENCE)
    assert json.loads(str(ref["made_with"]))["torch-fidelity"] == "0.4.0"
    with torch.no_grad():
        ours = inception(torch.from_numpy(_images(size))).double().numpy()
    want = ref[f"features_{size}"]
    assert ours.shape == want.shape == (3, 2048)
    scale = np.abs(want).max()
    assert np.abs(ours - want).max() <= 1e-4 * scale, f"max |diff| {np.abs(ours - want).max():.3g} of {scale:.3g}"


def test_resize_matches_tensorflow1_on_a_known_case() -> None:
    """TF 1.x resize_bilinear, corners not aligned: out[i] = in[i·in/out] interpolated, border repeated."""
    import torch

    from sdxl_qdq.judge.inception import resize_like_tensorflow1

    x = torch.tensor([[[[0.0, 10.0]]]]).expand(1, 1, 2, 2).contiguous()  # columns 0 and 10
    out = resize_like_tensorflow1(x, 4)
    # source columns 0, 0.5, 1, 1.5 -> 0, 5, 10, 10 (clamped at the border)
    assert out[0, 0, 0].tolist() == [0.0, 5.0, 10.0, 10.0]


def test_bad_input_names_what_it_got(inception) -> None:
    import torch

    with pytest.raises(ValueError, match=r"uint8 N×3×H×W.*torch.float32"):
        inception(torch.zeros(1, 3, 8, 8))
