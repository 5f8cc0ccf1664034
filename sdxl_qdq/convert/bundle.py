"""The device bundle: everything the NPU runner needs and nothing else, made on the host (``sdxl-qdq bundle``).

The pattern of Qualcomm AI Hub: compile on the host, run on the device, judge on the host. A bundle holds

- ``models/<component>/``: the QDQ models (model.onnx, model.onnx.data, io.json); ``context/<component>.onnx``:
  their QNN EP-context models compiled for the bundle's soc, when this host has the QNN HTP backend, each with its
  context binary in a file beside it (``<component>_qnn.bin``; embedded, the real UNet's would pass protobuf's 2 GB);
- ``prompts/<index>.npz``: per prompt, what the device pipeline cannot compute without torch and the
  tokenizers: both encoders' token ids, the initial latents and the ancestral noise of every step, all drawn
  exactly as the host pipeline draws them;
- ``schedule.npz``: per step count, sdxl-turbo's scheduler as diffusers computes it (timesteps and the float32
  coefficients of each Euler-ancestral step); ``pipeline.json``: time ids, VAE scaling, shapes;
- ``parity/<component>.npz``: recorded inputs of the first test prompts with the host's CPU-EP outputs of the
  QDQ model and the float model's outputs;
- ``manifest.json``: size and sha256 of every file, the build's keys, recipe, soc, package versions, prompts.

The device side (``sdxl_qdq.device``) reads it with numpy and onnxruntime only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.cache import package_versions
from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.stages import Build
from sdxl_qdq.errors import ConfigError
from sdxl_qdq.manifest import replace_folder, sha256, write_manifest
from sdxl_qdq.models.prompts import Prompt, load_prompts
from sdxl_qdq.procs import Meter, Progress
from sdxl_qdq.run.pipeline import OrtSDXLPipeline, prompt_seed, record_inputs
from sdxl_qdq.runtime import QNN_SOCS, QnnOptions, create_session, qnn_is_simulated

BUNDLE_KIND = "sdxl-qdq-bundle"
STEPS = (1, 2)
PARITY_PROMPTS = 5


def write_bundle(
    build: Build,
    out: Path,
    *,
    qnn: QnnOptions,
    prompts: list[Prompt] | None = None,
    parity_prompts: int = PARITY_PROMPTS,
    context: bool | None = None,
    progress: Progress = lambda _: None,
) -> Path:
    """Write ``build``'s bundle for ``qnn.soc_model`` at ``out`` (replaced if it exists; written aside, renamed
    when complete). ``prompts``: the model's 100 by default; ``context``: compile EP-context binaries (default:
    when the QNN backend is installed here)."""
    if qnn.soc_model not in QNN_SOCS:
        raise ConfigError(
            f"QNN soc_model {qnn.soc_model!r} is not one this project knows; allowed: {', '.join(QNN_SOCS)}"
        )
    prompts = prompts if prompts is not None else load_prompts("all", path=build.source.prompts)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _copy_models(build, tmp)
        compiled = (
            _compile_contexts(build, tmp, qnn, progress) if (context if context is not None else _have_qnn()) else False
        )
        pipe = OrtSDXLPipeline(build.qdq, load=())  # tokenizers and scheduler only: no session is created
        _write_pipeline(pipe, tmp)
        _write_schedule(pipe, tmp)
        _write_prompts(pipe, prompts, tmp, progress)
        parity = load_prompts("test", path=build.source.prompts)[:parity_prompts]
        _write_parity(build, parity, tmp, progress)
        write_manifest(
            tmp,
            {
                "kind": BUNDLE_KIND,
                "model": build.source.name,
                "recipe": {"name": build.recipe_name, "sha256": sha256(build.recipe_path)},
                "keys": build.keys,
                "soc": qnn.soc_model,
                "context": {"compiled": compiled, "on": "htp simulator" if qnn_is_simulated() else "htp device"}
                if compiled
                else None,
                "steps": list(STEPS),
                "prompts": [{"index": p.index, "id": p.id, "text": p.text, "split": p.split} for p in prompts],
                "parity_prompts": [p.id for p in parity],
                "versions": package_versions(),
            },
        )
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"bundle written to {out}")
    return out


def _have_qnn() -> bool:
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        return False
    return True


def _copy_models(build: Build, folder: Path) -> None:
    for c in COMPONENTS:
        src = build.qdq.models[c].parent
        dest = folder / "models" / c
        dest.mkdir(parents=True)
        for name in ("model.onnx", "model.onnx.data", "io.json"):
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)


def _compile_contexts(build: Build, folder: Path, qnn: QnnOptions, progress: Progress) -> bool:
    from sdxl_qdq.runtime import compile_ep_context

    for c in COMPONENTS:
        progress(f"compiling {c} for QNN HTP soc {qnn.soc_model}")
        compile_ep_context(folder / "models" / c / "model.onnx", folder / "context" / f"{c}.onnx", qnn=qnn)
    return True


def _write_pipeline(pipe: OrtSDXLPipeline, folder: Path) -> None:
    size = float(pipe.image_size)
    (folder / "pipeline.json").write_text(
        json.dumps(
            {
                "time_ids": [size, size, 0.0, 0.0, size, size],
                "scaling_factor": pipe.scaling_factor,
                "latent_shape": list(pipe.latent_shape),
                "image_size": pipe.image_size,
            },
            indent=1,
        )
    )


def _write_schedule(pipe: OrtSDXLPipeline, folder: Path) -> None:
    """Per step count, each step's timestep and the float32 coefficients of diffusers' Euler-ancestral step:
    ``model_in = x / denom``; ``x0 = x - sigma * eps``; ``x = x + ((x - x0) / sigma) * dt``; ``x = x + noise *
    sigma_up``."""
    arrays: dict[str, np.ndarray] = {}
    for k in STEPS:
        scheduler = pipe.scheduler_cls.from_config(pipe.scheduler_config)
        scheduler.set_timesteps(k)
        rows = []
        for i, t in enumerate(scheduler.timesteps):
            sigma, sigma_to = scheduler.sigmas[i], scheduler.sigmas[i + 1]
            sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
            sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
            rows.append(
                [float(t), ((sigma**2 + 1) ** 0.5).item(), sigma.item(), (sigma_down - sigma).item(), sigma_up.item()]
            )
        table = np.asarray(rows, dtype=np.float32)
        for j, name in enumerate(("timestep", "denom", "sigma", "dt", "sigma_up")):
            arrays[f"{name}@{k}"] = table[:, j].copy()
    np.savez(folder / "schedule.npz", **arrays)


def _write_prompts(pipe: OrtSDXLPipeline, prompts: list[Prompt], folder: Path, progress: Progress) -> None:
    """Token ids, initial latents and every step's noise, drawn from the prompt's generator as the host pipeline
    draws them (``OrtSDXLPipeline.denoise``; diffusers' step draws its noise after the initial latents); and the empty
    prompt's token ids (``empty.npz``: the text response subtracts the UNet's output for it)."""
    import torch

    (folder / "prompts").mkdir()
    scheduler = pipe.scheduler_cls.from_config(pipe.scheduler_config)
    scheduler.set_timesteps(max(STEPS))
    meter = Meter("bundle inputs", len(prompts), progress)
    for prompt in prompts:
        generator = torch.Generator().manual_seed(prompt_seed(prompt.seed_key))
        latents = torch.randn(pipe.latent_shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma
        noise = [torch.randn(pipe.latent_shape, generator=generator, dtype=torch.float32) for _ in range(max(STEPS))]
        ids, ids_2 = pipe.token_ids(prompt.text)
        np.savez(
            folder / "prompts" / f"{prompt.index:03d}.npz",
            input_ids=ids,
            input_ids_2=ids_2,
            latents=latents.numpy(),
            noise=torch.stack(noise).numpy(),
        )
        meter.step()
    ids, ids_2 = pipe.token_ids("")
    np.savez(folder / "prompts" / "empty.npz", input_ids=ids, input_ids_2=ids_2)  # the text response's baseline


def _write_parity(build: Build, prompts: list[Prompt], folder: Path, progress: Progress) -> None:
    """Each component's inputs while the float pipeline draws ``prompts`` (1 step), with the host's CPU-EP outputs
    of the QDQ model and the float model's outputs."""
    (folder / "parity").mkdir()
    feeds = record_inputs(build.float, prompts)
    for c in COMPONENTS:
        qdq, ref = create_session(build.qdq.models[c]), create_session(build.float.models[c])
        names = [o.name for o in qdq.get_outputs()]
        arrays: dict[str, Any] = {}
        for i, f in enumerate(feeds[c]):
            arrays.update({f"{i}/in/{k}": v for k, v in f.items()})
            arrays.update({f"{i}/cpu/{n}": v for n, v in zip(names, qdq.run(None, f))})
            arrays.update({f"{i}/float/{n}": v for n, v in zip(names, ref.run(None, f))})
        np.savez(folder / "parity" / f"{c}.npz", **arrays)
    progress(f"bundle parity inputs: {len(prompts)} prompts")
