"""A bundle as the device reads it: verified against its manifest before anything in it is used."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.errors import ConfigError
from sdxl_qdq.manifest import manifest_digest, read_manifest
from sdxl_qdq.runtime import QNN_SOCS

BUNDLE_KIND = "sdxl-qdq-bundle"


@dataclass(frozen=True)
class BundlePrompt:
    index: int
    id: str
    text: str
    split: str


@dataclass(frozen=True)
class Step:
    """One Euler-ancestral step, its coefficients as diffusers computed them on the host (float32)."""

    timestep: np.float32
    denom: np.float32  # (sigma**2 + 1) ** 0.5: the UNet reads x / denom
    sigma: np.float32
    dt: np.float32  # sigma_down - sigma
    sigma_up: np.float32


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, path: Path | str, *, soc: str | None = None, digests: bool = True) -> Bundle:
        """Read and verify the bundle at ``path`` (sizes and sha256 of every file); ``soc``: the chip this run is
        for, which must be the one the bundle was made for."""
        path = Path(path)
        manifest = read_manifest(path, digests=digests, what="bundle")
        if manifest.get("kind") != BUNDLE_KIND:
            raise ConfigError(
                f"{path} is not a device bundle (kind {manifest.get('kind')!r}); make one with "
                "`sdxl-qdq bundle --model M OUT`"
            )
        if soc is not None and str(soc) != manifest["soc"]:
            made = f"{manifest['soc']} ({QNN_SOCS.get(manifest['soc'], '?')})"
            raise ConfigError(
                f"bundle {path} was made for QNN soc {made}, this run is for soc {soc} "
                f"({QNN_SOCS.get(str(soc), '?')}); make one for it with `sdxl-qdq bundle --qnn-soc {soc}` "
                f"or run with --qnn-soc {manifest['soc']}"
            )
        return cls(path, manifest)

    @cached_property
    def digest(self) -> str:
        """sha256 of the manifest: names this bundle's exact content."""
        return manifest_digest(self.path)

    @property
    def soc(self) -> str:
        return self.manifest["soc"]

    @property
    def model_name(self) -> str:
        return self.manifest["model"]

    @cached_property
    def prompts(self) -> list[BundlePrompt]:
        return [BundlePrompt(**p) for p in self.manifest["prompts"]]

    def model(self, component: str) -> Path:
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")
        return self.path / "models" / component / "model.onnx"

    def context(self, component: str) -> Path | None:
        """The component's EP-context model compiled for the bundle's soc, if the host compiled one."""
        path = self.path / "context" / f"{component}.onnx"
        return path if path.is_file() else None

    @cached_property
    def pipeline(self) -> dict[str, Any]:
        return json.loads((self.path / "pipeline.json").read_text())

    def schedule(self, steps: int) -> list[Step]:
        table = np.load(self.path / "schedule.npz")
        if f"timestep@{steps}" not in table:
            raise ConfigError(f"bundle {self.path} holds schedules for {self.manifest['steps']} steps, not {steps}")
        names = ("timestep", "denom", "sigma", "dt", "sigma_up")
        return [Step(*(table[f"{n}@{steps}"][i] for n in names)) for i in range(steps)]

    def inputs(self, prompt: BundlePrompt) -> dict[str, np.ndarray]:
        """Token ids of both encoders, the initial latents and every step's noise for ``prompt``."""
        with np.load(self.path / "prompts" / f"{prompt.index:03d}.npz") as data:
            return {k: data[k] for k in data.files}

    def empty_prompt(self) -> dict[str, np.ndarray]:
        """Both encoders' token ids of the empty prompt (the text response's baseline)."""
        path = self.path / "prompts" / "empty.npz"
        if not path.is_file():
            raise ConfigError(
                f"bundle {self.path} has no prompts/empty.npz (made by an older sdxl-qdq, before the text-response "
                "check): make it again with `sdxl-qdq bundle`"
            )
        with np.load(path) as data:
            return {k: data[k] for k in data.files}

    def parity(self, component: str) -> list[dict[str, dict[str, np.ndarray]]]:
        """Per recorded call: its inputs ("in"), the host's CPU-EP outputs of the QDQ model ("cpu") and the float
        model's outputs ("float")."""
        calls: dict[int, dict[str, dict[str, np.ndarray]]] = {}
        with np.load(self.path / "parity" / f"{component}.npz") as data:
            for key in data.files:
                i, part, name = key.split("/", 2)
                calls.setdefault(int(i), {"in": {}, "cpu": {}, "float": {}})[part][name] = data[key]
        return [calls[i] for i in sorted(calls)]
