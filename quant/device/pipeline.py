"""SDXL-turbo on the device with numpy and onnxruntime alone: the host's token ids, initial latents, per-step
noise and scheduler coefficients (from the bundle), the components on the QNN EP (or the CPU EP)."""

from __future__ import annotations

from typing import Any

import numpy as np

from quant.components import COMPONENTS
from quant.device.bundle import Bundle, BundlePrompt, Step
from quant.runtime import QnnOptions, assert_assignment, create_session


def euler_ancestral(sample: np.ndarray, eps: np.ndarray, step: Step, noise: np.ndarray) -> np.ndarray:
    """diffusers' EulerAncestralDiscreteScheduler.step (epsilon prediction), in the same float32 operations."""
    pred_original = sample - step.sigma * eps
    derivative = (sample - pred_original) / step.sigma
    prev = sample + derivative * step.dt
    return prev + noise * step.sigma_up


class DevicePipeline:
    """The bundle's QDQ components on ``ep``; ``context``: load the EP-context binaries compiled for the chip
    (QNN only, when the bundle has them)."""

    def __init__(self, bundle: Bundle, *, ep: str = "qnn", qnn: QnnOptions | None = None, context: bool = False) -> None:
        self.bundle, self.ep = bundle, ep
        qnn = qnn or QnnOptions(soc_model=bundle.soc)
        self.sessions: dict[str, Any] = {}
        for c in COMPONENTS:
            path = bundle.context(c) if (context and ep == "qnn" and bundle.context(c)) else bundle.model(c)
            session = create_session(path, ep=ep, qnn=qnn)
            assert_assignment(session, ep)
            self.sessions[c] = session
        config = bundle.pipeline
        self.time_ids = np.asarray([config["time_ids"]], dtype=np.float32)
        self.scaling = np.float32(config["scaling_factor"])

    def encode(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        (h1,) = self.sessions["text_encoder"].run(None, {"input_ids": inputs["input_ids"]})
        pooled, h2 = self.sessions["text_encoder_2"].run(None, {"input_ids": inputs["input_ids_2"]})
        return np.concatenate([h1, h2], axis=-1), pooled

    def denoise(self, inputs: dict[str, np.ndarray], hidden: np.ndarray, pooled: np.ndarray, steps: int) -> np.ndarray:
        latents = inputs["latents"]
        for i, step in enumerate(self.bundle.schedule(steps)):
            (eps,) = self.sessions["unet"].run(None, {
                "sample": latents / step.denom, "timestep": np.asarray([step.timestep], dtype=np.float32),
                "encoder_hidden_states": hidden, "text_embeds": pooled, "time_ids": self.time_ids,
            })
            latents = euler_ancestral(latents, eps, step, inputs["noise"][i])
        return latents

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """The uint8 H×W×3 image of final latents (as ``quant.run.pipeline.OrtSDXLPipeline.decode``)."""
        (image,) = self.sessions["vae_decoder"].run(None, {"latent_sample": latents / self.scaling})
        image = np.clip(image[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0)
        return (image * 255).round().astype(np.uint8)

    def draw(self, prompt: BundlePrompt, steps_list: tuple[int, ...] = (1, 2)) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per step count: (image, final latents) of ``prompt``; the prompt is encoded once."""
        inputs = self.bundle.inputs(prompt)
        hidden, pooled = self.encode(inputs)
        out = {}
        for steps in steps_list:
            latents = self.denoise(inputs, hidden, pooled, steps)
            out[steps] = (self.decode(latents), latents)
        return out
