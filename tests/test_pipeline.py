"""The ORT pipeline: deterministic per prompt, on float and QDQ components."""

from __future__ import annotations

import numpy as np
import pytest

from quant.run.pipeline import OrtSDXLPipeline, prompt_seed


def test_prompt_seed_depends_only_on_text() -> None:
    assert prompt_seed("a cat") == prompt_seed("a cat") != prompt_seed("a dog")
    assert 0 <= prompt_seed("a cat") < 2**31


@pytest.mark.parametrize("variant", ["float", "qdq"])
def test_pipeline_is_deterministic(artifacts, variant: str) -> None:
    pipe = OrtSDXLPipeline(getattr(artifacts, variant))
    first = pipe("A child holding a flowered umbrella and petting a yak", steps=2)
    pipe("something else in between", steps=1)
    again = pipe("A child holding a flowered umbrella and petting a yak", steps=2)
    size = artifacts.source.image_size
    assert first.shape == (size, size, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)


def test_steps_must_be_positive(artifacts) -> None:
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        OrtSDXLPipeline(artifacts.float)("a cat", steps=0)


def test_reuse_runs_each_distinct_call_once_with_the_same_images(artifacts) -> None:
    """Calibration runs each prompt at 1 and 2 steps: the encoders see the prompt twice and the first UNet
    call is the same at both step counts, so with ``reuse`` those run once; the images do not change."""
    prompt = "A child holding a flowered umbrella and petting a yak"
    plain, reusing = OrtSDXLPipeline(artifacts.float), OrtSDXLPipeline(artifacts.float, reuse=True)
    for k in (1, 2):
        np.testing.assert_array_equal(reusing(prompt, steps=k), plain(prompt, steps=k))
    assert plain.executed == {"text_encoder": 2, "text_encoder_2": 2, "unet": 3, "vae_decoder": 2}
    assert reusing.executed == {"text_encoder": 1, "text_encoder_2": 1, "unet": 2, "vae_decoder": 2}
