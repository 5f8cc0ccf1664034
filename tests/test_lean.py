"""The memory-bounded quantizer: the same models as the Olive path, from the graph alone, in segments."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import onnx
import pytest

from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.lean.graph import Graph, tensor_bytes
from sdxl_qdq.convert.lean.passes import qnn_preprocess, quant_preprocess
from sdxl_qdq.convert.lean.policy import choose_quantizer
from sdxl_qdq.convert.lean.quantize import lean_quantize, plan
from sdxl_qdq.convert.recipe import DEFAULT_RECIPE, load_recipe
from sdxl_qdq.errors import ConfigError

RECIPE = load_recipe(DEFAULT_RECIPE)
FUSED = ("unet", "vae_decoder")  # the recipe fuses their GroupNorms after quantization


@pytest.mark.parametrize("component", COMPONENTS)
def test_lean_quantizer_gives_the_olive_model(qdq_artifacts, tmp_path: Path, component: str) -> None:
    """Same nodes, initializers (names and values), graph I/O and opsets as the recipe's Olive workflow, with
    calibration cut into 3 segments; only the metadata says which path made it."""
    float_model = qdq_artifacts.float.models[component]
    out, lines = tmp_path / "out", []
    steps = lean_quantize(
        RECIPE["workflows"][component],
        float_model,
        qdq_artifacts.calibration_dir,
        out,
        segments=3,
        progress=lines.append,
    )
    assert any(line.startswith("calibration segment 3/3") for line in lines), lines
    lean = onnx.load(str(out / "model.onnx"))
    stock = onnx.load(str(qdq_artifacts.qdq.models[component]))
    assert lean.opset_import == stock.opset_import
    for field in ("node", "initializer", "input", "output", "value_info"):
        assert getattr(lean.graph, field) == getattr(stock.graph, field), f"{component}: graph.{field} differs"
    assert {p.key: p.value for p in lean.metadata_props}["sdxl_qdq.quantizer"] == "lean"
    names = [s["step"] for s in steps]
    assert names[names.index("calibration") :] == [
        "calibration",
        "quantize",
        *(["graph_surgeries"] * (component in FUSED)),
        "save",
    ]
    assert json.loads((out / "io.json").read_text()) == json.loads((float_model.parent / "io.json").read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("lean-")], "work folder left behind"


@pytest.mark.long
def test_lean_quantizer_takes_tensor_quant_overrides_as_olive_does(qdq_artifacts, tmp_path: Path) -> None:
    """A recipe `sdxl-qdq propose` writes (``extra_options.TensorQuantOverrides``: activations narrowed to 8 bits)
    builds memory-bounded: the UNet equals what Olive's workflow makes of the same recipe, overrides included."""
    from sdxl_qdq.convert.recipe import quantize_component
    from sdxl_qdq.diagnose.propose import _activation_params, with_overrides

    unet = qdq_artifacts.float.models["unet"]
    acts = [a for a in _activation_params(qdq_artifacts.qdq.models["unet"]) if "/up_blocks.0/" in a][:6]
    assert len(acts) == 6
    recipe = with_overrides(RECIPE, "unet", acts, "QUInt8")
    assert plan(recipe["workflows"]["unet"])  # accepted
    lean_quantize(recipe["workflows"]["unet"], unet, qdq_artifacts.calibration_dir, tmp_path / "lean", segments=2)
    quantize_component(
        recipe, "unet", model=unet, calibration_dir=qdq_artifacts.calibration_dir, out=tmp_path / "olive"
    )
    lean, stock = (onnx.load(str(tmp_path / d / "model.onnx")) for d in ("lean", "olive"))
    for field in ("node", "initializer", "input", "output", "value_info"):
        assert getattr(lean.graph, field) == getattr(stock.graph, field), f"graph.{field} differs"
    seed = onnx.load(str(qdq_artifacts.qdq.models["unet"]), load_external_data=False)
    assert lean.graph.node != seed.graph.node or lean.graph.initializer != seed.graph.initializer, "overrides ignored"


def test_preprocessing_never_loads_the_weights(qdq_artifacts, tmp_path: Path, monkeypatch) -> None:
    """QNNPreprocess and quant_preprocess work on the graph; onnxruntime alone reads the weights (once)."""
    import onnx.external_data_helper as helper

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded into Python")

    monkeypatch.setattr(helper, "load_external_data_for_model", refuse)
    monkeypatch.setattr(onnx, "load_external_data_for_model", refuse)
    graph = Graph.load(qdq_artifacts.float.models["unet"])
    pre = qnn_preprocess(graph, tmp_path / "qnn", fuse_layernorm=True)
    assert "LayerNormalization" in {n.op_type for n in pre.proto.graph.node}
    post = quant_preprocess(pre, tmp_path / "quant")
    assert {p.key for p in post.proto.metadata_props} >= {"onnx.quant.pre_process", "onnx.infer"}
    large = [t for t in post.proto.graph.initializer if tensor_bytes(t) >= 1024]  # the external-data threshold
    assert large and all(t.data_location == onnx.TensorProto.EXTERNAL for t in large)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda w: w["passes"].update(extra={"type": "OnnxDynamicQuantization"}),
            "type 'OnnxDynamicQuantization' is not implemented by the memory-bounded quantizer",
        ),
        (
            lambda w: w["passes"]["quantization"].update(calibrate_method="Entropy"),
            r"implements .*'calibrate_method': 'MinMax'.* only; got \{'calibrate_method': 'Entropy'\}",
        ),
        (
            lambda w: w["passes"]["quantization"].update(extra_options={"WeightSymmetric": True}),
            r"extra_options \['WeightSymmetric'\]; the memory-bounded quantizer implements TensorQuantOverrides only",
        ),
        (
            lambda w: w["passes"]["qnn_preprocess"].update(inputs_to_make_channel_last=["sample"]),
            "inputs_to_make_channel_last",
        ),
        (lambda w: w["passes"].pop("quantization"), "one OnnxStaticQuantization"),
        (lambda w: w["passes"].update(again={"type": "QNNPreprocess"}), r"followed by GraphSurgeries passes only"),
    ],
)
def test_lean_refuses_what_it_does_not_implement(edit, message: str) -> None:
    workflow = copy.deepcopy(RECIPE["workflows"]["unet"])
    edit(workflow)
    with pytest.raises(ConfigError, match=message) as info:
        plan(workflow)
    assert "--quantizer olive" in str(info.value)


def test_auto_picks_by_the_model_never_by_this_machine(qdq_artifacts, monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice enters the build's keys: the same model must get the same quantizer on a 1 MiB machine as on
    this one (a judge on another host finds the build's artifacts), and lean past the fixed 16 GiB-host budget."""
    from sdxl_qdq import procs
    from sdxl_qdq.convert.lean import policy

    unet = qdq_artifacts.float.models["unet"]
    assert choose_quantizer(unet, "auto") == "olive"
    monkeypatch.setattr(procs, "total_memory_bytes", lambda: 1 << 20)
    monkeypatch.setattr(policy, "total_memory_bytes", lambda: 1 << 20, raising=False)
    assert choose_quantizer(unet, "auto") == "olive"
    assert choose_quantizer(unet, "auto", estimate=policy.STOCK_BUDGET + 1) == "lean"
    assert choose_quantizer(unet, "auto", estimate=policy.STOCK_BUDGET) == "olive"
    assert choose_quantizer(unet, "lean") == "lean" and choose_quantizer(unet, "olive") == "olive"
    with pytest.raises(ConfigError, match="quantizer 'fast' is not one of auto, olive, lean"):
        choose_quantizer(unet, "fast")


def test_stock_estimate_counts_every_activation(qdq_artifacts, tmp_path: Path) -> None:
    """The estimate behind 'auto' sizes every float activation, including those ONNX's own shape inference
    leaves open (the decoder's upsampling outputs): at least what a run with all of them exposed returns."""
    import numpy as np
    import onnxruntime

    from sdxl_qdq.convert.calibration import load_calibration
    from sdxl_qdq.convert.lean.policy import stock_peak_estimate

    model = qdq_artifacts.float.models["vae_decoder"]
    proto = onnx.load(str(model))
    outputs = {o.name for o in proto.graph.output}
    proto.graph.output.extend(
        onnx.ValueInfoProto(name=n) for node in proto.graph.node for n in node.output if n and n not in outputs
    )
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(None, load_calibration(qdq_artifacts.calibration_dir, "vae_decoder")[0])
    activations = sum(v.nbytes for v in values if isinstance(v, np.ndarray) and v.dtype in (np.float32, np.float16))
    assert stock_peak_estimate(model) >= 3 * Graph.load(model).weight_bytes() + activations


@pytest.mark.long
def test_build_runs_lean_in_its_own_process(qdq_artifacts, qdq_cache, tmp_path: Path) -> None:
    """``build(quantizer='lean')``: a separate cache entry per component, made by a child process that
    reports its steps and peak memory."""
    from sdxl_qdq.convert.stages import build

    result = build("tiny", cache=qdq_cache, quantizer="lean")
    assert set(result.keys["quantizer"].values()) == {"lean"}
    for c in COMPONENTS:
        assert result.keys["qdq"][c] != qdq_artifacts.keys["qdq"][c]
        stats = json.loads((result.qdq.models[c].parent / "build.json").read_text())
        assert stats["quantizer"] == "lean" and stats["peak_rss_gb"] > 0
        assert [s["step"] for s in stats["steps"]][-1] == "save"


def test_lean_build_collects_ranges_while_recording(qdq_artifacts, qdq_cache) -> None:
    """The components the float pipeline runs (text encoders, UNet) are prepared first, then calibrated by the
    recording itself: their QDQ step has no calibration of its own; the decoder (recorded, not run) calibrates as
    before. A prepared folder holds what lean_prepare wrote and nothing the later steps wrote into it."""
    from sdxl_qdq.convert.stages import build

    result = build("tiny", cache=qdq_cache, quantizer="lean")
    assert sorted(result.keys["prepared"]) == ["text_encoder", "text_encoder_2", "unet"]
    for c in COMPONENTS:
        steps = [s["step"] for s in json.loads((result.qdq.models[c].parent / "build.json").read_text())["steps"]]
        assert ("calibration" in steps) == (c == "vae_decoder"), (c, steps)
    for c, key in result.keys["prepared"].items():
        folder = qdq_cache.root / "prepared" / key
        assert (result.calibration_dir / c / "ranges.json").is_file()
        assert {p.name for p in folder.iterdir()} == {
            "model.onnx",
            "model.onnx.data",
            "pre.onnx",
            "prepared.json",
            "build.json",
            "build.log",
            "key.json",
            "manifest.json",
        }, c


def test_a_warm_lean_build_does_not_touch_its_prepared_folders(qdq_cache) -> None:
    """The prepared folders (the real UNet's: 10 GB) are read only by the recording and the quantization: once
    those are cached, a build neither checks nor rebuilds them, pruned or not; their keys still name them."""
    from sdxl_qdq.cache import ArtifactCache
    from sdxl_qdq.convert.stages import build

    cold = build("tiny", cache=qdq_cache, quantizer="lean")
    warm_cache = ArtifactCache(qdq_cache.root)
    warm = build("tiny", cache=warm_cache, quantizer="lean")
    assert warm_cache.misses == [] and "prepared" not in warm_cache.hits, warm_cache.hits
    assert warm.keys["prepared"] == cold.keys["prepared"] and warm.qdq.models == cold.qdq.models


@pytest.mark.parametrize("component", ["text_encoder_2", "unet"])
def test_collected_ranges_are_the_calibrators_ranges_of_the_recorded_calls(
    qdq_artifacts, qdq_cache, component: str
) -> None:
    """Bit for bit what segmented calibration (onnxruntime's calibrator, with the lean build's session settings)
    computes over the calls the recording made: collecting while recording changes when the ranges are computed,
    not what they are."""
    import numpy as np
    from onnxruntime.quantization.calibrate import load_tensors_data

    from sdxl_qdq.convert.calibration import iter_calibration
    from sdxl_qdq.convert.lean.segmented import segmented_minmax_ranges
    from sdxl_qdq.convert.stages import build

    result = build("tiny", cache=qdq_cache, quantizer="lean")
    prepared = qdq_cache.root / "prepared" / result.keys["prepared"][component]
    op_types = json.loads((prepared / "prepared.json").read_text())["op_types"]
    collected = load_tensors_data(result.calibration_dir / component / "ranges.json")
    segmented = segmented_minmax_ranges(
        prepared / "model.onnx",
        lambda: iter_calibration(result.calibration_dir, component),
        segments=2,
        op_types_to_calibrate=op_types,
        optimized=True,
    )
    assert set(collected.data) == set(segmented.data) and len(collected.data) > 100
    for name, expected in segmented.data.items():
        for got, want in zip(collected.data[name].range_value, expected.range_value):
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_recording_through_prepared_graphs_moves_trajectories_by_rounding_only(qdq_artifacts, qdq_cache) -> None:
    """The lean build records its trajectories with the recipe's preprocessed UNet (the same float function, other
    kernels) and calibrates with onnxruntime's optimizations: its recorded inputs and ranges differ from the float
    export's, calibrated as onnxruntime's calibrator does, by float rounding (measured on tiny: inputs 5.7e-7 of
    their largest value, ranges 1.2e-6 of their width, a uint16 step being 1.5e-5); bounded here at 1e-5. (On
    canary the gate passes all 404 checks, none changed, with the lean build.)"""
    import numpy as np
    from onnxruntime.quantization.calibrate import load_tensors_data

    from sdxl_qdq.convert.calibration import load_calibration
    from sdxl_qdq.convert.lean.segmented import segmented_minmax_ranges
    from sdxl_qdq.convert.stages import build

    lean = build("tiny", cache=qdq_cache, quantizer="lean")
    assert lean.calibration_dir != qdq_artifacts.calibration_dir
    for component in ("unet", "vae_decoder"):
        for ours, theirs in zip(
            load_calibration(lean.calibration_dir, component),
            load_calibration(qdq_artifacts.calibration_dir, component),
            strict=True,
        ):
            for name, x in theirs.items():
                assert np.abs(ours[name] - x).max() <= 1e-5 * np.abs(x).max(), (component, name)
    prepared = qdq_cache.root / "prepared" / lean.keys["prepared"]["unet"]
    op_types = json.loads((prepared / "prepared.json").read_text())["op_types"]
    collected = load_tensors_data(lean.calibration_dir / "unet" / "ranges.json").data
    export_trajectories = segmented_minmax_ranges(
        prepared / "model.onnx",
        lambda: load_calibration(qdq_artifacts.calibration_dir, "unet"),
        segments=1,
        op_types_to_calibrate=op_types,
    ).data
    for name, theirs in export_trajectories.items():
        low, high = (np.asarray(v, dtype=np.float64) for v in theirs.range_value)
        width = max(float(np.max(high - low)), 1e-12)
        for got, want in zip(collected[name].range_value, theirs.range_value):
            assert float(np.max(np.abs(np.asarray(got, dtype=np.float64) - want))) <= 1e-5 * width, name


@pytest.mark.long
def test_isolated_export_equals_in_process_export(qdq_artifacts, tmp_path: Path) -> None:
    """One component per process (the real-size path) writes the same files as the in-process export."""
    from sdxl_qdq.convert.export import export_components

    stats = export_components(qdq_artifacts.pipeline_dir, qdq_artifacts.source, tmp_path, isolate=True)
    assert set(stats) == set(COMPONENTS) and all(s["peak_rss_gb"] > 0 for s in stats.values())
    for c in COMPONENTS:
        for name in ("model.onnx", "model.onnx.data", "io.json"):
            assert (tmp_path / c / name).read_bytes() == (qdq_artifacts.float.models[c].parent / name).read_bytes(), (
                c,
                name,
            )


def test_staged_recording_keeps_the_pipeline_call_order(qdq_artifacts, tmp_path: Path) -> None:
    """Calibration runs one component at a time, yet each component's samples are the ones (and in the order)
    the whole pipeline feeds it."""
    import numpy as np

    from sdxl_qdq.convert.calibration import load_calibration, record_calibration
    from sdxl_qdq.models.prompts import load_prompts
    from sdxl_qdq.run.pipeline import OrtSDXLPipeline

    prompts = load_prompts("train", path=qdq_artifacts.source.prompts)[:2]
    record_calibration(qdq_artifacts.float, prompts, tmp_path, steps=(1, 2))
    seen: dict[str, list] = {c: [] for c in COMPONENTS}
    pipe = OrtSDXLPipeline(
        qdq_artifacts.float, recorder=lambda c, feeds: seen[c].append({k: v.copy() for k, v in feeds.items()})
    )
    for p in prompts:
        for k in (1, 2):
            pipe(p.text, steps=k)
    for c in COMPONENTS:
        recorded = load_calibration(tmp_path, c)
        assert len(recorded) == len(seen[c]) == {"unet": 6}.get(c, 4)
        for got, want in zip(recorded, seen[c]):
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{c}/{name}")


def test_real_random_source_has_the_real_sizes() -> None:
    """sdxl-turbo:random builds stabilityai/sdxl-turbo's architectures: parameter counts of the real
    components (counted on torch's meta device, no memory)."""
    import torch

    from sdxl_qdq.models.sdxl import (
        REAL_TEXT_ENCODER,
        REAL_TEXT_ENCODER_2,
        REAL_UNET,
        REAL_VAE,
        build_component_from_config,
    )

    configs = {
        "text_encoder": REAL_TEXT_ENCODER,
        "text_encoder_2": REAL_TEXT_ENCODER_2,
        "unet": REAL_UNET,
        "vae": REAL_VAE,
    }
    counts = {}
    with torch.device("meta"):
        for name in configs:
            counts[name] = sum(p.numel() for p in build_component_from_config(name, configs, 0).parameters())
    assert counts == {
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
        "unet": 2_567_463_684,
        "vae": 83_653_863,
    }


def test_lean_child_usage_and_cleanup_on_failure(qdq_artifacts, tmp_path: Path, capsys) -> None:
    """``python -m sdxl_qdq _lean``: wrong arguments are a usage error; a refused recipe is one line naming the
    option and the fix, and leaves nothing in the cache entry."""
    from sdxl_qdq.cli import main

    with pytest.raises(SystemExit) as usage:
        main(["_lean"])
    assert usage.value.code == 2
    bad = tmp_path / "recipe.json"
    recipe = copy.deepcopy(RECIPE)
    recipe["workflows"]["vae_decoder"]["passes"]["quantization"]["calibrate_method"] = "Percentile"
    bad.write_text(json.dumps(recipe))
    out = tmp_path / "cache" / "entry"
    out.parent.mkdir()
    capsys.readouterr()
    assert (
        main(
            [
                "_lean",
                str(bad),
                "vae_decoder",
                str(qdq_artifacts.float.models["vae_decoder"]),
                str(qdq_artifacts.calibration_dir),
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ") and "calibrate_method" in err and "--quantizer olive" in err and err.count("\n") == 1
    )
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_lean_defaults_are_olives() -> None:
    """An option a recipe leaves out means what it means to Olive's OnnxStaticQuantization."""
    from olive.hardware.accelerator import DEFAULT_CPU_ACCELERATOR
    from olive.passes.onnx.quantization import OnnxStaticQuantization

    from sdxl_qdq.convert.lean.quantize import QuantSettings

    config = OnnxStaticQuantization._default_config(DEFAULT_CPU_ACCELERATOR)
    olive = {k: config[k].default_value for k in ("activation_type", "precision", "quant_preprocess", "per_channel")}
    ours = QuantSettings.from_options({})
    assert (ours.activation_type, ours.weight_type, ours.quant_preprocess, ours.per_channel) == (
        str(olive["activation_type"]),
        str(olive["precision"]),
        olive["quant_preprocess"],
        olive["per_channel"],
    )
