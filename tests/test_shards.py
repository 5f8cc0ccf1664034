"""Shards: part k of N of the gate's work drawn apart, merged by one judge. Three shards of the canary give the single
run's images byte for byte and its metrics to float rounding; a missing, overlapping or mismatched shard is refused
with one line; a shard is fixed by its prompts' ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sdxl_qdq.errors import ConfigError
from sdxl_qdq.models.prompts import Prompt, Shard, load_prompts

VARIANTS = ("float@1", "qdq@1", "float@2", "qdq@2")


@pytest.fixture(scope="module")
def canary(qdq_cache):
    from sdxl_qdq.convert.stages import build

    return build("canary", cache=qdq_cache)


@pytest.fixture(scope="module")
def three_shards(canary, qdq_cache, tmp_path_factory) -> list[Path]:
    from sdxl_qdq.flows import run_shard

    root = tmp_path_factory.mktemp("shards")
    folders = [root / f"shard-{k}" for k in (1, 2, 3)]
    for k, folder in zip((1, 2, 3), folders):
        run_shard(canary, Shard(k, 3), folder, cache=qdq_cache)
    return folders


def _evaluation_numbers(ev) -> dict[str, float]:
    numbers = {f"mse{k}-{i}": v for k, values in ev.mse.items() for i, v in enumerate(values)}
    numbers |= {f"clip-{label}-{i}": v for label, values in ev.clip.items() for i, v in enumerate(values)}
    numbers |= {f"fid-{label}": v for label, v in ev.fid.items()}
    for metric in ("kid", "cmmd"):
        numbers |= {f"{metric}-{label}": v for label, v in ev.measured[metric]["values"].items()}
    numbers |= {
        f"text-{kind}-{i}": v for kind, values in ev.measured["text_response"].items() for i, v in enumerate(values)
    }
    return numbers


def test_three_shards_give_the_single_run(canary, qdq_cache, three_shards, tmp_path: Path) -> None:
    """The merge of 3 shards: every image and text response of the four gated sets byte for byte the single run's, and
    every per-image and set metric equal to float rounding, computed from the shards' records."""
    from sdxl_qdq.flows import evaluate_build, evaluate_merged, merge_shards
    from sdxl_qdq.judge.backbones import resolve_backbones

    single, _ = evaluate_build(canary, cache=qdq_cache)
    backbones = resolve_backbones("auto", "auto", model=canary.source.name)
    merged = merge_shards(canary, three_shards, tmp_path / "merged", backbones=backbones)
    sizes = [len(json.loads((f / "manifest.json").read_text())["prompts"]) for f in three_shards]
    assert sum(sizes) == 100 and min(sizes) > 0
    compared = 0
    for label in VARIANTS:
        ours = sorted(p.name for p in merged.dirs[label].iterdir())
        theirs = sorted(p.name for p in single.image_dirs[label].iterdir() if p.suffix in (".png", ".npy"))
        assert ours == theirs, label
        for name in ours:
            assert (merged.dirs[label] / name).read_bytes() == (single.image_dirs[label] / name).read_bytes(), name
            compared += 1
    assert compared == 4 * 200  # an image and a text response per prompt and set
    ev = evaluate_merged(canary, merged, backbones)
    assert [p.id for p in ev.prompts] == [p.id for p in single.prompts]
    a, b = _evaluation_numbers(single), _evaluation_numbers(ev)
    assert a.keys() == b.keys() and len(a) > 800
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key


def test_the_judge_reads_the_records_not_the_backbones(canary, three_shards, tmp_path: Path, monkeypatch) -> None:
    """The merged judge's FID, KID and CMMD come from the shards' records: with the backbones made to fail, it still
    judges."""
    from sdxl_qdq.flows import evaluate_merged, merge_shards
    from sdxl_qdq.judge import backbones as bb

    backbones = bb.resolve_backbones("auto", "auto", model=canary.source.name)
    merged = merge_shards(canary, three_shards, tmp_path / "merged", backbones=backbones)

    def no_backbone(*args, **kwargs):
        raise AssertionError("a backbone ran in the judge")

    monkeypatch.setattr(bb, "_fid_metric", no_backbone)
    monkeypatch.setattr(bb, "clip_model_and_processor", no_backbone)
    bb._EMBEDDINGS.clear()
    ev = evaluate_merged(canary, merged, backbones)
    assert set(ev.fid) == {"float@1", "qdq@1", "qdq@2"} and ev.measured["kid"]["values"]


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"shard 3/3 is missing \(1 of 3 missing\): draw it with `sdxl-qdq shard --shard 3/3`"),
        ("twice", r"shard 2/3 given twice \(.*shard-2 and .*again\): give each shard once"),
        ("other-build", r"shard .* differs from .* in its keys"),
        ("other-backbones", r"shard .* differs from .* in its backbones"),
        ("other-count", r"shards of different counts"),
        ("changed-image", r"float@1/.*\.png.*(changed|truncated)"),
        ("not-a-shard", r"has no manifest\.json"),
        ("overlap", r"prompt '.*' is in two shards"),
    ],
)
def test_a_bad_set_of_shards_is_refused_in_one_line(
    canary, three_shards, tmp_path: Path, case: str, message: str
) -> None:
    from sdxl_qdq.judge.shards import merge

    one, two, three = three_shards
    prompts = load_prompts("all", path=canary.source.prompts)
    if case == "missing":
        given = [one, two]
    elif case == "twice":
        given = [one, two, _copy(two, tmp_path / "again"), three]
    elif case in ("other-build", "other-backbones", "other-count"):
        other = _copy(three, tmp_path / "other")
        manifest = json.loads((other / "manifest.json").read_text())
        if case == "other-build":
            _edit_manifest(other, keys={**manifest["keys"], "qdq": "another recipe"})
        elif case == "other-backbones":
            _edit_manifest(other, backbones={**manifest["backbones"], "fid": "another-net"})
        else:
            _edit_manifest(other, shard="3/4")
        given = [one, two, other]
    elif case == "changed-image":
        other = _copy(three, tmp_path / "other")
        image = sorted((other / "images" / "float@1").glob("*.png"))[0]
        image.write_bytes(image.read_bytes()[:-1] + b"\x00")
        given = [one, two, other]
    elif case == "not-a-shard":
        given = [one, two, tmp_path]
    else:  # a prompt of shard 1 claimed by shard 3 too
        other = _copy(three, tmp_path / "other")
        manifest = json.loads((other / "manifest.json").read_text())
        first = json.loads((one / "manifest.json").read_text())["prompts"][0]
        _edit_manifest(other, prompts=[first, *manifest["prompts"]])
        given = [one, two, other]
    with pytest.raises(ConfigError, match=message) as info:
        merge(given, prompts, tmp_path / "merged")
    assert "\n" not in str(info.value)


def test_shards_of_another_prompt_set_are_refused(canary, three_shards, tmp_path: Path) -> None:
    from sdxl_qdq.judge.shards import merge

    prompts = load_prompts("all", path=canary.source.prompts)[:-1]
    with pytest.raises(
        ConfigError, match=r"drawn on another prompt set \(100 prompts.*than the judge's \(99 prompts\)"
    ):
        merge(three_shards, prompts, tmp_path / "merged")


def test_a_prompts_shard_is_fixed_by_its_id() -> None:
    """Deterministic by id: the same prompt lands in the same shard whatever else the set holds or its order; every
    prompt in exactly one shard; shards of the 100 COCO prompts are of similar size."""
    prompts = load_prompts("all")
    for n in (1, 2, 3, 7):
        parts = [Shard(k, n).select(prompts) for k in range(1, n + 1)]
        assert sorted(p.id for part in parts for p in part) == sorted(p.id for p in prompts)
        assert max(map(len, parts)) - min(map(len, parts)) <= 40 // n + 10
    shuffled = list(reversed(prompts[10:]))
    for k in (1, 2, 3):
        assert {p.id for p in Shard(k, 3).select(shuffled)} == {p.id for p in Shard(k, 3).select(prompts)} - {
            p.id for p in prompts[:10]
        }
    assert Shard(2, 3).holds(Prompt(5, "another text", "test", name=prompts[5].id)) == Shard(2, 3).holds(prompts[5])


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "1/0", "a/b", "-1/2"])
def test_a_bad_shard_is_one_line_naming_it(text: str) -> None:
    with pytest.raises(ConfigError, match=rf"--shard '{text}' is not k/N with 1 <= k <= N \(e\.g\. --shard 2/3"):
        Shard.parse(text)


def test_an_empty_shard_is_refused() -> None:
    prompts = load_prompts("all")[:2]
    empty = next(Shard(k, 9) for k in range(1, 10) if not any(Shard(k, 9).holds(p) for p in prompts))
    with pytest.raises(ConfigError, match=r"holds none of them; use fewer shards than N=9"):
        empty.select(prompts)


def test_set_metrics_of_records_converge_and_carry_intervals(three_shards, canary) -> None:
    """``set_metrics`` of the merged records: the whole set's FID equals the evaluation's, each interval holds its
    value, and the first-N metrics are those of the first N prompts."""
    from sdxl_qdq.flows import merge_shards
    from sdxl_qdq.judge.backbones import fid_from_features, resolve_backbones
    from sdxl_qdq.judge.shards import set_metrics

    backbones = resolve_backbones("auto", "auto", model=canary.source.name)
    merged = merge_shards(canary, three_shards, three_shards[0].parent / "merged-metrics", backbones=backbones)
    whole, first = set_metrics(merged.records), set_metrics(merged.records, first=40)
    assert whole["prompts"] == 100 and first["prompts"] == 40
    for name in ("fid", "kid", "cmmd", "clip_mean"):
        for v in whole[name].values():
            assert v["interval"][0] <= v["value"] <= v["interval"][1], name
    r = merged.records
    assert first["fid"]["qdq@1"]["value"] == pytest.approx(
        fid_from_features(r["fid/qdq@1"][:40], r["fid/reference"][:40])
    )
    assert np.isfinite(whole["mse_median"]["qdq@2"])


def test_the_gate_judges_merged_shards_against_the_baseline(canary, qdq_cache, three_shards) -> None:
    """``--qdq-shards``: the merge is gated as the single run is, every check with the single run's status."""
    from sdxl_qdq.flows import prepare_gate

    merged = prepare_gate(canary, cache=qdq_cache, from_shards=three_shards)
    single = prepare_gate(canary, cache=qdq_cache)
    ours = [(c.metric, c.detail, c.status) for c in merged.all_checks()]
    assert ours == [(c.metric, c.detail, c.status) for c in single.all_checks()] and len(ours) > 400
    assert "3 shards merged" in merged.evaluation.ep_detail
    with pytest.raises(ConfigError, match=r"--qdq-shards judges shards drawn elsewhere"):
        prepare_gate(canary, cache=qdq_cache, from_shards=three_shards, update=True)
    with pytest.raises(ConfigError, match=r"drawn on the cpu EP .* judge them with --qdq-ep cpu"):
        prepare_gate(canary, cache=qdq_cache, from_shards=three_shards, ep="qnn", baseline_ep="cpu")


def test_images_drawn_with_a_chosen_thread_count_are_cached_apart() -> None:
    """The CPU EP's sums depend on its thread count (qdq images differ by up to 4 levels between 1 thread and the
    default): a set drawn with ``threads`` has a key of its own; without it, the key is what it always was."""
    from sdxl_qdq.run.generate import Variant, _inputs

    prompts = load_prompts("all")[:3]
    plain = _inputs({"build": 1}, Variant("qdq", 1), prompts, None)
    assert "threads" not in plain and plain == _inputs({"build": 1}, Variant("qdq", 1), prompts, None, None)
    assert _inputs({"build": 1}, Variant("qdq", 1), prompts, None, 1) == {"threads": 1, **plain}


def test_judge_shards_writes_the_set_metrics_of_the_merge(canary, qdq_cache, three_shards, tmp_path: Path) -> None:
    """`sdxl-qdq judge-shards`: the merge's set metrics from the records, at the whole size and the first N, equal to
    the merged evaluation's FID."""
    from sdxl_qdq.cli import main
    from sdxl_qdq.flows import evaluate_merged, merge_shards
    from sdxl_qdq.judge.backbones import resolve_backbones

    out = tmp_path / "judge"
    argv = [
        "judge-shards",
        *map(str, three_shards),
        "--out",
        str(out),
        "--sizes",
        "40",
        "--cache-dir",
        str(qdq_cache.root),
    ]
    assert main(argv) == 0
    written = json.loads((out / "evaluation.json").read_text())
    assert sorted(written["metrics"]) == ["100", "40"] and written["prompts"] == 100
    assert written["ep"].endswith("3 shards merged") and "canary_world.jsonl" in written["prompt_set"]
    backbones = resolve_backbones("auto", "auto", model="canary")
    ev = evaluate_merged(canary, merge_shards(canary, three_shards, tmp_path / "m", backbones=backbones), backbones)
    for label, fid in ev.fid.items():
        assert written["metrics"]["100"]["fid"][label]["value"] == pytest.approx(fid, rel=1e-9)
