"""One SDXL-turbo pipeline over ONNX Runtime sessions: float or QDQ components, CPU or QNN EP, N steps.

The scheduler is diffusers' (sdxl-turbo's EulerAncestralDiscreteScheduler, trailing spacing); the sessions
are ours. Guidance is 0 (no negative prompt), as sdxl-turbo is meant to run. Latents and ancestral noise
come from a torch generator seeded from the prompt text, so a prompt gives the same image whatever its
position in a batch, and the float and quantized variants start from the same noise.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.components import COMPONENTS, TOKEN_LENGTH, ComponentIO, read_io
from sdxl_qdq.models.prompts import Prompt
from sdxl_qdq.runtime import QnnOptions, assert_assignment, create_session

Recorder = Callable[[str, dict[str, np.ndarray]], None]


def prompt_seed(prompt: str, base_seed: int = 0) -> int:
    """A seed that depends only on the prompt text and ``base_seed``."""
    return (int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "little") + base_seed) % (2**31)


@dataclass(frozen=True)
class ComponentSet:
    """Paths of one variant's four component models plus the pipeline folder (tokenizers, scheduler)."""

    models: dict[str, Path]
    pipeline_dir: Path

    def io(self, component: str) -> ComponentIO:
        return read_io(self.models[component].parent)


def feeds_digest(feeds: dict[str, np.ndarray]) -> str:
    """A digest of a call's inputs (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()


class OrtSDXLPipeline:
    """SDXL text-to-image over ORT sessions. ``recorder(component, feeds)`` sees every component call.

    ``reuse``: a call whose inputs equal an earlier call's returns that call's outputs without running the
    model again (the recorder still sees it). Calibration runs each prompt at 1 and 2 steps: the text
    encoders see the same prompt twice and the first UNet call is the same at both step counts.
    """

    def __init__(
        self,
        components: ComponentSet,
        *,
        ep: dict[str, str] | str = "cpu",
        qnn: QnnOptions | None = None,
        threads: int | None = None,
        recorder: Recorder | None = None,
        load: tuple[str, ...] = COMPONENTS,
        reuse: bool = False,
    ) -> None:
        from diffusers import EulerAncestralDiscreteScheduler
        from transformers import CLIPTokenizer

        self.components, self.qnn, self.threads = components, qnn, threads
        self.eps = dict.fromkeys(COMPONENTS, ep) if isinstance(ep, str) else ep
        self.sessions: dict[str, Any] = {}
        self.load(*load)
        self.io = {c: components.io(c) for c in COMPONENTS}
        folder = components.pipeline_dir
        self.tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        self.tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)
        self.scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        self.scheduler_cls = EulerAncestralDiscreteScheduler
        vae_config = json.loads((folder / "vae" / "config.json").read_text())
        self.scaling_factor = float(vae_config.get("scaling_factor", 0.13025))
        self.latent_shape = self.io["unet"].inputs[0].shape
        self.image_size = self.io["vae_decoder"].outputs[0].shape[-1]
        self.recorder = recorder
        self._outputs: dict[tuple[str, str], list[np.ndarray]] | None = {} if reuse else None
        self.executed: dict[str, int] = dict.fromkeys(COMPONENTS, 0)  # model runs (reused calls not counted)
        self._empty: tuple[np.ndarray, np.ndarray] | None = None

    def load(self, *components: str) -> None:
        """Create the sessions of ``components`` (those not loaded yet)."""
        for c in components:
            if c not in self.sessions:
                session = create_session(self.components.models[c], ep=self.eps[c], qnn=self.qnn, threads=self.threads)
                assert_assignment(session, self.eps[c])
                self.sessions[c] = session

    def release(self, *components: str) -> None:
        """Drop the sessions of ``components`` (and the memory their weights hold, and their reused outputs)."""
        for c in components:
            self.sessions.pop(c, None)
        if self._outputs is not None:
            self._outputs = {k: v for k, v in self._outputs.items() if k[0] not in components}

    def forget(self) -> None:
        """Drop the outputs kept for reuse (``reuse``): calls after this run their models again."""
        if self._outputs is not None:
            self._outputs.clear()

    def _run(self, component: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.recorder is not None:
            self.recorder(component, feeds)
        if self._outputs is None:
            self.executed[component] += 1
            return self.sessions[component].run(None, feeds)
        key = (component, feeds_digest(feeds))
        if key not in self._outputs:
            self.executed[component] += 1
            self._outputs[key] = self.sessions[component].run(None, feeds)
        return [a.copy() for a in self._outputs[key]]

    def token_ids(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """Both encoders' input ids for ``prompt``: [1, 77] int64 each."""
        return self._tokens(self.tokenizer, prompt), self._tokens(self.tokenizer_2, prompt)

    def _tokens(self, tokenizer: Any, prompt: str) -> np.ndarray:
        ids = tokenizer(prompt, padding="max_length", max_length=TOKEN_LENGTH, truncation=True, return_tensors="np")
        return ids.input_ids.astype(np.int64)

    def encode_prompt(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """(encoder_hidden_states [1, 77, h1+h2], pooled text_embeds [1, p]) as SDXL builds them."""
        ids, ids_2 = self.token_ids(prompt)
        (h1,) = self._run("text_encoder", {"input_ids": ids})
        pooled, h2 = self._run("text_encoder_2", {"input_ids": ids_2})
        return np.concatenate([h1, h2], axis=-1), pooled

    def __call__(self, prompt: str, *, steps: int = 1, seed: int | None = None) -> np.ndarray:
        """The image for ``prompt`` as uint8 H×W×3."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        hidden, pooled = self.encode_prompt(prompt)
        return self.decode(self.denoise(prompt, hidden, pooled, steps=steps, seed=seed))

    def denoise(
        self, prompt: str, hidden: np.ndarray, pooled: np.ndarray, *, steps: int, seed: int | None = None
    ) -> Any:
        """The final latents (torch) of ``steps`` Euler-ancestral steps from the prompt's seeded noise."""
        import torch

        generator = torch.Generator().manual_seed(prompt_seed(prompt) if seed is None else seed)
        scheduler = self.scheduler_cls.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps)
        latents = torch.randn(self.latent_shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(latents, t)
            (noise,) = self._run("unet", self._unet_feeds(model_in.numpy(), float(t), hidden, pooled))
            latents = scheduler.step(torch.from_numpy(noise), t, latents, generator=generator).prev_sample
        return latents

    def _unet_feeds(self, sample: np.ndarray, t: float, hidden: np.ndarray, pooled: np.ndarray) -> dict[str, Any]:
        size = float(self.image_size)
        return {
            "sample": sample.astype(np.float32),
            "timestep": np.array([t], dtype=np.float32),
            "encoder_hidden_states": hidden,
            "text_embeds": pooled,
            "time_ids": np.array([[size, size, 0.0, 0.0, size, size]], dtype=np.float32),
        }

    def empty_prompt(self) -> tuple[np.ndarray, np.ndarray]:
        """The empty prompt's (encoder_hidden_states, text_embeds) through this pipeline's text encoders (encoded
        once per pipeline)."""
        if self._empty is None:
            self._empty = self.encode_prompt("")
        return self._empty

    def text_response(self, prompt: str, *, seed: int | None = None) -> np.ndarray:
        """The UNet's response to the prompt at the first step: its output for the prompt's embeddings minus its
        output for the empty prompt's, from the same latents, timestep and time ids (float32, the latents' shape).
        With ``reuse``, the prompt's call is the image's first UNet call: one more UNet call per prompt."""
        import torch

        generator = torch.Generator().manual_seed(prompt_seed(prompt) if seed is None else seed)
        scheduler = self.scheduler_cls.from_config(self.scheduler_config)
        scheduler.set_timesteps(1)  # trailing spacing: the first timestep (999) of every step count
        latents = torch.randn(self.latent_shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma
        t = scheduler.timesteps[0]
        sample = scheduler.scale_model_input(latents, t).numpy()
        (cond,) = self._run("unet", self._unet_feeds(sample, float(t), *self.encode_prompt(prompt)))
        (uncond,) = self._run("unet", self._unet_feeds(sample, float(t), *self.empty_prompt()))
        return (cond - uncond).astype(np.float32)

    def decode_feeds(self, latents: Any) -> dict[str, np.ndarray]:
        """The VAE decoder's inputs for final latents."""
        return {"latent_sample": (latents / self.scaling_factor).numpy().astype(np.float32)}

    def decode(self, latents: Any) -> np.ndarray:
        """The uint8 H×W×3 image of final latents."""
        (image,) = self._run("vae_decoder", self.decode_feeds(latents))
        image = np.clip(image[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0)
        return (image * 255).round().astype(np.uint8)


def record_inputs(
    float_models: ComponentSet, prompts: list[Prompt], *, steps: int = 1
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every component's inputs while the float pipeline draws ``prompts``."""
    feeds: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    pipe = OrtSDXLPipeline(float_models, recorder=lambda c, f: feeds[c].append(dict(f)))
    for prompt in prompts:
        pipe(prompt.text, steps=steps)
    return dict(feeds)
