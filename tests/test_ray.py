"""Ray as the engine of a sharded gate: a local Ray cluster of 2 workers draws 2 shards of the canary at once, and
their merge is the serial single run, images byte for byte and metrics to float rounding."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxl_qdq.errors import ConfigError

ray = pytest.importorskip("ray", reason="Ray is the optional extra [ray]: pip install -e '.[host,ray]' runs this test")


def test_two_ray_workers_give_the_serial_run(qdq_cache, tmp_path: Path) -> None:
    from sdxl_qdq.convert.stages import build
    from sdxl_qdq.executors import ShardJob, run_shards, shard_folder
    from sdxl_qdq.flows import evaluate_build, evaluate_merged, merge_shards
    from sdxl_qdq.judge.backbones import resolve_backbones
    from sdxl_qdq.models.prompts import Shard

    canary = build("canary", cache=qdq_cache)
    job = ShardJob(model="canary", cache_dir=str(qdq_cache.root))  # the serial run's thread count (see --threads)
    timing = run_shards(job, 2, tmp_path / "out", executor="ray", workers=2)
    assert [t["shard"] for t in timing] == ["1/2", "2/2"] and sum(t["prompts"] for t in timing) == 100
    assert len({t["pid"] for t in timing}) == 2  # two worker processes, not this one
    assert not ray.is_initialized()  # the local cluster it started is stopped
    backbones = resolve_backbones("auto", "auto", model="canary")
    folders = [shard_folder(tmp_path / "out", Shard(k, 2)) for k in (1, 2)]
    merged = merge_shards(canary, folders, tmp_path / "merged", backbones=backbones)
    single, _ = evaluate_build(canary, cache=qdq_cache)
    for label in ("float@1", "qdq@1", "float@2", "qdq@2"):
        names = sorted(p.name for p in single.image_dirs[label].iterdir() if p.suffix in (".png", ".npy"))
        assert names == sorted(p.name for p in merged.dirs[label].iterdir())
        for name in names:
            assert (merged.dirs[label] / name).read_bytes() == (single.image_dirs[label] / name).read_bytes(), name
    ev = evaluate_merged(canary, merged, backbones)
    for label in ("float@1", "qdq@1", "qdq@2"):
        assert ev.fid[label] == pytest.approx(single.fid[label], rel=1e-6)
        assert ev.clip[label] == pytest.approx(single.clip[label], rel=1e-6)
        for metric in ("kid", "cmmd"):
            assert ev.measured[metric]["values"][label] == pytest.approx(
                single.measured[metric]["values"][label], rel=1e-6, abs=1e-9
            )


def test_an_unknown_executor_is_refused_before_any_work(tmp_path: Path) -> None:
    from sdxl_qdq.executors import ShardJob, run_shards

    with pytest.raises(ConfigError, match=r"--executor 'dask' is not one of \('serial', 'ray'\)"):
        run_shards(ShardJob(model="canary"), 2, tmp_path, executor="dask")
    assert not any(tmp_path.iterdir())
