"""Who runs a sharded gate's shards (``sdxl_qdq.flows.run_shard``): this process, one shard after another
(``serial``), or a Ray cluster (``ray``: each shard a Ray task on one CPU slot, holding its ONNX Runtime sessions for
its whole shard), then one judge merges them. A CI matrix is the third engine: one job per ``sdxl-qdq shard --shard
k/N`` and a judge job (.github/workflows/sharded-gate.yml). No scheduler of our own: Ray places the tasks.

The build happens once, in the caller, before any shard starts; a worker finds it in the artifact cache (on a
cluster of several machines, a cache folder every node reads, or each node builds it once).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdxl_qdq.cache import ArtifactCache
from sdxl_qdq.errors import ConfigError
from sdxl_qdq.models.prompts import Shard
from sdxl_qdq.procs import Progress

EXECUTORS = ("serial", "ray")


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to find the build in the cache and draw a shard (plain values: it crosses processes)."""

    model: str
    recipe: str | None = None
    cache_dir: str | None = None
    quantizer: str = "auto"
    prompt_set: str | None = None
    ep: str = "cpu"
    qnn_soc: str | None = None
    clip_backbone: str = "auto"
    fid_backbone: str = "auto"
    coco_dir: str | None = None
    threads: int | None = None

    def cache(self) -> ArtifactCache:
        return ArtifactCache(Path(self.cache_dir) if self.cache_dir else None)

    def build(self, progress: Progress = lambda _: None):
        from sdxl_qdq.convert.stages import build

        return build(
            self.model,
            recipe=self.recipe,
            cache=self.cache(),
            quantizer=self.quantizer,
            prompts=self.prompt_set,
            progress=progress,
        )


def shard_folder(out: Path, shard: Shard) -> Path:
    return Path(out) / f"shard-{shard.index}-of-{shard.count}"


def run_one(job: dict[str, Any], shard: str, out: str, *, built: Any = None) -> dict[str, Any]:
    """One shard, start to end, in whatever process runs it; returns its wall time and where it ran. ``built``: the
    job's build when this process made it already (else found in the cache here)."""
    from sdxl_qdq.flows import run_shard
    from sdxl_qdq.runtime import QnnOptions

    start = time.perf_counter()
    spec = ShardJob(**job)
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)  # this worker's share of the cores (a process of its own)
    manifest = run_shard(
        built or spec.build(),
        Shard.parse(shard),
        out,
        cache=spec.cache(),
        ep=spec.ep,
        qnn=QnnOptions(soc_model=spec.qnn_soc) if spec.qnn_soc else None,
        clip_backbone=spec.clip_backbone,
        fid_backbone=spec.fid_backbone,
        coco_dir=spec.coco_dir,
        threads=spec.threads,
    )
    return {
        "shard": shard,
        "folder": out,
        "prompts": len(manifest["prompts"]),
        "wall_s": round(time.perf_counter() - start, 2),
        "draw_s": manifest["seconds"]["draw_s"],
        "node": platform.node(),
        "pid": os.getpid(),
    }


def run_shards(
    job: ShardJob,
    count: int,
    out: Path,
    *,
    executor: str = "serial",
    address: str | None = None,
    workers: int | None = None,
    progress: Progress = lambda _: None,
) -> list[dict[str, Any]]:
    """All ``count`` shards of ``job`` into ``out/shard-k-of-N`` with ``executor``; each shard's timing, in shard
    order. ``address``: a running Ray cluster's (default: a local one of ``workers`` CPU slots, started and stopped
    here)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r} is not one of {EXECUTORS}")
    if count < 1:
        raise ConfigError(f"--shards {count}: give 1 or more")
    shards = [Shard(k, count) for k in range(1, count + 1)]
    folders = [shard_folder(out, s) for s in shards]
    taken = [f for f in folders if f.exists()]
    if taken:
        raise ConfigError(f"{taken[0]} exists; shards are written to new folders (remove {out}, or pick another --out)")
    Path(out).mkdir(parents=True, exist_ok=True)
    built = job.build(progress)  # once, here: the workers find it in the cache
    if executor == "serial":
        results = []
        for s, f in zip(shards, folders):
            results.append(run_one(asdict(job), str(s), str(f), built=built))
            progress(f"shard {s}: {results[-1]['prompts']} prompts in {results[-1]['wall_s']:.1f}s")
        return results
    return _run_on_ray(job, shards, folders, address=address, workers=workers, progress=progress)


def _run_on_ray(
    job: ShardJob,
    shards: list[Shard],
    folders: list[Path],
    *,
    address: str | None,
    workers: int | None,
    progress: Progress,
) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray: pip install 'sdxl-qdq-gate[ray]' (or run the shards with --executor serial, or "
            "as CI matrix jobs)"
        ) from None
    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if address:
            ray.init(address=address, **options)
        else:
            options["num_cpus"] = workers or os.cpu_count() or 1
            ray.init(**options)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_one)
        pending = {task.remote(asdict(job), str(s), str(f.resolve())): s for s, f in zip(shards, folders)}
        results: dict[str, dict[str, Any]] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                shard = pending.pop(ref)
                try:
                    results[str(shard)] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    raise RuntimeError(f"shard {shard} failed on the Ray cluster: {e.cause!r}") from e.cause
                r = results[str(shard)]
                progress(f"shard {shard}: {r['prompts']} prompts in {r['wall_s']:.1f}s on {r['node']} (pid {r['pid']})")
        return [results[str(s)] for s in shards]
    finally:
        if started:
            ray.shutdown()
