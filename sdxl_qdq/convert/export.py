"""Export SDXL's four components to ONNX at fixed shapes (batch 1, 77 tokens, the source's latent size).

Each component is written as ``<dir>/<component>/model.onnx`` with its weights as external data
(``model.onnx.data``) and an ``io.json`` describing its inputs and outputs. The text encoders output what
SDXL consumes: the penultimate hidden states, and for ``text_encoder_2`` the projected pooled ``text_embeds``.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from sdxl_qdq.components import COMPONENTS, component_io
from sdxl_qdq.convert.files import rewrite_with_external_data
from sdxl_qdq.models.source import ModelSource
from sdxl_qdq.procs import run_measured

OPSET = 17
EXPORTER = "torchscript"  # torch.onnx.export(dynamo=False): the exporter that handles these models on torch 2.13


def _wrapper(component: str, module: Any) -> Any:
    """``module`` (a text encoder, the UNet or the VAE) wrapped to take and return what the export fixes."""
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, model: Any, projected: bool) -> None:
            super().__init__()
            self.model, self.projected = model, projected

        def forward(self, input_ids: torch.Tensor) -> Any:
            out = self.model(input_ids, output_hidden_states=True, return_dict=True)
            if self.projected:
                return out.text_embeds, out.hidden_states[-2]
            return out.hidden_states[-2]

    class UNet(torch.nn.Module):
        def __init__(self, unet: Any) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            added = {"text_embeds": text_embeds, "time_ids": time_ids}
            return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]

    class VaeDecoder(torch.nn.Module):
        def __init__(self, vae: Any) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(latent_sample, return_dict=False)[0]

    if component == "text_encoder":
        return TextEncoder(module, projected=False)
    if component == "text_encoder_2":
        return TextEncoder(module, projected=True)
    if component == "unet":
        return UNet(module)
    return VaeDecoder(module)


def model_dims(folder: Path, source: ModelSource) -> dict[str, int]:
    """Widths the export fixes, from the text encoders' configs in the pipeline folder."""
    te1 = json.loads((folder / "text_encoder" / "config.json").read_text())
    te2 = json.loads((folder / "text_encoder_2" / "config.json").read_text())
    return {
        "latent": source.latent_size,
        "vae_scale_factor": source.vae_scale_factor,
        "te1_hidden": te1["hidden_size"],
        "te2_hidden": te2["hidden_size"],
        "te2_projection": te2["projection_dim"],
    }


def load_torch_pipeline(folder: Path) -> Any:
    """The float diffusers pipeline from a local folder (safetensors only, no remote code)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(
        folder, torch_dtype=torch.float32, use_safetensors=True, local_files_only=True
    )


def load_component(folder: Path, source: ModelSource, component: str) -> Any:
    """One float component's torch module (safetensors only, no remote code), or the source's own builder."""
    import torch

    sub = "vae" if component == "vae_decoder" else component
    if source.load_component is not None:
        return source.load_component(folder, sub)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = {
        "text_encoder": CLIPTextModel,
        "text_encoder_2": CLIPTextModelWithProjection,
        "unet": UNet2DConditionModel,
        "vae": AutoencoderKL,
    }[sub]
    return cls.from_pretrained(
        folder / sub, torch_dtype=torch.float32, use_safetensors=True, local_files_only=True
    ).eval()


def export_component(folder: Path, source: ModelSource, component: str, dest: Path, *, progress: Any = None) -> None:
    """Export ``component`` of the pipeline in ``folder`` into ``dest`` (model.onnx + model.onnx.data + io.json)."""
    import torch

    io = component_io(component, model_dims(folder, source))
    dest.mkdir(parents=True)
    args = tuple(
        torch.zeros(t.shape, dtype=torch.int64)
        if t.dtype == "int64"
        else torch.randn(t.shape, generator=torch.Generator().manual_seed(0))
        for t in io.inputs
    )
    raw = dest / "raw" / "model.onnx"  # torch writes a model over 2 GB as one file per tensor beside it
    raw.parent.mkdir()
    wrapper = _wrapper(component, load_component(folder, source, component))
    with torch.inference_mode(), warnings.catch_warnings():
        # tracing notes (constant shapes, Python control flow) are expected at fixed shapes: not the user's concern
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        torch.onnx.export(
            wrapper,
            args,
            str(raw),
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=[t.name for t in io.inputs],
            output_names=[t.name for t in io.outputs],
        )
    del wrapper
    rewrite_with_external_data(raw, dest / "model.onnx")  # streamed: the weights are never loaded twice
    shutil.rmtree(raw.parent)
    (dest / "io.json").write_text(json.dumps(io.to_json(), indent=1))
    if progress:
        progress(f"exported {component}: {(dest / 'model.onnx.data').stat().st_size / 1e6:.1f} MB")


def export_components(
    folder: Path, source: ModelSource, out: Path, *, progress: Any = None, isolate: bool = False
) -> dict:
    """Export every component into ``out/<component>/``; with ``isolate``, each in its own process (memory is
    returned to the system between components). Returns per-component time and peak RSS when isolated."""
    stats = {}
    for component in COMPONENTS:
        if isolate:
            stats[component] = run_measured(
                [
                    sys.executable,
                    "-m",
                    "sdxl_qdq",
                    "_export",
                    str(folder),
                    source.name,
                    component,
                    str(out / component),
                ],
                progress=progress,
            )
            if progress:
                progress(f"{component}: {stats[component]}")
        else:
            export_component(folder, source, component, out / component, progress=progress)
    return stats
