"""The ORT pipeline: deterministic per prompt, on float and QDQ components."""

from __future__ import annotations

import numpy as np
import pytest

from sdxl_qdq.run.pipeline import OrtSDXLPipeline, prompt_seed


def test_prompt_seed_depends_only_on_text() -> None:
    assert prompt_seed("a cat") == prompt_seed("a cat") != prompt_seed("a dog")
    assert 0 <= prompt_seed("a cat") < 2**31


@pytest.mark.parametrize("variant", ["float", "qdq"])
def test_pipeline_is_deterministic(qdq_artifacts, variant: str) -> None:
    pipe = OrtSDXLPipeline(getattr(qdq_artifacts, variant))
    first = pipe("A child holding a flowered umbrella and petting a yak", steps=2)
    pipe("something else in between", steps=1)
    again = pipe("A child holding a flowered umbrella and petting a yak", steps=2)
    size = qdq_artifacts.source.image_size
    assert first.shape == (size, size, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)


def test_steps_must_be_positive(qdq_artifacts) -> None:
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        OrtSDXLPipeline(qdq_artifacts.float)("a cat", steps=0)


def test_reuse_runs_each_distinct_call_once_with_the_same_images(qdq_artifacts) -> None:
    """Calibration runs each prompt at 1 and 2 steps: the encoders see the prompt twice and the first UNet
    call is the same at both step counts, so with ``reuse`` those run once; the images do not change."""
    prompt = "A child holding a flowered umbrella and petting a yak"
    plain, reusing = OrtSDXLPipeline(qdq_artifacts.float), OrtSDXLPipeline(qdq_artifacts.float, reuse=True)
    for k in (1, 2):
        np.testing.assert_array_equal(reusing(prompt, steps=k), plain(prompt, steps=k))
    assert plain.executed == {"text_encoder": 2, "text_encoder_2": 2, "unet": 3, "vae_decoder": 2}
    assert reusing.executed == {"text_encoder": 1, "text_encoder_2": 1, "unet": 2, "vae_decoder": 2}


def test_variants_drawn_together_are_the_images_drawn_alone(qdq_artifacts, tmp_path, monkeypatch) -> None:
    """float@1 and float@2 in one pass: the same PNG bytes as each drawn alone, each its own cached artifact, and
    every distinct model call once per prompt (a real-size gate's images in under 2 h on 2 cores depend on it)."""
    from sdxl_qdq.cache import ArtifactCache
    from sdxl_qdq.models.prompts import load_prompts
    from sdxl_qdq.run import generate as gen
    from sdxl_qdq.run.generate import Variant, generate, generate_together

    prompts = load_prompts("test")[:3]
    pipes = []
    real = gen.OrtSDXLPipeline
    monkeypatch.setattr(gen, "OrtSDXLPipeline", lambda *a, **k: pipes.append(real(*a, **k)) or pipes[-1])
    variants = [Variant("float", 1), Variant("float", 2)]
    key = qdq_artifacts.image_key("float")
    together = generate_together(qdq_artifacts.float, variants, prompts, key=key, cache=ArtifactCache(tmp_path / "a"))
    # per prompt: its encoding, 2 UNet calls (the 2-step image's first is the 1-step one's) and the text response's
    # call with the empty prompt (encoded once per pipeline), 2 decodes
    assert pipes[-1].executed == {"text_encoder": 4, "text_encoder_2": 4, "unet": 9, "vae_decoder": 6}
    alone = {
        v: generate(qdq_artifacts.float, v, prompts, key=key, cache=ArtifactCache(tmp_path / "b")) for v in variants
    }
    for v in variants:
        names = sorted(p.name for p in together[v].glob("*.png"))
        assert len(names) == 3 and names == sorted(p.name for p in alone[v].glob("*.png"))
        assert all((together[v] / n).read_bytes() == (alone[v] / n).read_bytes() for n in names), v.label
        assert together[v].name == alone[v].name  # the same key: a variant drawn alone later is a hit
    cache = ArtifactCache(tmp_path / "a")
    generate_together(qdq_artifacts.float, variants, prompts, key=key, cache=cache)
    assert cache.misses == [] and len(cache.hits) == 2
    with pytest.raises(ValueError, match="share components, seed base and EP"):
        generate_together(qdq_artifacts.float, [Variant("float", 1), Variant("qdq", 1)], prompts, key=key, cache=cache)


def test_prompts_drawn_in_several_processes_are_the_images_one_process_draws(qdq_artifacts, tmp_path) -> None:
    """The HTP simulator draws in one process per core (``draw_workers``): the same PNG bytes and model-call counts
    as one process, the prompts' seconds in prompt order; a process's error is raised in the caller."""
    from sdxl_qdq.cache import ArtifactCache
    from sdxl_qdq.models.prompts import load_prompts
    from sdxl_qdq.run.generate import Variant, draw_workers, generate_together

    prompts = load_prompts("test")[:5]
    variants = [Variant("float", 1), Variant("float", 2)]
    key = qdq_artifacts.image_key("float")
    timings = {}
    folders = {}
    for workers in (1, 2):
        timings[workers] = {}
        folders[workers] = generate_together(
            qdq_artifacts.float,
            variants,
            prompts,
            key=key,
            cache=ArtifactCache(tmp_path / str(workers)),
            timing=timings[workers],
            workers=workers,
        )
    for v in variants:
        names = sorted(p.name for p in folders[1][v].glob("*.png"))
        assert len(names) == 5 and names == sorted(p.name for p in folders[2][v].glob("*.png"))
        assert all((folders[1][v] / n).read_bytes() == (folders[2][v] / n).read_bytes() for n in names), v.label
    assert timings[2]["workers"] == 2 and timings[1]["workers"] == 1
    for workers in (1, 2):  # each process encodes the empty prompt (the text responses') once
        encoded = 5 + workers
        assert timings[workers]["executed"] == {
            "text_encoder": encoded,
            "text_encoder_2": encoded,
            "unet": 15,
            "vae_decoder": 10,
        }
    for v in variants:  # the text responses beside the images: the same bytes from either drawing
        responses = sorted(p.name for p in folders[1][v].glob("*.response.npy"))
        assert len(responses) == 5
        assert all((folders[1][v] / n).read_bytes() == (folders[2][v] / n).read_bytes() for n in responses)
    # each prompt's seconds, in prompt order (rounded to 10 ms: a tiny prompt can take 0.0)
    assert len(timings[2]["prompt_s"]) == 5 and all(s >= 0 for s in timings[2]["prompt_s"])
    assert sum(timings[2]["prompt_s"]) > 0
    broken = type(qdq_artifacts.float)(
        {**qdq_artifacts.float.models, "unet": tmp_path / "missing.onnx"}, qdq_artifacts.float.pipeline_dir
    )
    with pytest.raises(Exception, match=r"missing\.onnx"):
        generate_together(broken, variants, prompts, key={"broken": 1}, cache=ArtifactCache(tmp_path / "x"), workers=2)
    assert draw_workers("cpu", 100) == 1 and draw_workers("qnn", 1) == 1
