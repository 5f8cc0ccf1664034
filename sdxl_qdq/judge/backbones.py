"""Pluggable CLIP and FID backbones.

- Real: CLIP ViT-B/16 (``openai/clip-vit-base-patch16``, what the study used) from the local Hugging Face cache, its
  images preprocessed by ``CLIPImageProcessorPil`` (transformers 5 picks a torchvision processor or this one by what
  is installed, and the two differ; this one is chosen explicitly and recorded in every baseline); Inception-v3 (2048
  features, FID's network: ``sdxl_qdq.judge.inception``, torch-fidelity's weights file in torch hub's cache) through
  torchmetrics' FID. Both need nothing but torch; ``--allow-download`` fetches what is missing.
- Canary: the scorer trained with the ``canary`` model in its synthetic world (sdxl_qdq.models.canary): its image and
  text towers give a CLIP score that means "shows the caption", its image tower FID features. ``auto``
  picks it for the canary model.
- Proxy: seeded embedded networks, so the gate runs offline. A proxy number says nothing about semantics
  (the weights are random); it is a stable, deterministic function of the images, comparable only with
  numbers of the same proxy. Every metric records its backbone's name, and a baseline of one backbone
  never gates another.

``Backbones`` are resolved by name: ``auto`` picks the real one when available, else the proxy, and says why.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdxl_qdq.errors import ConfigError, ModelNotAvailableError
from sdxl_qdq.models.canary.model import load_models, scorer_token_ids
from sdxl_qdq.models.sdxl import build_tokenizers

REAL_CLIP = "openai/clip-vit-base-patch16"
PROXY_CLIP = "proxy-clip-s0-v1"
CANARY_CLIP = "canary-scorer-v1"
REAL_FID = "inception-v3-2048"
PROXY_FID = "proxy-conv64-s0-v2"
CANARY_FID = "canary-image-tower-v1"
CLIP_CHOICES = ("auto", REAL_CLIP, PROXY_CLIP, CANARY_CLIP)
FID_CHOICES = ("auto", REAL_FID, PROXY_FID, CANARY_FID)
# the real CLIP's files (what `hf download` fetches, what the loader reads)
REAL_CLIP_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
)
# the real CLIP's image preprocessing, chosen explicitly (not by whether torchvision is installed) and recorded
REAL_CLIP_PREPROCESSING = "CLIPImageProcessorPil"


@dataclass(frozen=True)
class Backbones:
    clip: str
    fid: str
    why: tuple[str, ...] = field(default=(), compare=False)  # how ``auto`` chose, one line per backbone

    @property
    def name(self) -> str:
        """A file-name-safe id of the pair, used to file baselines."""
        return f"{self.clip.replace('/', '--')}__{self.fid}"

    def record(self) -> dict[str, str]:
        """What baselines and summaries record of the pair: the names and, for the real CLIP, the image
        preprocessing that makes its numbers (two setups' numbers with different ones never count as one)."""
        out = {"clip": self.clip, "fid": self.fid}
        if self.clip == REAL_CLIP:
            out["clip_preprocessing"] = REAL_CLIP_PREPROCESSING
        return out


def real_clip_available() -> bool:
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(REAL_CLIP, f), str) for f in ("config.json", "model.safetensors"))


def real_fid_available() -> bool:
    from sdxl_qdq.judge.inception import weights_path

    return weights_path().is_file()


def _fetch_clip() -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(REAL_CLIP, allow_patterns=list(REAL_CLIP_FILES))


def _fetch_fid() -> None:
    from sdxl_qdq.judge.inception import download_weights

    download_weights()


def _clip_where() -> str:
    from huggingface_hub import constants

    return f"the Hugging Face cache ({constants.HF_HUB_CACHE})"


def _fid_where() -> str:
    from sdxl_qdq.judge.inception import weights_path

    return f"torch hub's cache ({weights_path()})"


_REAL = {  # real backbone -> (proxy, available, fetch, where its weights are looked for, how to get them)
    REAL_CLIP: (
        PROXY_CLIP,
        real_clip_available,
        _fetch_clip,
        _clip_where,
        f"`hf download {REAL_CLIP} {' '.join(REAL_CLIP_FILES)}` on a machine with network",
    ),
    REAL_FID: (
        PROXY_FID,
        real_fid_available,
        _fetch_fid,
        _fid_where,
        "torch-fidelity's weights-inception-2015-12-05-6726825d.pth from its v0.2.0 release, into that folder",
    ),
}


def _pick(choice: str, real: str, *, allow_download: bool, option: str) -> tuple[str, str]:
    """(backbone, why): ``auto`` gives the real backbone when its weights are here (fetched first when downloads are
    allowed), else the proxy; the real one asked for and missing is an error naming where it looked and the fix."""
    proxy, available, fetch, where, how = _REAL[real]
    if choice not in ("auto", real):
        return choice, f"{choice}: asked for ({option} {choice})"
    if available():
        return real, f"{real}: its weights are in {where()}"
    failure = "downloads are off (--allow-download fetches them)"
    if allow_download:
        try:
            fetch()
        except Exception as e:
            failure = f"fetching them failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        else:
            if available():
                return real, f"{real}: fetched into {where()}"
    if choice == real:
        raise ModelNotAvailableError(
            f"{option} {real}: its weights are not in {where()} and {failure}; get them with "
            f"{how}, or use {option} {proxy}"
        )
    return proxy, f"{proxy}: {real}'s weights are not in {where()} and {failure}"


def resolve_backbones(
    clip: str = "auto", fid: str = "auto", *, model: str = "", allow_download: bool = False
) -> Backbones:
    """Names → Backbones; ``auto`` picks the canary scorer for the canary, else the real backbone when its weights
    are here (``allow_download``: fetched when missing), else the proxy; ``Backbones.why`` says which and why."""
    if clip not in CLIP_CHOICES:
        raise ConfigError(f"CLIP backbone {clip!r} is not one of {CLIP_CHOICES}")
    if fid not in FID_CHOICES:
        raise ConfigError(f"FID backbone {fid!r} is not one of {FID_CHOICES}")
    if model.split(":")[0] == "canary":
        clip, fid = (CANARY_CLIP if clip == "auto" else clip), (CANARY_FID if fid == "auto" else fid)
    clip, clip_why = _pick(clip, REAL_CLIP, allow_download=allow_download, option="--clip-backbone")
    fid, fid_why = _pick(fid, REAL_FID, allow_download=allow_download, option="--fid-backbone")
    return Backbones(clip, fid, why=(f"CLIP {clip_why}", f"FID {fid_why}"))


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
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    if name == CANARY_CLIP:
        return _CanaryModel(canary_scorer()), _CanaryProcessor()
    if name == REAL_CLIP:
        model = CLIPModel.from_pretrained(REAL_CLIP, local_files_only=True, use_safetensors=True)
        processor = CLIPProcessor(  # REAL_CLIP_PREPROCESSING, whatever else is installed
            image_processor=CLIPImageProcessorPil.from_pretrained(REAL_CLIP, local_files_only=True),
            tokenizer=CLIPTokenizer.from_pretrained(REAL_CLIP, local_files_only=True),
        )
        return model.eval(), processor
    if name != PROXY_CLIP:
        raise ConfigError(f"CLIP backbone {name!r} is not one of {CLIP_CHOICES[1:]}")

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
        ),
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
        torch.nn.Conv2d(3, 32, 4, stride=2, padding=1),
        torch.nn.GELU(),
        torch.nn.Conv2d(32, 32, 4, stride=2, padding=1),
        torch.nn.GELU(),
        torch.nn.Conv2d(32, 16, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
    )


def _fid_metric(backbone: str, **kwargs: Any) -> Any:
    from torchmetrics.image.fid import FrechetInceptionDistance

    if backbone == REAL_FID:
        return FrechetInceptionDistance(feature=_real_inception(), **kwargs)
    if backbone == CANARY_FID:
        return FrechetInceptionDistance(feature=feature_net(canary_scorer().image), **kwargs)
    if backbone == PROXY_FID:
        return FrechetInceptionDistance(feature=feature_net(proxy_features_body()), **kwargs)
    raise ConfigError(f"FID backbone {backbone!r} is not one of {FID_CHOICES[1:]}")


@functools.lru_cache(maxsize=1)
def _real_inception() -> Any:
    from sdxl_qdq.judge.inception import FidInceptionV3

    return FidInceptionV3()


def _batch(images: list[Any]) -> Any:
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def fid(generated: list[Any], reference: list[Any], backbone: str) -> float:
    """FID (torchmetrics) between two sets of uint8 H×W×3 images, with features from ``backbone``."""
    return fids({"generated": generated}, reference, backbone)["generated"]


def fids(sets: dict[str, list[Any]], reference: list[Any], backbone: str) -> dict[str, float]:
    """``fid`` of each set against the same ``reference``, from ``fid_features`` (each set's features extracted once
    per process, and shared with KID and the A/B's intervals) and torchmetrics' Fréchet distance: torchmetrics'
    ``FrechetInceptionDistance`` to 1e-13 (canary and tiny, measured)."""
    ref = fid_features(reference, backbone)
    return {label: fid_from_features(fid_features(images, backbone), ref) for label, images in sets.items()}


_EMBEDDINGS: dict[tuple[str, str, str], np.ndarray] = {}  # (what, backbone, images' digest) → rows, this process
_EMBEDDINGS_KEPT = 24


def _images_digest(images: list[Any]) -> str:
    import hashlib

    h = hashlib.sha256()
    for image in images:
        a = np.ascontiguousarray(image)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _remembered(what: str, backbone: str, images: list[Any], compute: Any) -> np.ndarray:
    """``compute()`` of ``images`` once per process (read-only rows; the oldest forgotten past 24 sets)."""
    key = (what, backbone, _images_digest(images))
    if key not in _EMBEDDINGS:
        rows = compute()
        rows.flags.writeable = False
        _EMBEDDINGS[key] = rows
        while len(_EMBEDDINGS) > _EMBEDDINGS_KEPT:
            _EMBEDDINGS.pop(next(iter(_EMBEDDINGS)))
    return _EMBEDDINGS[key]


def remember(what: str, backbone: str, images: list[Any], rows: np.ndarray) -> None:
    """Hand rows computed elsewhere (a shard's records: ``what`` "fid" or "clip") to the per-process memory, so
    ``fid_features`` / ``clip_image_embeddings`` of the same images return them without running the backbone."""
    if len(rows) != len(images):
        raise ValueError(f"{len(rows)} rows for {len(images)} images")
    rows = np.array(rows, dtype=np.float64)
    _remembered(what, backbone, images, lambda: rows)


def fid_features(images: list[Any], backbone: str) -> np.ndarray:
    """The features FID compares, one row per image (float64; extracted once per process for the same images)."""
    import torch

    def compute() -> np.ndarray:
        with torch.inference_mode():
            return _fid_metric(backbone).inception(_batch(images)).double().numpy()

    return _remembered("fid", backbone, images, compute)


def fid_from_features(generated: np.ndarray, reference: np.ndarray) -> float:
    """FID of two feature sets, computed as torchmetrics computes it (its Fréchet distance of the two Gaussians)."""
    import torch
    from torchmetrics.image.fid import _compute_fid

    def moments(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.tensor(np.asarray(x, dtype=np.float64))  # a copy: the remembered rows are read-only
        mean = t.mean(dim=0)
        return mean.unsqueeze(0), (t.T @ t - t.shape[0] * mean.unsqueeze(1) @ mean.unsqueeze(0)) / (t.shape[0] - 1)

    (mu1, s1), (mu2, s2) = moments(reference), moments(generated)
    return float(_compute_fid(mu1.squeeze(0), s1, mu2.squeeze(0), s2))


def clip_image_embeddings(images: list[Any], backbone: str, *, batch: int = 25) -> np.ndarray:
    """The CLIP backbone's image embeddings of uint8 H×W×3 ``images``, L2-normalized, one row per image (float64),
    through the same model and preprocessing as ``clip_scores`` (once per process for the same images)."""
    import torch

    def compute() -> np.ndarray:
        model, processor = clip_model_and_processor(backbone)
        rows = []
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                chunk = [
                    torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1) for i in images[start : start + batch]
                ]
                pixels = processor(images=chunk, return_tensors="pt")["pixel_values"]
                embedded = model.get_image_features(pixel_values=pixels).double()
                rows.append(torch.nn.functional.normalize(embedded, dim=-1))
        return torch.cat(rows).numpy()

    return _remembered("clip", backbone, images, compute)
