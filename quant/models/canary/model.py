"""The ``canary``: an SDXL-architecture pipeline trained in the synthetic world (quant.world), plus a scorer.

Regenerate the committed weights (≤ 20 min on 2 cores, seeded, 2 threads)::

    python -m quant.canary train --out quant/data/canary

Stages: (1) the VAE on random shape scenes; (2) both text encoders and the UNet together, at the
timesteps sdxl-turbo's trailing sampler visits (999 for 1 step, 999 and 499 for 2), with an x0 loss so
that one Euler step draws the caption; (3) the scorer, a CLIP-like image tower and text tower trained
contrastively, used offline as the CLIP-score backbone (100·max(cos, 0)) and, by its image tower, as
the FID feature extractor. Weights are stored in fp16 safetensors; the 49408-row token embeddings keep
only the rows of the world's tokens (the others are zero).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from quant.models.canary import world
from quant.paths import DATA_DIR

WEIGHTS_DIR = DATA_DIR / "canary"
SEED = 0
THREADS = 2
LATENT = 8
STEPS = {"vae": 600, "unet": 3000, "scorer": 1000}
TRAIN_TIMESTEPS = (999, 499)
TEXT_ENCODER = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32, bos_token_id=0,
                    eos_token_id=2, pad_token_id=1, layer_norm_eps=1e-5)
TEXT_ENCODER_2 = {**TEXT_ENCODER, "hidden_act": "gelu"}
UNET = dict(sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
            norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn", attention_head_dim=(2, 4, 4), transformer_layers_per_block=(1, 1, 1),
            use_linear_projection=True, cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
           block_out_channels=(16, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, force_upcast=False)


def _seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)


def _to_tensor(images: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def random_scenes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random shapes, colours and positions (not only the captioned layouts): VAE training data."""
    images = np.empty((n, world.SIZE, world.SIZE, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = world.BACKGROUND
        for _ in range(rng.integers(1, 3)):
            centre = tuple(int(v) for v in rng.integers(12, 52, size=2))
            colour = list(world.COLOURS)[rng.integers(len(world.COLOURS))]
            shape = world.SHAPES[rng.integers(len(world.SHAPES))]
            images[i][world._shape_mask(shape, centre)] = world.COLOURS[colour]
    return images


# ---------------------------------------------------------------------------------------------- models
def build_models() -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    _seed_everything(SEED)
    return {
        "vae": AutoencoderKL(**VAE),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_ENCODER_2)),
        "unet": UNet2DConditionModel(**UNET),
        "scorer": Scorer(),
    }


def _scorer_class() -> type:
    import torch

    class _Scorer(torch.nn.Module):
        """Image tower (small CNN) and text tower (token embeddings, mean-pooled, MLP) into one 64-d space."""

        dim = 64

        def __init__(self) -> None:
            super().__init__()
            nn = torch.nn
            self.image = nn.Sequential(
                nn.Conv2d(3, 32, 4, 2, 1), nn.GELU(), nn.Conv2d(32, 64, 4, 2, 1), nn.GELU(),
                nn.Conv2d(64, 64, 4, 2, 1), nn.GELU(), nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.GELU(), nn.Linear(128, self.dim),
            )
            self.token = nn.Embedding(49408, 64)
            self.text = nn.Sequential(nn.Linear(64 * 4, 128), nn.GELU(), nn.Linear(128, self.dim))

        def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
            """``pixels``: N×3×64×64 in [-1, 1]."""
            return self.image(pixels)

        def text_features(self, ids: torch.Tensor) -> torch.Tensor:
            """``ids``: N×4 token ids (words 2–5 of a caption after <|startoftext|>, padded)."""
            return self.text(self.token(ids).flatten(1))

    return _Scorer


def Scorer() -> Any:  # noqa: N802 - a factory that reads like a class
    return _scorer_class()()


def scorer_token_ids(captions: list[str]) -> Any:
    """The words that carry meaning (count/article, colour, shape, layout) as CLIP token ids, N×4."""
    import torch

    from quant.models.source import build_tokenizers

    tok = build_tokenizers()[0]
    rows = []
    for caption in captions:
        words = caption.lower().replace(" on the ", " ").replace(" in the ", " ").split()
        ids = [tok.convert_tokens_to_ids(w + "</w>") for w in words][:4]
        rows.append(ids + [0] * (4 - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


# ---------------------------------------------------------------------------------------------- stages
Log = Callable[[str, int, float], None]


def train_vae(vae: Any, steps: int, log: Log) -> float:
    """Train the VAE; return the latent scaling factor (1 / std of the posterior means)."""
    import torch

    rng = np.random.default_rng(SEED)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    vae.train()
    for step in range(steps):
        x = _to_tensor(random_scenes(rng, 16))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=None)).sample
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        log("vae", step, loss.item())
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(_to_tensor(random_scenes(rng, 256))).latent_dist.mean
    return float(1.0 / latents.std())


def encode_prompts(models: dict[str, Any], tokenizers: tuple[Any, Any], captions: list[str]) -> tuple[Any, Any]:
    """SDXL's conditioning: penultimate hidden states of both encoders (concatenated) and te2's text_embeds."""
    import torch

    def ids(tok: Any) -> torch.Tensor:
        return tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids

    h1 = models["text_encoder"](ids(tokenizers[0]), output_hidden_states=True).hidden_states[-2]
    out2 = models["text_encoder_2"](ids(tokenizers[1]), output_hidden_states=True)
    return torch.cat([h1, out2.hidden_states[-2]], dim=-1), out2.text_embeds


def train_unet(models: dict[str, Any], tokenizers: tuple[Any, Any], scaling: float, steps: int, log: Log) -> None:
    """Text encoders and UNet together, x0 loss at t ∈ {999, 499} (sdxl-turbo's 1- and 2-step timesteps)."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler

    from quant.models.source import TURBO_SCHEDULER

    scheduler = EulerAncestralDiscreteScheduler.from_config({k: v for k, v in TURBO_SCHEDULER.items() if k[0] != "_"})
    alphas = scheduler.alphas_cumprod
    scenes = [s for s in world.all_scenes() if not s.held_out]
    with torch.no_grad():
        latents = models["vae"].encode(_to_tensor(np.stack([world.render(s) for s in scenes]))).latent_dist.mean * scaling
    params = [p for name in ("text_encoder", "text_encoder_2", "unet") for p in models[name].parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    # the schedule always spans the full run, so a shortened run reproduces the full run's first steps
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, STEPS["unet"]))
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
    gen = torch.Generator().manual_seed(SEED)
    for name in ("text_encoder", "text_encoder_2", "unet"):
        models[name].train()
    for step in range(steps):
        idx = torch.randint(0, len(scenes), (32,), generator=gen)
        t = torch.tensor(TRAIN_TIMESTEPS)[torch.randint(0, 2, (32,), generator=gen)]
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        hidden, pooled = encode_prompts(models, tokenizers, [scenes[i].caption for i in idx])
        eps = models["unet"](xt, t.float(), hidden, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.expand(32, 6)}).sample
        x0_hat = (xt - (1 - a).sqrt() * eps) / a.sqrt()
        loss = torch.nn.functional.mse_loss(x0_hat, x0)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        log("unet", step, loss.item())
    for name in ("text_encoder", "text_encoder_2", "unet"):
        models[name].eval()


def _augment(images: Any, gen: Any) -> Any:
    """What generated images get wrong: blur, noise, colour shifts."""
    import torch

    x = images
    if torch.rand((), generator=gen) < 0.5:
        x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    x = x + 0.15 * torch.rand((), generator=gen) * torch.randn(x.shape, generator=gen)
    x = x + 0.1 * (torch.rand((x.shape[0], 3, 1, 1), generator=gen) - 0.5)
    return x.clamp(-1, 1)


def train_scorer(scorer: Any, steps: int, log: Log) -> None:
    import torch

    scenes = world.all_scenes()
    images = _to_tensor(np.stack([world.render(s) for s in scenes]))
    ids = scorer_token_ids([s.caption for s in scenes])
    opt = torch.optim.Adam(scorer.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(SEED)
    scorer.train()
    for step in range(steps):
        idx = torch.randperm(len(scenes), generator=gen)[:64]
        img = torch.nn.functional.normalize(scorer.image_features(_augment(images[idx], gen)), dim=-1)
        txt = torch.nn.functional.normalize(scorer.text_features(ids[idx]), dim=-1)
        cos = img @ txt.T
        labels = torch.arange(len(idx))
        nce = (torch.nn.functional.cross_entropy(cos / 0.05, labels) + torch.nn.functional.cross_entropy(cos.T / 0.05, labels)) / 2
        off = cos[~torch.eye(len(idx), dtype=torch.bool)]
        # push matched pairs to cos 1 and mismatched ones to cos ≤ 0, so 100·max(cos, 0) reads as a score
        loss = nce + (1 - cos.diag()).mean() + torch.relu(off).pow(2).mean() * 4
        opt.zero_grad()
        loss.backward()
        opt.step()
        log("scorer", step, loss.item())
    scorer.eval()


# ---------------------------------------------------------------------------------------------- save/load
def used_token_ids() -> list[int]:
    from quant.models.source import build_tokenizers

    tok, tok_2 = build_tokenizers()
    captions = [s.caption for s in world.all_scenes()]
    ids: set[int] = set()
    for t in (tok, tok_2):
        for row in t(captions, padding="max_length", max_length=77).input_ids:
            ids.update(row)
    return sorted(ids)


def save(models: dict[str, Any], scaling: float, out: Path, log_rows: dict[str, list[float]], seconds: float) -> None:
    """fp16 safetensors; token-embedding tables keep only the rows of ``used_token_ids``."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    keep = torch.tensor(used_token_ids())
    for name, model in models.items():
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if name == "vae":
            state = {k: v for k, v in state.items() if not k.startswith(("encoder.", "quant_conv."))}
        for k in [k for k in state if k.endswith("token_embedding.weight") or k == "token.weight"]:
            state[k] = state[k][keep]
        save_file({k: v.half().contiguous() for k, v in state.items()}, str(out / f"{name}.safetensors"))
    meta = {"scaling_factor": scaling, "token_ids": keep.tolist(), "steps": STEPS, "seed": SEED, "threads": THREADS,
            "train_seconds": round(seconds, 1), "first_losses": {k: v[:5] for k, v in log_rows.items()},
            "last_losses": {k: v[-5:] for k, v in log_rows.items()}}
    (out / "canary.json").write_text(json.dumps(meta, indent=1))


def load_models(folder: Path = WEIGHTS_DIR, names: tuple[str, ...] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trained models (float32) from the committed weights (all, or only ``names``), and their metadata."""
    import torch
    from safetensors.torch import load_file

    meta = json.loads((folder / "canary.json").read_text())
    models = {k: v for k, v in build_models().items() if names is None or k in names}
    keep = torch.tensor(meta["token_ids"])
    for name, model in models.items():
        state = {k: v.float() for k, v in load_file(str(folder / f"{name}.safetensors")).items()}
        for k in [k for k in state if k.endswith("token_embedding.weight") or k == "token.weight"]:
            full = torch.zeros_like(model.state_dict()[k])
            full[keep] = state[k]
            state[k] = full
        strict = name != "vae"  # the encoder is not stored: the pipeline only decodes
        missing, unexpected = model.load_state_dict(state, strict=strict)
        if unexpected or (not strict and any(not m.startswith(("encoder.", "quant_conv.")) for m in missing)):
            raise ValueError(f"canary {name}: missing {missing}, unexpected {unexpected}")
        model.eval()
    return models, meta


def pipeline_from_weights(variant: str | None = None, folder: Path = WEIGHTS_DIR) -> Any:
    """The canary as a StableDiffusionXLPipeline; ``variant`` degrades its UNet for gate-power tests:
    ``unet-noise5`` adds Gaussian noise of 5 % of each weight tensor's RMS, ``no-xattn`` zeroes the output of
    every cross-attention (the UNet stops following the prompt)."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline

    from quant.models.source import TURBO_SCHEDULER, build_tokenizers

    models, meta = load_models(folder)
    unet = models["unet"]
    if variant == "unet-noise5":
        gen = torch.Generator().manual_seed(SEED)
        with torch.no_grad():
            for p in unet.parameters():
                rms = p.pow(2).mean().sqrt()
                p.add_(0.05 * rms * torch.randn(p.shape, generator=gen))
    elif variant == "no-xattn":
        with torch.no_grad():
            for name, module in unet.named_modules():
                if name.endswith("attn2.to_out.0"):
                    module.weight.zero_()
                    module.bias.zero_()
    elif variant is not None:
        raise ValueError(f"unknown canary variant {variant!r}; allowed: unet-noise5, no-xattn")
    vae = models["vae"]
    vae.register_to_config(scaling_factor=meta["scaling_factor"])
    tok, tok_2 = build_tokenizers()
    scheduler = EulerAncestralDiscreteScheduler.from_config({k: v for k, v in TURBO_SCHEDULER.items() if k[0] != "_"})
    return StableDiffusionXLPipeline(vae=vae, text_encoder=models["text_encoder"], text_encoder_2=models["text_encoder_2"],
                                     unet=unet, tokenizer=tok, tokenizer_2=tok_2, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True)


def train(out: Path, *, steps: dict[str, int] | None = None, progress: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Run all three stages and save; returns the loss log."""
    from quant.models.source import build_tokenizers

    steps = {**STEPS, **(steps or {})}
    start = time.perf_counter()
    models = build_models()
    rows: dict[str, list[float]] = {"vae": [], "unet": [], "scorer": []}

    def log(stage: str, step: int, loss: float) -> None:
        rows[stage].append(loss)
        if (step + 1) % 250 == 0 or step + 1 == steps[stage]:
            progress(f"[{time.perf_counter() - start:6.0f}s] {stage} {step + 1}/{steps[stage]} loss {np.mean(rows[stage][-50:]):.5f}")

    _seed_everything(SEED)
    scaling = train_vae(models["vae"], steps["vae"], log)
    _seed_everything(SEED + 1)
    train_unet(models, build_tokenizers(), scaling, steps["unet"], log)
    _seed_everything(SEED + 2)
    train_scorer(models["scorer"], steps["scorer"], log)
    save(models, scaling, out, rows, time.perf_counter() - start)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quant.canary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the canary and its scorer, write fp16 safetensors")
    tr.add_argument("--out", type=Path, default=WEIGHTS_DIR, metavar="DIR", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    train(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
