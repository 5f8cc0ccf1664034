"""SDXL-turbo on the device with numpy and onnxruntime alone: the host's token ids, initial latents, per-step
noise and scheduler coefficients (from the bundle), the components on the QNN EP (or the CPU EP)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.device.bundle import Bundle, BundlePrompt, Step
from sdxl_qdq.runtime import QnnOptions, assert_assignment, create_session


def euler_ancestral(sample: np.ndarray, eps: np.ndarray, step: Step, noise: np.ndarray) -> np.ndarray:
    """diffusers' EulerAncestralDiscreteScheduler.step (epsilon prediction), in the same float32 operations."""
    pred_original = sample - step.sigma * eps
    derivative = (sample - pred_original) / step.sigma
    prev = sample + derivative * step.dt
    return prev + noise * step.sigma_up


class DevicePipeline:
    """The bundle's QDQ components on ``ep``; ``context``: load the EP-context binaries compiled for the chip
    (QNN only, when the bundle has them)."""

    def __init__(
        self, bundle: Bundle, *, ep: str = "qnn", qnn: QnnOptions | None = None, context: bool = False
    ) -> None:
        self.bundle, self.ep = bundle, ep
        qnn = qnn or QnnOptions(soc_model=bundle.soc)
        self.sessions: dict[str, Any] = {}
        for c in COMPONENTS:
            path = bundle.context(c) if (context and ep == "qnn" and bundle.context(c)) else bundle.model(c)
            session = create_session(path, ep=ep, qnn=qnn)
            assert_assignment(session, ep)
            self.sessions[c] = session
        self.unet_calls = 0
        self._empty: tuple[np.ndarray, np.ndarray] | None = None
        config = bundle.pipeline
        self.time_ids = np.asarray([config["time_ids"]], dtype=np.float32)
        self.scaling = np.float32(config["scaling_factor"])

    def _unet_feeds(self, sample: np.ndarray, step: Step, hidden: np.ndarray, pooled: np.ndarray) -> dict[str, Any]:
        return {
            "sample": sample,
            "timestep": np.asarray([step.timestep], dtype=np.float32),
            "encoder_hidden_states": hidden,
            "text_embeds": pooled,
            "time_ids": self.time_ids,
        }

    def encode(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        (h1,) = self.sessions["text_encoder"].run(None, {"input_ids": inputs["input_ids"]})
        pooled, h2 = self.sessions["text_encoder_2"].run(None, {"input_ids": inputs["input_ids_2"]})
        return np.concatenate([h1, h2], axis=-1), pooled

    def denoise(
        self,
        inputs: dict[str, np.ndarray],
        hidden: np.ndarray,
        pooled: np.ndarray,
        steps: int,
        first: dict[tuple[float, float], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Final latents after ``steps``; ``first``: UNet outputs of first steps already run for this prompt, by
        (timestep, scale): the 1-step run's only call is the 2-step run's first, with the same inputs."""
        latents = inputs["latents"]
        for i, step in enumerate(self.bundle.schedule(steps)):
            key = (float(step.timestep), float(step.denom))
            if i == 0 and first is not None and key in first:
                eps = first[key]
            else:
                (eps,) = self.sessions["unet"].run(None, self._unet_feeds(latents / step.denom, step, hidden, pooled))
                self.unet_calls += 1
                if i == 0 and first is not None:
                    first[key] = eps
            latents = euler_ancestral(latents, eps, step, inputs["noise"][i])
        return latents

    def text_response(
        self, inputs: dict[str, np.ndarray], hidden: np.ndarray, pooled: np.ndarray, first: dict
    ) -> np.ndarray:
        """The UNet's response to the prompt at the first step (as ``OrtSDXLPipeline.text_response``): its first
        output (``first``, filled by ``denoise``) minus its output for the empty prompt's embeddings, from the same
        latents and timestep."""
        if self._empty is None:
            self._empty = self.encode(self.bundle.empty_prompt())
        step = self.bundle.schedule(1)[0]
        key = (float(step.timestep), float(step.denom))
        if key not in first:
            self.denoise(inputs, hidden, pooled, 1, first)
        (uncond,) = self.sessions["unet"].run(
            None, self._unet_feeds(inputs["latents"] / step.denom, step, *self._empty)
        )
        self.unet_calls += 1
        return (first[key] - uncond).astype(np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """The uint8 H×W×3 image of final latents (as ``sdxl_qdq.run.pipeline.OrtSDXLPipeline.decode``)."""
        (image,) = self.sessions["vae_decoder"].run(None, {"latent_sample": latents / self.scaling})
        image = np.clip(image[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0)
        return (image * 255).round().astype(np.uint8)

    def draw(
        self, prompt: BundlePrompt, steps_list: tuple[int, ...] = (1, 2)
    ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """Per step count: (image, final latents) of ``prompt``, and the prompt's text response; the prompt is encoded
        once and a first UNet call shared by two step counts (and the response) runs once."""
        inputs = self.bundle.inputs(prompt)
        hidden, pooled = self.encode(inputs)
        out, first = {}, {}
        for steps in steps_list:
            latents = self.denoise(inputs, hidden, pooled, steps, first)
            out[steps] = (self.decode(latents), latents)
        return out, self.text_response(inputs, hidden, pooled, first)
