"""Pluggable CLIP and FID backbones.

- Real: CLIP ViT-B/16 (``openai/clip-vit-base-patch16``, what the study used) when its weights are in the
  local Hugging Face cache; Inception-v3 (2048 features, torchmetrics/torch-fidelity) when torch-fidelity
  is installed (extra ``real-backbones``) and its weights are in the torch hub cache.
- Canary: the scorer trained with the ``canary`` model in its synthetic world (quant.models.canary): its image and
  text towers give a CLIP score that means "shows the caption", its image tower FID features. ``auto``
  picks it for the canary model.
- Proxy: seeded embedded networks, so the gate runs offline. A proxy number says nothing about semantics
  (the weights are random); it is a stable, deterministic function of the images, comparable only with
  numbers of the same proxy. Every metric records its backbone's name, and a baseline of one backbone
  never gates another.

``Backbones`` are resolved by name: ``auto`` picks the real one when available, else the proxy.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quant.errors import ConfigError, ModelNotAvailableError
from quant.models.canary.model import load_models, scorer_token_ids
from quant.models.sdxl import build_tokenizers

REAL_CLIP = "openai/clip-vit-base-patch16"
PROXY_CLIP = "proxy-clip-s0-v1"
CANARY_CLIP = "canary-scorer-v1"
REAL_FID = "inception-v3-2048"
PROXY_FID = "proxy-conv64-s0-v2"
CANARY_FID = "canary-image-tower-v1"
CLIP_CHOICES = ("auto", REAL_CLIP, PROXY_CLIP, CANARY_CLIP)
FID_CHOICES = ("auto", REAL_FID, PROXY_FID, CANARY_FID)
INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"


@dataclass(frozen=True)
class Backbones:
    clip: str
    fid: str

    @property
    def name(self) -> str:
        """A file-name-safe id of the pair, used to file baselines."""
        return f"{self.clip.replace('/', '--')}__{self.fid}"


def real_clip_available() -> bool:
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(REAL_CLIP, f), str) for f in ("config.json", "model.safetensors"))


def real_fid_available() -> bool:
    import torch

    if importlib.util.find_spec("torch_fidelity") is None:
        return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS).is_file()


def _pick(choice: str, real: str, proxy: str, available: Callable[[], bool], missing: str) -> str:
    """``auto``: the real backbone when it is available, else the proxy; the real one asked for and missing: an error."""
    if choice == "auto":
        return real if available() else proxy
    if choice == real and not available():
        raise ModelNotAvailableError(missing)
    return choice


def resolve_backbones(clip: str = "auto", fid: str = "auto", *, model: str = "") -> Backbones:
    """Names → Backbones; ``auto`` picks the canary scorer for the canary, else the real backbone when its
    weights are here, else the proxy."""
    if clip not in CLIP_CHOICES:
        raise ConfigError(f"CLIP backbone {clip!r} is not one of {CLIP_CHOICES}")
    if fid not in FID_CHOICES:
        raise ConfigError(f"FID backbone {fid!r} is not one of {FID_CHOICES}")
    canary = model.split(":")[0] == "canary"
    clip = CANARY_CLIP if (clip == "auto" and canary) else clip
    fid = CANARY_FID if (fid == "auto" and canary) else fid
    clip = _pick(clip, REAL_CLIP, PROXY_CLIP, real_clip_available, (
        f"CLIP backbone {REAL_CLIP!r} is not in the local Hugging Face cache; on a machine with network run "
        f"`hf download {REAL_CLIP} config.json model.safetensors preprocessor_config.json tokenizer.json "
        f"tokenizer_config.json vocab.json merges.txt special_tokens_map.json`, or use --clip-backbone {PROXY_CLIP}"))
    fid = _pick(fid, REAL_FID, PROXY_FID, real_fid_available, (
        f"FID backbone {REAL_FID!r} needs torch-fidelity (pip install '.[real-backbones]' with a torch + "
        f"torchvision pair) and {INCEPTION_WEIGHTS} in the torch hub cache; or use --fid-backbone {PROXY_FID}"))
    return Backbones(clip, fid)


# ------------------------------------------------------------------------------------------------- CLIP
class _FeatureTensors:
    """transformers 5 returns model outputs from ``get_*_features`` where torchmetrics 1.9 expects tensors;
    this adapter hands torchmetrics the projected embeddings (``pooler_output``) it expects."""

    def __init__(self, model: Any) -> None:
        self.model, self.config = model, model.config

    def to(self, device: Any) -> _FeatureTensors:
        self.model.to(device)
        return self

    def get_image_features(self, *args: Any, **kwargs: Any) -> Any:
        return _tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> Any:
        return _tensor(self.model.get_text_features(*args, **kwargs))


def _tensor(output: Any) -> Any:
    return getattr(output, "pooler_output", output)


def clip_model_and_processor(name: str) -> tuple[Any, Any]:
    """(model, processor) in the form torchmetrics' ``clip_score`` takes from a callable."""
    model, processor = _clip_model_and_processor(name)
    return (model if name == CANARY_CLIP else _FeatureTensors(model)), processor


class _CanaryProcessor:
    """CLIPProcessor's calling convention over the canary scorer's inputs."""

    def __call__(self, *, images: Any = None, text: Any = None, **_: Any) -> dict[str, Any]:
        import torch


        if images is not None:
            x = torch.stack([torch.as_tensor(i) for i in images]).float()
            x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
            return {"pixel_values": x / 127.5 - 1.0}
        ids = scorer_token_ids(list(text))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class _CanaryModel:
    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.config = None

    def to(self, device: Any) -> _CanaryModel:
        return self

    def get_image_features(self, pixel_values: Any) -> Any:
        return self.scorer.image_features(pixel_values)

    def get_text_features(self, input_ids: Any, attention_mask: Any = None) -> Any:
        return self.scorer.text_features(input_ids)


@functools.lru_cache(maxsize=1)
def canary_scorer() -> Any:
    return load_models(names=("scorer",))[0]["scorer"]


@functools.lru_cache(maxsize=2)
def _clip_model_and_processor(name: str) -> tuple[Any, Any]:
    """(CLIPModel, CLIPProcessor) for torchmetrics' ``clip_score``; built once per process."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    if name == CANARY_CLIP:
        return _CanaryModel(canary_scorer()), _CanaryProcessor()
    if name == REAL_CLIP:
        model = CLIPModel.from_pretrained(REAL_CLIP, local_files_only=True, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(REAL_CLIP, local_files_only=True)
        return model.eval(), processor
    if name != PROXY_CLIP:
        raise ConfigError(f"CLIP backbone {name!r} is not one of {CLIP_CHOICES[1:]}")

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=8),
        projection_dim=64,
    )
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=build_tokenizers()[0])


def clip_scores(images: list[Any], prompts: list[str], backbone: str) -> list[float]:
    """Per-image CLIP score (torchmetrics: 100 · max(cos, 0)) of uint8 H×W×3 ``images`` against ``prompts``."""
    import torch
    from torchmetrics.functional.multimodal import clip_score

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    factory = functools.partial(clip_model_and_processor, backbone)
    with torch.inference_mode():
        return [
            float(clip_score(torch.from_numpy(img).permute(2, 0, 1), text, model_name_or_path=factory))
            for img, text in zip(images, prompts)
        ]


# -------------------------------------------------------------------------------------------------- FID
def feature_net(body: Any) -> Any:
    """A torchmetrics FID feature extractor: uint8 N×3×H×W → [-1, 1] at 64×64 → ``body`` → 64 float64 features."""
    import torch

    class Net(torch.nn.Module):
        num_features = 64

        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.float() / 127.5 - 1.0
            x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
            return self.body(x).double()

    return Net().eval()


def proxy_features_body() -> Any:
    """Seeded random convolutions: 16 channels × 2×2 cells (colour and layout)."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 4, stride=2, padding=1), torch.nn.GELU(),
        torch.nn.Conv2d(32, 32, 4, stride=2, padding=1), torch.nn.GELU(),
        torch.nn.Conv2d(32, 16, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
    )


def _fid_metric(backbone: str) -> Any:
    from torchmetrics.image.fid import FrechetInceptionDistance

    if backbone == REAL_FID:
        return FrechetInceptionDistance(feature=2048)
    if backbone == CANARY_FID:
        return FrechetInceptionDistance(feature=feature_net(canary_scorer().image))
    if backbone == PROXY_FID:
        return FrechetInceptionDistance(feature=feature_net(proxy_features_body()))
    raise ConfigError(f"FID backbone {backbone!r} is not one of {FID_CHOICES[1:]}")


def _batch(images: list[Any]) -> Any:
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def fid(generated: list[Any], reference: list[Any], backbone: str) -> float:
    """FID (torchmetrics) between two sets of uint8 H×W×3 images, with features from ``backbone``."""
    import torch

    metric = _fid_metric(backbone)
    with torch.inference_mode():
        metric.update(_batch(reference), real=True)
        metric.update(_batch(generated), real=False)
        return float(metric.compute())


def fid_features(images: list[Any], backbone: str) -> np.ndarray:
    """The features FID compares, one row per image (float64): for resampling a set without re-extracting."""
    import torch

    with torch.inference_mode():
        return _fid_metric(backbone).inception(_batch(images)).double().numpy()


def fid_from_features(generated: np.ndarray, reference: np.ndarray) -> float:
    """FID of two feature sets, computed as torchmetrics computes it (its Fréchet distance of the two Gaussians)."""
    import torch
    from torchmetrics.image.fid import _compute_fid

    def moments(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(x)
        mean = t.mean(dim=0)
        return mean.unsqueeze(0), (t.T @ t - t.shape[0] * mean.unsqueeze(1) @ mean.unsqueeze(0)) / (t.shape[0] - 1)

    (mu1, s1), (mu2, s2) = moments(reference), moments(generated)
    return float(_compute_fid(mu1.squeeze(0), s1, mu2.squeeze(0), s2))
