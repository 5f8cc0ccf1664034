"""Model sources: where the SDXL pipeline comes from.

- ``tiny`` (default): the real SDXL-turbo architecture at tiny width, built from inline configs with fixed
  seeds, saved once as a diffusers folder (safetensors) in the cache, with CLIP's real BPE tokenizer built
  offline from the vendored vocabulary.
- ``stabilityai/sdxl-turbo`` (any Hugging Face id) or a local diffusers folder: loaded from the local
  Hugging Face cache; when absent and downloads are not allowed, a ``ModelNotAvailableError`` says where
  it looked and how to get it.

New sources register in ``SOURCES`` (a name → factory); the rest of the project only uses the
``ModelSource`` interface.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxl_qdq.cache import ArtifactCache, content_digest, file_digest
from sdxl_qdq.errors import ConfigError, ModelNotAvailableError
from sdxl_qdq.models.canary import world
from sdxl_qdq.models.canary.model import TEXT_ENCODER, TEXT_ENCODER_2, UNET, VAE, WEIGHTS_DIR, pipeline_from_weights
from sdxl_qdq.models.prompts import PROMPTS_CANARY, PROMPTS_COCO
from sdxl_qdq.models.sdxl import (
    REAL_MODEL_ID,
    REAL_RANDOM_SEED,
    REAL_TEXT_ENCODER,
    REAL_TEXT_ENCODER_2,
    REAL_UNET,
    REAL_VAE,
    TINY_BUILD_VERSION,
    TINY_LATENT,
    TINY_SEED,
    TINY_TEXT_ENCODER,
    TINY_TEXT_ENCODER_2,
    TINY_UNET,
    TINY_VAE,
    TURBO_SCHEDULER,
    build_component_from_config,
    build_tiny_pipeline,
    build_tokenizers,
)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: a diffusers folder plus the fixed shapes its components are exported at.

    ``prompts`` is the JSONL prompt set of this model (50 train for calibration + 50 test); ``reference``
    optionally renders the model's own FID reference images for given prompt texts (offline models).
    """

    name: str
    fingerprint: dict[str, Any]
    latent_size: int
    vae_scale_factor: int
    materialize: Callable[[ArtifactCache], Path] = field(compare=False, repr=False)
    prompts: Path = PROMPTS_COCO
    prompt_set: str = ""  # '' for the model's own prompts; else the file's tag (``--prompts``): its own baseline
    reference: Callable[[list[str]], list[Any]] | None = field(default=None, compare=False, repr=False)
    # builds one component's torch module from the materialized folder; None: load its weights from there
    load_component: Callable[[Path, str], Any] | None = field(default=None, compare=False, repr=False)

    @property
    def image_size(self) -> int:
        return self.latent_size * self.vae_scale_factor


def _tiny_source() -> ModelSource:
    fingerprint = {
        "source": "tiny",
        "version": TINY_BUILD_VERSION,
        "seed": TINY_SEED,
        "configs": [TINY_TEXT_ENCODER, TINY_TEXT_ENCODER_2, TINY_UNET, TINY_VAE, TURBO_SCHEDULER],
    }

    def materialize(cache: ArtifactCache) -> Path:
        def build(out: Path) -> None:
            import torch

            torch.manual_seed(TINY_SEED)
            build_tiny_pipeline().save_pretrained(out / "pipeline", safe_serialization=True)

        return cache.get_or_build("source", fingerprint, build) / "pipeline"

    return ModelSource("tiny", fingerprint, TINY_LATENT, 8, materialize)


# ---------------------------------------------------------------------------------------- pretrained
PIPELINE_FOLDERS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae", "scheduler")


def _local_folder_source(path: Path) -> ModelSource:
    index = path / "model_index.json"
    if not index.is_file():
        raise ConfigError(
            f"--model {str(path)!r} is a folder without model_index.json; pass a diffusers SDXL folder "
            "(as saved by StableDiffusionXLPipeline.save_pretrained) or a Hugging Face id such as "
            f"{REAL_MODEL_ID!r}"
        )
    for sub in ("text_encoder", "text_encoder_2", "unet", "vae"):
        folder = path / sub
        pickled = (
            sorted(p.name for p in folder.glob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"})
            if folder.is_dir()
            else []
        )
        if pickled and not any(folder.glob("*.safetensors")):
            raise ConfigError(
                f"--model {str(path)!r}: {sub}/ holds only pickled weights ({', '.join(pickled[:2])}); "
                "this project loads "
                "safetensors only (pickle can run code): convert them, e.g. load the pipeline and save_pretrained(..., "
                "safe_serialization=True), or use a safetensors snapshot of the model"
            )
    # what the loader reads: the index and the pipeline's folders, not the fp16 variants, the single-file checkpoint
    # or the ONNX exports a hub repo also holds
    weights = sorted(
        p
        for p in [path / "model_index.json", *(q for sub in PIPELINE_FOLDERS for q in (path / sub).rglob("*"))]
        if p.is_file() and p.suffix in {".safetensors", ".json", ".txt"} and ".fp16." not in p.name
    )
    fingerprint = {
        "source": "local",
        # what the files hold, not where they are or when they were written: a key made here is a hit for the same
        # files in another folder or on another machine
        "files": [[p.relative_to(path).as_posix(), p.stat().st_size, content_digest(p)] for p in weights],
    }
    vae_cfg = json.loads((path / "vae" / "config.json").read_text()) if (path / "vae" / "config.json").is_file() else {}
    unet_cfg = (
        json.loads((path / "unet" / "config.json").read_text()) if (path / "unet" / "config.json").is_file() else {}
    )
    scale = 2 ** (len(vae_cfg.get("block_out_channels", (1, 2, 3, 4))) - 1)
    # sdxl-turbo is trained for 512×512 → 64×64 latents, whatever the UNet's sample_size says
    latent = 64 if unet_cfg.get("sample_size", 64) >= 64 else unet_cfg["sample_size"]
    return ModelSource(str(path), fingerprint, latent, scale, lambda cache: path)


def _hub_source(repo_id: str, *, allow_download: bool) -> ModelSource:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["model_index.json", "*/config.json", "*/*.json", "*/*.txt", "*/*.safetensors"]
    ignore = ["*.fp16.safetensors", "*.bin", "*.onnx*", "*.msgpack", "*.ckpt"]
    try:
        folder = snapshot_download(
            repo_id, allow_patterns=patterns, ignore_patterns=ignore, local_files_only=not allow_download
        )
    except (LocalEntryNotFoundError, OSError) as e:
        why = f"could not be downloaded ({type(e).__name__}: {e})" if allow_download else "downloads are off"
        raise ModelNotAvailableError(
            f"model {repo_id!r} is not in the local Hugging Face cache (looked in {constants.HF_HUB_CACHE}) and "
            f"{why}. Fix: on a machine with network, run "
            f"`hf download {repo_id} --exclude '*.bin' '*.fp16.safetensors'` (set HF_HOME to share the cache), "
            f"or pass --allow-download to fetch it now, or pass --model tiny for the embedded offline model."
        ) from None
    source = _local_folder_source(Path(folder))
    # the snapshot folder is named by its commit: the key holds repo id, revision and the files' digests, never the
    # snapshot's path or its files' modification times (a re-download on another machine is the same source)
    fingerprint = {**source.fingerprint, "source": "hub", "repo_id": repo_id, "revision": Path(folder).name}
    return ModelSource(repo_id, fingerprint, source.latent_size, source.vae_scale_factor, source.materialize)


def _real_random_source() -> ModelSource:
    configs = {
        "text_encoder": REAL_TEXT_ENCODER,
        "text_encoder_2": REAL_TEXT_ENCODER_2,
        "unet": REAL_UNET,
        "vae": REAL_VAE,
    }
    fingerprint = {
        "source": "sdxl-turbo:random",
        "version": 1,
        "seed": REAL_RANDOM_SEED,
        "configs": [configs, TURBO_SCHEDULER],
    }

    def materialize(cache: ArtifactCache) -> Path:
        def build(out: Path) -> None:
            folder = out / "pipeline"
            tok, tok_2 = build_tokenizers()
            tok.save_pretrained(folder / "tokenizer")
            tok_2.save_pretrained(folder / "tokenizer_2")
            for name, config in configs.items():
                (folder / name).mkdir(parents=True)
                (folder / name / "config.json").write_text(json.dumps(config, indent=1))
            (folder / "scheduler").mkdir()
            (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(TURBO_SCHEDULER, indent=1))

        return cache.get_or_build("source", fingerprint, build) / "pipeline"

    def load_component(folder: Path, component: str) -> Any:
        loaded = {name: json.loads((folder / name / "config.json").read_text()) for name in configs}
        return build_component_from_config(component, loaded, REAL_RANDOM_SEED)

    return ModelSource("sdxl-turbo:random", fingerprint, 64, 8, materialize, load_component=load_component)


# ------------------------------------------------------------------------------------------- canary
CANARY_VARIANTS = ("unet-noise5", "no-xattn")  # degraded UNets: the gate must fail them (gate power)


def _canary_source(variant: str | None = None) -> ModelSource:
    files = sorted(WEIGHTS_DIR.glob("*"))
    if not (WEIGHTS_DIR / "canary.json").is_file():
        raise ModelNotAvailableError(
            f"canary weights are missing from {WEIGHTS_DIR}; regenerate them with `sdxl-qdq canary-train`"
        )
    fingerprint = {
        "source": "canary",
        "variant": variant,
        "version": 1,
        "weights": {p.name: file_digest(p) for p in files},
        "configs": [TEXT_ENCODER, TEXT_ENCODER_2, UNET, VAE, TURBO_SCHEDULER],
    }

    def materialize(cache: ArtifactCache) -> Path:
        def build(out: Path) -> None:
            pipeline_from_weights(variant).save_pretrained(out / "pipeline", safe_serialization=True)

        return cache.get_or_build("source", fingerprint, build) / "pipeline"

    def reference(texts: list[str]) -> list[Any]:
        return [world.render(world.parse(t)) for t in texts]

    name = "canary" if variant is None else f"canary:{variant}"
    return ModelSource(name, fingerprint, 8, 8, materialize, prompts=PROMPTS_CANARY, reference=reference)


SOURCES: dict[str, Callable[[], ModelSource]] = {
    "tiny": _tiny_source,
    "sdxl-turbo:random": _real_random_source,
    "canary": _canary_source,
    **{f"canary:{v}": (lambda v=v: _canary_source(v)) for v in CANARY_VARIANTS},
}


def prompts_for(name: str) -> Path:
    """The prompt set of ``--model`` without loading it: a registered source's own, else the COCO prompts."""
    return SOURCES[name]().prompts if name in SOURCES else PROMPTS_COCO


def resolve_source(name: str, *, allow_download: bool = False) -> ModelSource:
    """Turn ``--model`` into a ``ModelSource``: a registered name, a local folder, or a Hugging Face id."""
    if name in SOURCES:
        return SOURCES[name]()
    if Path(name).expanduser().is_dir():
        return _local_folder_source(Path(name).expanduser())
    if name.count("/") == 1 and not name.startswith((".", "/")) and all(name.split("/")):
        if os.environ.get("HF_HUB_OFFLINE") == "1" and allow_download:
            raise ConfigError("--allow-download was given but HF_HUB_OFFLINE=1 forbids downloads; unset one of them")
        return _hub_source(name, allow_download=allow_download)
    raise ConfigError(
        f"--model {name!r} is neither a registered source ({', '.join(sorted(SOURCES))}), an existing folder, "
        f"nor a Hugging Face id of the form owner/name (e.g. {REAL_MODEL_ID!r})"
    )
