"""Stand-ins for what a user with the weights has: a diffusers folder laid out as the Hugging Face cache holds a
downloaded snapshot, so that the real loaders (``huggingface_hub.snapshot_download``, ``from_pretrained``) read it
offline exactly as they read the real one.

The cache layout (``huggingface_hub`` 1.x and later): ``<hub>/models--<owner>--<name>/blobs/<etag>`` holds each
file once, named by its digest; ``snapshots/<commit>/<path>`` are relative symlinks to the blobs; ``refs/main``
holds the commit. Used by the real-layout rehearsals and their tests; nothing here downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdxl_qdq.manifest import sha256


def repo_folder_name(repo_id: str, kind: str = "model") -> str:
    """``stabilityai/sdxl-turbo`` → ``models--stabilityai--sdxl-turbo`` (huggingface_hub's naming)."""
    return "--".join([f"{kind}s", *repo_id.split("/")])


def write_hub_snapshot(
    folder: Path,
    *,
    repo_id: str,
    hub_cache: Path,
    revision: str | None = None,
    extra: dict[str, Path] | None = None,
    move: bool = False,
) -> Path:
    """Lay out every file below ``folder`` (plus ``extra``: repo path → file) as the snapshot of ``repo_id`` in
    ``hub_cache``; return the snapshot folder. ``revision``: the commit id (default: a digest of the files, so the
    same files give the same revision). Files are copied into ``blobs/`` (named by sha256, as the hub names LFS
    files) and linked from the snapshot; where symlinks are not allowed they are copied, as huggingface_hub does."""
    files = {p.relative_to(folder).as_posix(): p for p in sorted(Path(folder).rglob("*")) if p.is_file()}
    files.update(extra or {})
    digests = {rel: sha256(p) for rel, p in files.items()}
    revision = revision or hashlib.sha1("".join(f"{r}\0{d}\n" for r, d in sorted(digests.items())).encode()).hexdigest()
    repo = Path(hub_cache) / repo_folder_name(repo_id)
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for rel, src in files.items():
        blob = repo / "blobs" / digests[rel]
        if not blob.exists():
            tmp = blob.with_name(blob.name + ".incomplete")
            shutil.move(src, tmp) if move else shutil.copyfile(src, tmp)
            tmp.replace(blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:
            shutil.copyfile(blob, link)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


# stabilityai/sdxl-turbo's model_index.json (the pipeline class and its components' classes)
SDXL_TURBO_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.24.0.dev0",
    "force_zeros_for_empty_prompt": True,
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def write_random_pipeline(
    out: Path,
    configs: dict[str, dict[str, Any]],
    *,
    seed: int,
    fp16_variants: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> Path:
    """A diffusers folder of sdxl-turbo's layout (its file names; ``fp16_variants``: also the ``*.fp16.safetensors``
    the hub holds beside each, which the loader must skip) with seeded random weights of ``configs``' sizes,
    one component in memory at a time (the real UNet is 10 GB in float32)."""
    import gc

    import torch

    from sdxl_qdq.models.sdxl import TURBO_SCHEDULER, build_component_from_config

    out = Path(out)
    write_clip_tokenizer(out / "tokenizer", pad="<|endoftext|>")
    write_clip_tokenizer(out / "tokenizer_2", pad="!")
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(TURBO_SCHEDULER, indent=1))
    (out / "model_index.json").write_text(json.dumps(SDXL_TURBO_INDEX, indent=1))
    for component in ("text_encoder", "text_encoder_2", "vae", "unet"):
        progress(f"stand-in {component}: seeded random weights")
        module = build_component_from_config(component, configs, seed)
        module.save_pretrained(out / component, safe_serialization=True)
        if fp16_variants:
            module.to(torch.float16).save_pretrained(out / component, safe_serialization=True, variant="fp16")
        del module
        gc.collect()
    return out


def write_clip_tokenizer(folder: Path, *, pad: str) -> Path:
    """A CLIP tokenizer folder as the hub's SDXL repos hold it (vocab.json, merges.txt, the two configs; no
    tokenizer.json), from the vendored BPE vocabulary."""
    from sdxl_qdq.components import TOKEN_LENGTH
    from sdxl_qdq.models.sdxl import clip_vocab_and_merges

    vocab, merges = clip_vocab_and_merges()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad,
        "unk_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                **special,
                "add_prefix_space": False,
                "clean_up_tokenization_spaces": True,
                "do_lower_case": True,
                "errors": "replace",
                "model_max_length": TOKEN_LENGTH,
                "tokenizer_class": "CLIPTokenizer",
            },
            indent=1,
        )
    )
    return folder


# openai/clip-vit-base-patch16's geometry (its config.json); ``width="small"`` keeps the layout and the 224×224
# preprocessing and shrinks the transformers, for tests and CI
CLIP_VIT_B16 = {
    "real": dict(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        projection_dim=512,
    ),
    "small": dict(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        projection_dim=64,
    ),
}


def write_clip_snapshot(
    hub_cache: Path, *, width: str = "real", seed: int = 0, repo_id: str = "openai/clip-vit-base-patch16"
) -> Path:
    """A stand-in for ``openai/clip-vit-base-patch16`` in ``hub_cache``: CLIPModel with ViT-B/16's architecture
    (patch 16, 224×224, 77 tokens) and seeded random weights, its preprocessor config and CLIP's tokenizer files, laid
    out as the hub snapshot the real loader reads."""
    import tempfile

    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    geometry = CLIP_VIT_B16[width]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", **geometry["text_config"]
        ),
        vision_config=dict(image_size=224, patch_size=16, hidden_act="quick_gelu", **geometry["vision_config"]),
        projection_dim=geometry["projection_dim"],
    )
    with tempfile.TemporaryDirectory(dir=hub_cache if Path(hub_cache).is_dir() else None) as tmp:
        folder = Path(tmp)
        torch.manual_seed(seed)
        CLIPModel(config).eval().save_pretrained(folder, safe_serialization=True)
        CLIPImageProcessorPil(  # openai's preprocessor_config.json: resize 224 (shortest edge), center crop 224
            size={"shortest_edge": 224},
            crop_size={"height": 224, "width": 224},
            do_center_crop=True,
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
        ).save_pretrained(folder)
        write_clip_tokenizer(folder, pad="<|endoftext|>")
        return write_hub_snapshot(folder, repo_id=repo_id, hub_cache=hub_cache)
