"""The four SDXL components and the fixed shapes of their inputs and outputs (batch 1, 77 tokens)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

COMPONENTS: tuple[str, ...] = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
TOKEN_LENGTH = 77  # CLIP's context: both text encoders read 77 token ids
STEPS: tuple[int, ...] = (1, 2)  # the step counts every variant is drawn and gated at (SDXL-turbo, guidance 0)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name


@dataclass(frozen=True)
class ComponentIO:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [asdict(t) for t in self.inputs], "outputs": [asdict(t) for t in self.outputs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ComponentIO:
        def specs(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in items)

        return cls(specs(data["inputs"]), specs(data["outputs"]))


def component_io(component: str, dims: dict[str, int]) -> ComponentIO:
    """Fixed input/output specs of ``component``. ``dims``: widths read from the model configs."""
    latent, image = dims["latent"], dims["latent"] * dims["vae_scale_factor"]
    ids = TensorSpec("input_ids", (1, TOKEN_LENGTH), "int64")
    if component == "text_encoder":
        return ComponentIO(
            (ids,), (TensorSpec("penultimate_hidden_states", (1, TOKEN_LENGTH, dims["te1_hidden"]), "float32"),)
        )
    if component == "text_encoder_2":
        return ComponentIO(
            (ids,),
            (
                TensorSpec("text_embeds", (1, dims["te2_projection"]), "float32"),
                TensorSpec("penultimate_hidden_states", (1, TOKEN_LENGTH, dims["te2_hidden"]), "float32"),
            ),
        )
    if component == "unet":
        return ComponentIO(
            (
                TensorSpec("sample", (1, 4, latent, latent), "float32"),
                TensorSpec("timestep", (1,), "float32"),
                TensorSpec(
                    "encoder_hidden_states", (1, TOKEN_LENGTH, dims["te1_hidden"] + dims["te2_hidden"]), "float32"
                ),
                TensorSpec("text_embeds", (1, dims["te2_projection"]), "float32"),
                TensorSpec("time_ids", (1, 6), "float32"),
            ),
            (TensorSpec("out_sample", (1, 4, latent, latent), "float32"),),
        )
    if component == "vae_decoder":
        return ComponentIO(
            (TensorSpec("latent_sample", (1, 4, latent, latent), "float32"),),
            (TensorSpec("sample", (1, 3, image, image), "float32"),),
        )
    raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")


def read_io(component_dir: Path) -> ComponentIO:
    return ComponentIO.from_json(json.loads((component_dir / "io.json").read_text()))
