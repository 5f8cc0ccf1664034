"""onnxruntime's calibration and quantizer made linear in the graph (sdxl_qdq/convert/ort_patches.py): the same bytes
as onnxruntime's own code, on the tiny UNet (the largest graph CI has) and on the decoder with per-channel
weights; the indexes follow every change the quantizer makes; a patched class gets back what it had."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import shutil
import uuid
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from sdxl_qdq.convert.calibration import load_calibration, write_distinct
from sdxl_qdq.convert.lean.segmented import segmented_minmax_ranges
from sdxl_qdq.convert.ort_patches import linear_quantizer, patched
from sdxl_qdq.convert.recipe import DEFAULT_RECIPE, load_recipe, minmax_only, quantize_component


def _private_copy(model: Path, dest: Path) -> Path:
    """onnxruntime writes ``<model>-inferred.onnx`` beside its input: never beside a cached artifact."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copyfile(model.parent / name, dest / name)
    return dest / "model.onnx"


def _onnxruntime_augment_graph():
    """MinMaxCalibrater.augment_graph as onnxruntime ships it (Olive wraps it once its pass has run here)."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    fn = MinMaxCalibrater.augment_graph
    while fn.__name__ != "augment_graph":
        fn = inspect.getclosurevars(fn).nonlocals["original_augment_graph"]
    return fn


def _counting_uuids(monkeypatch) -> None:
    """uuid4 names the added initializers: the same sequence for both runs."""
    counter = itertools.count()
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=next(counter)))


# onnxruntime's own code takes over a minute on the tiny UNet (the square of its node count): that case is `slow`
CASES = [pytest.param("unet", False, marks=pytest.mark.slow), ("text_encoder_2", False), ("vae_decoder", True)]


@pytest.mark.parametrize(("component", "per_channel"), CASES)
def test_linear_augmentation_is_onnxruntimes_graph(
    qdq_artifacts, tmp_path: Path, monkeypatch, component: str, per_channel: bool
) -> None:
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    model = _private_copy(qdq_artifacts.float.models[component], tmp_path / "float")
    monkeypatch.setattr(MinMaxCalibrater, "augment_graph", _onnxruntime_augment_graph())
    augmented = {}
    for variant in ("onnxruntime", "linear"):
        _counting_uuids(monkeypatch)
        calibrator = MinMaxCalibrater(
            str(model), augmented_model_path=str(tmp_path / f"{variant}.onnx"), per_channel=per_channel
        )
        with patched(linear_quantizer()) if variant == "linear" else contextlib.nullcontext():
            calibrator.augment_graph()
        augmented[variant] = (tmp_path / f"{variant}.onnx").read_bytes()
    reductions = sum(n.op_type == "ReduceMin" for n in onnx.load_from_string(augmented["linear"]).graph.node)
    assert reductions > 50
    assert augmented["linear"] == augmented["onnxruntime"]


@pytest.mark.parametrize(("component", "per_channel"), CASES)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the float text encoders'
# attention mask holds -inf (the recipe's mask surgery replaces it): onnxruntime warns computing its zero point
def test_linear_quantizer_is_onnxruntimes_model(
    qdq_artifacts, tmp_path: Path, component: str, per_channel: bool
) -> None:
    """quantize_static from fixed ranges (no calibration) with the QNN QDQ configuration: byte for byte."""
    from onnxruntime.quantization import QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    model = _private_copy(qdq_artifacts.float.models[component], tmp_path / "float")
    feeds = load_calibration(qdq_artifacts.calibration_dir, component)[:8]
    config = get_qnn_qdq_config(
        str(model), None, activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8, per_channel=per_channel
    )
    ranges = segmented_minmax_ranges(
        model, lambda: feeds, segments=1, op_types_to_calibrate=config.op_types_to_quantize
    )
    save_tensors_data(ranges, tmp_path / "ranges.json")
    kwargs = {k: v for k, v in inspect.getmembers(config) if not k.startswith("_") and k != "calibration_data_reader"}
    produced = {}
    for variant in ("onnxruntime", "linear"):
        out = tmp_path / variant / "model.onnx"
        out.parent.mkdir()
        with patched(linear_quantizer()) if variant == "linear" else contextlib.nullcontext():
            quantize_static(
                str(model),
                str(out),
                calibration_data_reader=None,
                calibration_cache_path=str(tmp_path / "ranges.json"),
                **{**kwargs, "use_external_data_format": True},
            )
        produced[variant] = [p.read_bytes() for p in sorted(out.parent.iterdir())]
    quantized = onnx.load_from_string(produced["linear"][0])
    assert sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node) > 50
    assert produced["linear"] == produced["onnxruntime"]


def _graph_model(initializers: list[str], nodes: list[tuple[str, list[str]]]):
    from onnxruntime.quantization.onnx_model import ONNXModel

    inits = [helper.make_tensor(n, TensorProto.FLOAT, [1], [0.0]) for n in initializers]
    graph = helper.make_graph(
        [helper.make_node("Add", ins, [f"{name}_out"], name=name) for name, ins in nodes],
        "g",
        [],
        [],
        initializer=inits,
    )
    return ONNXModel(helper.make_model(graph))


def test_indexes_follow_appends_removals_and_replacements(monkeypatch) -> None:
    """Inside quantize_model the lookups use indexes; every way the quantizer changes the graph keeps them right."""
    from onnxruntime.quantization import quant_utils
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    model = _graph_model(["a", "b", "c"], [("n1", ["x", "a"]), ("n2", ["x", "x"]), ("n3", ["y", "b"])])
    seen = {}

    def quantize_model(self) -> None:  # what the quantizer does, checked step by step
        find = quant_utils.find_by_name
        inits = self.model.initializer()
        seen["a"] = find("a", inits).name
        self.model.remove_initializer(find("b", inits))  # removal: later names shift
        seen["b gone"] = find("b", inits)
        seen["c"] = find("c", inits).name
        self.model.add_initializer(helper.make_tensor("d", TensorProto.FLOAT, [1], [1.0]))  # append
        self.model.initializer_extend([helper.make_tensor("e", TensorProto.FLOAT, [1], [2.0])])
        seen["d"], seen["e"] = find("d", inits).name, self.model.get_initializer("e").name
        self.model.replace_input_of_all_nodes("x", "x_dq")
        self.model.add_node(helper.make_node("Relu", ["x_dq"], ["r"], name="n4"))  # appended reader
        self.model.replace_input_of_all_nodes("x_dq", "x_dq2")
        ONNXModel.replace_node_input(self.model.graph().node[2], "y", "x_dq2")  # behind the index's back
        self.model.replace_input_of_all_nodes("x_dq2", "z")
        self.model.graph().initializer[0].name = "a2"  # renamed in place: its old name is gone
        seen["a renamed"] = find("a", inits)

    monkeypatch.setattr(QDQQuantizer, "quantize_model", quantize_model)  # what linear_quantizer wraps
    fake = type("Fake", (), {})()
    fake.model = model
    with patched(linear_quantizer()):
        QDQQuantizer.quantize_model(fake)
    assert seen == {"a": "a", "b gone": None, "c": "c", "d": "d", "e": "e", "a renamed": None}
    assert [list(n.input) for n in model.graph().node] == [["z", "a"], ["z", "z"], ["z", "b"], ["z"]]


def test_patched_restores_what_the_class_had() -> None:
    from onnxruntime.quantization.onnx_model import ONNXModel

    before = {name: inspect.getattr_static(ONNXModel, name) for name in ("replace_node_input", "get_initializer")}
    with patched(linear_quantizer()):
        assert isinstance(inspect.getattr_static(ONNXModel, "replace_node_input"), staticmethod)
    assert {name: inspect.getattr_static(ONNXModel, name) for name in before} == before


def test_distinct_samples_keep_the_first_of_each_call(qdq_artifacts, tmp_path: Path) -> None:
    """The text encoders see each prompt twice (at 1 and at 2 steps): the view keeps one of each, in call order."""
    kept, recorded = write_distinct(qdq_artifacts.calibration_dir, "text_encoder", tmp_path / "te")
    assert recorded == 2 * kept and kept == 50
    original = load_calibration(qdq_artifacts.calibration_dir, "text_encoder")
    view = load_calibration(tmp_path, "te")
    assert all((v["input_ids"] == o["input_ids"]).all() for v, o in zip(view, original[::2]))
    assert json.loads((tmp_path / "te" / "inputs.json").read_text())["samples"] == kept


def test_only_plain_minmax_drops_repeated_samples() -> None:
    workflow = load_recipe(DEFAULT_RECIPE)["workflows"]["unet"]
    assert minmax_only(workflow)
    for edit in (
        {"calibrate_method": "Entropy"},
        {"extra_options": {"CalibMovingAverage": True}},
        {"type": "OnnxBlockWiseRtnQuantization"},
    ):
        changed = json.loads(json.dumps(workflow))
        changed["passes"]["quantization"].update(edit)
        assert not minmax_only(changed), edit


def test_olive_path_on_distinct_samples_gives_the_same_model(qdq_artifacts, tmp_path: Path, monkeypatch) -> None:
    """The text encoder's workflow over all 100 recorded samples, and over the 50 distinct ones the build uses."""
    import sdxl_qdq.convert.recipe as recipe_module

    recipe = load_recipe(DEFAULT_RECIPE)
    model = _private_copy(qdq_artifacts.float.models["text_encoder"], tmp_path / "float")
    shutil.copy(qdq_artifacts.float.models["text_encoder"].parent / "io.json", tmp_path / "float" / "io.json")
    quantize_component(
        recipe, "text_encoder", model=model, calibration_dir=qdq_artifacts.calibration_dir, out=tmp_path / "distinct"
    )
    monkeypatch.setattr(recipe_module, "minmax_only", lambda workflow: False)
    quantize_component(
        recipe, "text_encoder", model=model, calibration_dir=qdq_artifacts.calibration_dir, out=tmp_path / "all"
    )
    for name in ("model.onnx", "model.onnx.data"):
        assert (tmp_path / "distinct" / name).read_bytes() == (tmp_path / "all" / name).read_bytes(), name
