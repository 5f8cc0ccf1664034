"""Training the canary (``sdxl-qdq canary-train``): seeded, 2 threads, deterministic algorithms; ≤ 20 min on 2 cores.

Stages: (1) the VAE on random shape scenes; (2) both text encoders and the UNet together, at the
timesteps sdxl-turbo's trailing sampler visits (999 for 1 step, 999 and 499 for 2), with an x0 loss so
that one Euler step draws the caption; (3) the scorer, a CLIP-like image tower and text tower trained
contrastively. Weights are stored in fp16 safetensors; the 49408-row token embeddings keep only the rows of
the world's tokens (the others are zero).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.models.canary import world
from sdxl_qdq.models.canary.model import (
    SEED,
    THREADS,
    build_models,
    scorer_token_ids,
    seed_everything,
    to_tensor,
    used_token_ids,
)
from sdxl_qdq.models.sdxl import build_tokenizers, turbo_scheduler

STEPS = {"vae": 600, "unet": 3000, "scorer": 1000}


TRAIN_TIMESTEPS = (999, 499)


def random_scenes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random shapes, colours and positions (not only the captioned layouts): VAE training data."""
    images = np.empty((n, world.SIZE, world.SIZE, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = world.BACKGROUND
        for _ in range(rng.integers(1, 3)):
            centre = tuple(int(v) for v in rng.integers(12, 52, size=2))
            colour = list(world.COLOURS)[rng.integers(len(world.COLOURS))]
            shape = world.SHAPES[rng.integers(len(world.SHAPES))]
            images[i][world.shape_mask(shape, centre)] = world.COLOURS[colour]
    return images


# ---------------------------------------------------------------------------------------------- stages
Log = Callable[[str, int, float], None]


def train_vae(vae: Any, steps: int, log: Log) -> float:
    """Train the VAE; return the latent scaling factor (1 / std of the posterior means)."""
    import torch

    rng = np.random.default_rng(SEED)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    vae.train()
    for step in range(steps):
        x = to_tensor(random_scenes(rng, 16))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=None)).sample
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        log("vae", step, loss.item())
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(to_tensor(random_scenes(rng, 256))).latent_dist.mean
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

    alphas = turbo_scheduler().alphas_cumprod
    scenes = [s for s in world.all_scenes() if not s.held_out]
    with torch.no_grad():
        latents = (
            models["vae"].encode(to_tensor(np.stack([world.render(s) for s in scenes]))).latent_dist.mean * scaling
        )
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
        eps = models["unet"](
            xt, t.float(), hidden, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.expand(32, 6)}
        ).sample
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
    images = to_tensor(np.stack([world.render(s) for s in scenes]))
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
        nce = (
            torch.nn.functional.cross_entropy(cos / 0.05, labels)
            + torch.nn.functional.cross_entropy(cos.T / 0.05, labels)
        ) / 2
        off = cos[~torch.eye(len(idx), dtype=torch.bool)]
        # push matched pairs to cos 1 and mismatched ones to cos ≤ 0, so 100·max(cos, 0) reads as a score
        loss = nce + (1 - cos.diag()).mean() + torch.relu(off).pow(2).mean() * 4
        opt.zero_grad()
        loss.backward()
        opt.step()
        log("scorer", step, loss.item())
    scorer.eval()


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
    meta = {
        "scaling_factor": scaling,
        "token_ids": keep.tolist(),
        "steps": STEPS,
        "seed": SEED,
        "threads": THREADS,
        "train_seconds": round(seconds, 1),
        "first_losses": {k: v[:5] for k, v in log_rows.items()},
        "last_losses": {k: v[-5:] for k, v in log_rows.items()},
    }
    (out / "canary.json").write_text(json.dumps(meta, indent=1))


def train(
    out: Path, *, steps: dict[str, int] | None = None, progress: Callable[[str], None] = print
) -> dict[str, list[float]]:
    """Run all three stages and save; returns the loss log."""
    steps = {**STEPS, **(steps or {})}
    start = time.perf_counter()
    models = build_models()
    rows: dict[str, list[float]] = {"vae": [], "unet": [], "scorer": []}

    def log(stage: str, step: int, loss: float) -> None:
        rows[stage].append(loss)
        if (step + 1) % 250 == 0 or step + 1 == steps[stage]:
            progress(
                f"[{time.perf_counter() - start:6.0f}s] {stage} {step + 1}/{steps[stage]} "
                f"loss {np.mean(rows[stage][-50:]):.5f}"
            )

    seed_everything(SEED)
    scaling = train_vae(models["vae"], steps["vae"], log)
    seed_everything(SEED + 1)
    train_unet(models, build_tokenizers(), scaling, steps["unet"], log)
    seed_everything(SEED + 2)
    train_scorer(models["scorer"], steps["scorer"], log)
    save(models, scaling, out, rows, time.perf_counter() - start)
    return rows
