"""The shared SDXL vocabulary: sdxl-turbo's scheduler, CLIP's BPE tokenizers built offline, and the configs of
the tiny model and of the real architecture (stabilityai/sdxl-turbo's own values)."""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdxl_qdq.components import TOKEN_LENGTH
from sdxl_qdq.paths import DATA_DIR

BPE_VOCAB = DATA_DIR / "clip_bpe_simple_vocab_16e6.txt.gz"


REAL_MODEL_ID = "stabilityai/sdxl-turbo"


# The scheduler stabilityai/sdxl-turbo ships (scheduler/scheduler_config.json).
TURBO_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerAncestralDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "trained_betas": None,
}


def turbo_scheduler() -> Any:
    """A fresh EulerAncestralDiscreteScheduler configured as sdxl-turbo's."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler.from_config(
        {k: v for k, v in TURBO_SCHEDULER.items() if not k.startswith("_")}
    )


# --------------------------------------------------------------------------------------------- tiny
# Real SDXL-turbo values in comments; tiny keeps every block type, op type and wiring, shrinks widths.
TINY_SEED = 0


TINY_LATENT = 16


TINY_TEXT_ENCODER: dict[str, Any] = dict(  # CLIP ViT-L/14 text tower: 768 wide, 12 layers, quick_gelu
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=TOKEN_LENGTH,
    hidden_act="quick_gelu",
    projection_dim=32,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
    layer_norm_eps=1e-5,  # sic: the real configs' values
)


TINY_TEXT_ENCODER_2: dict[str, Any] = dict(  # OpenCLIP bigG text tower: 1280 wide, 32 layers, gelu, projection
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=TOKEN_LENGTH,
    hidden_act="gelu",
    projection_dim=64,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
    layer_norm_eps=1e-5,
)


TINY_UNET: dict[str, Any] = dict(  # real: (320, 640, 1280), heads (5, 10, 20), transformer layers (1, 2, 10)
    sample_size=TINY_LATENT,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 64, 64),
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    attention_head_dim=(2, 4, 4),
    transformer_layers_per_block=(1, 1, 2),
    use_linear_projection=True,
    cross_attention_dim=32 + 64,  # hidden sizes of both text encoders
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 64,  # 6 time ids × embed dim + pooled text_embeds
)


TINY_VAE: dict[str, Any] = dict(  # real: (128, 256, 512, 512), 32 groups, factor 8
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=4,
    block_out_channels=(8, 16, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=TINY_LATENT * 8,
    scaling_factor=0.13025,
    force_upcast=False,
)


TINY_BUILD_VERSION = 1  # bump when the builder changes what it writes


def clip_vocab_and_merges(path: Path = BPE_VOCAB) -> tuple[dict[str, int], list[tuple[str, ...]]]:
    """CLIP's vocabulary and merges, built exactly as OpenAI's ``simple_tokenizer`` builds them."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    # GPT-2 byte ↔ unicode table
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_chars = [chr(c) for c in cs]
    vocab = byte_chars + [v + "</w>" for v in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


@functools.lru_cache(maxsize=1)
def build_tokenizers() -> tuple[Any, Any]:
    """SDXL's two tokenizers (same BPE; the second pads with ``!``), offline; built once per process
    (treat them as read-only)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TOKEN_LENGTH)
    tok_2 = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=TOKEN_LENGTH)
    return tok, tok_2


def build_tiny_pipeline() -> Any:
    """The tiny SDXL pipeline, deterministic: every component is seeded before it is built."""
    import torch
    from diffusers import (
        AutoencoderKL,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def seeded(factory: Callable[[], Any], seed: int) -> Any:
        torch.manual_seed(seed)
        return factory().eval()

    tok, tok_2 = build_tokenizers()
    scheduler = turbo_scheduler()
    return StableDiffusionXLPipeline(
        text_encoder=seeded(lambda: CLIPTextModel(CLIPTextConfig(**TINY_TEXT_ENCODER)), TINY_SEED),
        text_encoder_2=seeded(
            lambda: CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT_ENCODER_2)), TINY_SEED + 1
        ),
        unet=seeded(lambda: UNet2DConditionModel(**TINY_UNET), TINY_SEED + 2),
        vae=seeded(lambda: AutoencoderKL(**TINY_VAE), TINY_SEED + 3),
        tokenizer=tok,
        tokenizer_2=tok_2,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


# ------------------------------------------------------------------------------- real size, random
# stabilityai/sdxl-turbo's own config values (its */config.json), for sizing machines without its weights:
# the real architecture with seeded random weights. Weights are never saved; each component is built from
# its config when it is exported, in its own process (the UNet alone is 2.57 B parameters).
REAL_TEXT_ENCODER: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=TOKEN_LENGTH,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
    layer_norm_eps=1e-5,
)


REAL_TEXT_ENCODER_2: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=TOKEN_LENGTH,
    hidden_act="gelu",
    projection_dim=1280,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
    layer_norm_eps=1e-5,
)


REAL_UNET: dict[str, Any] = dict(
    TINY_UNET,
    sample_size=64,
    block_out_channels=(320, 640, 1280),
    norm_num_groups=32,
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


REAL_VAE: dict[str, Any] = dict(
    TINY_VAE,
    layers_per_block=2,
    norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512),
    sample_size=1024,
    force_upcast=True,
)


REAL_RANDOM_SEED = 0


def build_component_from_config(component: str, configs: dict[str, dict[str, Any]], seed: int) -> Any:
    """One SDXL component from its config with ``torch.manual_seed(seed + index)`` (as the tiny builder)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    factories = {
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])),
        "unet": lambda: UNet2DConditionModel(**configs["unet"]),
        "vae": lambda: AutoencoderKL(**configs["vae"]),
    }
    torch.manual_seed(seed + list(factories).index(component))
    return factories[component]().eval()
