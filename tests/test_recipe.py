"""Recipe files: validation with clear errors, placeholder filling, and Olive's own schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdxl_qdq.convert.recipe import DEFAULT_RECIPE, PLACEHOLDERS, fill, load_recipe, quantize_component
from sdxl_qdq.errors import BuildError, ConfigError


def test_seed_recipe_is_the_documented_one() -> None:
    recipe = load_recipe()
    for component, workflow in recipe["workflows"].items():
        passes = list(workflow["passes"].values())
        types = [p["type"] for p in passes]
        expected = (
            ["QNNPreprocess", "GraphSurgeries", "OnnxStaticQuantization"]
            if component.startswith("text_encoder")
            else ["QNNPreprocess", "OnnxStaticQuantization", "GraphSurgeries"]
        )
        assert types == expected, f"{component}: passes {types}"
        assert passes[0]["fuse_layernorm"] is True
        quant = next(p for p in passes if p["type"] == "OnnxStaticQuantization")
        assert (quant["quant_format"], quant["activation_type"], quant["precision"], quant["calibrate_method"]) == (
            "QDQ",
            "uint16",
            "uint8",
            "MinMax",
        )
        assert quant["quant_preprocess"] is True and quant["prepare_qdq_config"] is True
        assert workflow["systems"][workflow["target"]]["accelerators"][0]["execution_providers"] == [
            "QNNExecutionProvider"
        ]
        if component.startswith("text_encoder"):
            assert passes[1]["surgeries"] == [{"surgeon": "ReplaceAttentionMaskValue"}]
        else:  # GroupNorm as HTP's native op, after quantization (sdxl_qdq/surgeons.py)
            assert passes[-1]["surgeries"] == [{"surgeon": "FuseGroupNormalization"}]


def test_the_unfused_groupnorm_control_is_the_seed_recipe_without_its_fusion() -> None:
    """recipes/control_unfused_groupnorm.json (the negative control of `make gate-qnn-unfused`) cannot drift from the
    seed recipe: the same workflows but for the UNet's and the VAE decoder's FuseGroupNormalization pass."""
    control = load_recipe(DEFAULT_RECIPE.parent / "control_unfused_groupnorm.json")
    seed = load_recipe()
    for c in ("unet", "vae_decoder"):
        assert seed["workflows"][c]["passes"].pop("groupnorm_fusion")["surgeries"] == [
            {"surgeon": "FuseGroupNormalization"}
        ]
    assert control["workflows"] == seed["workflows"] and control["calibration"] == seed["calibration"]
    assert control["name"] != seed["name"]


def test_filled_workflows_pass_olive_validation(tmp_path: Path) -> None:
    from olive.workflows.run.config import RunConfig

    values = {p: str(tmp_path / p) for p in PLACEHOLDERS}
    values.update(input_names=["x"], input_shapes=[[1, 4]], input_types=["float32"])
    (tmp_path / "model_path").write_bytes(b"")
    for workflow in load_recipe()["workflows"].values():
        config = RunConfig.parse_file_or_obj(fill(workflow, values))
        assert list(config.passes)


def test_fill_keeps_json_types() -> None:
    filled = fill({"a": "${input_shapes}", "b": ["x-${output_dir}"]}, {"input_shapes": [[1, 77]], "output_dir": "/o"})
    assert filled == {"a": [[1, 77]], "b": ["x-/o"]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"name": "x"}', "needs a 'workflows' object"),
        ('{"workflows": {"unet": {"passes": {"q": {}}}}}', "missing \\['text_encoder'"),
    ],
    ids=["bad-json", "no-workflows", "missing-components"],
)
def test_bad_recipe_file_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "recipe.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_recipe(path)


def test_unknown_placeholder_is_named(tmp_path: Path) -> None:
    recipe = json.loads(DEFAULT_RECIPE.read_text())
    recipe["workflows"]["unet"]["output_dir"] = "${outptu_dir}"
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(recipe))
    with pytest.raises(ConfigError, match=r"unknown placeholder \$\{outptu_dir\}"):
        load_recipe(path)


def test_missing_recipe_file_names_the_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist.*qnn_w8a16.json"):
        load_recipe(tmp_path / "nope.json")


@pytest.mark.parametrize("produced", [0, 2])
def test_a_workflow_that_emits_no_single_model_is_a_build_error(tmp_path: Path, monkeypatch, produced: int) -> None:
    """A workflow whose last pass emits no ONNX model (or several) stops with the component, the recipe and the fix."""
    import olive.workflows

    def fake_run(config: dict, tempdir: str) -> None:
        out = Path(config["output_dir"])
        out.mkdir(parents=True)
        for i in range(produced):
            (out / f"model_{i}.onnx").write_bytes(b"")

    monkeypatch.setattr(olive.workflows, "run", fake_run)
    (tmp_path / "calibration" / "unet").mkdir(parents=True)
    (tmp_path / "calibration" / "unet" / "inputs.json").write_text(
        json.dumps(
            {"samples": 0, "input_names": ["sample"], "input_shapes": [[1, 4, 8, 8]], "input_types": ["float32"]}
        )
    )
    with pytest.raises(
        BuildError, match=rf"'unet' produced {produced} ONNX models .*expected one\. Does the recipe end"
    ):
        quantize_component(
            load_recipe(),
            "unet",
            model=tmp_path / "model.onnx",
            calibration_dir=tmp_path / "calibration",
            out=tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()


def test_shipped_olive_pass_options_are_the_installed_olives() -> None:
    """The validator reads Olive's pass configs from sdxl_qdq/data/olive_pass_options.json (no Olive import on a
    warm build); it must be what the installed Olive says (regenerate: python -m sdxl_qdq _olive-pass-options)."""
    from sdxl_qdq.convert.recipe_passes import SCHEMA_PATH, olive_version, read_olive_schema

    shipped = json.loads(SCHEMA_PATH.read_text())
    assert shipped["olive"] == olive_version()
    assert read_olive_schema() == shipped
    static = shipped["passes"]["onnxstaticquantization"]["options"]
    assert static["calibrate_method"]["values"] == ["MinMax", "Entropy", "Percentile", "Distribution"]
    assert "uint16" in static["activation_type"]["values"] and static["per_channel"]["kind"] == "bool"


def test_every_lean_option_is_an_olive_option() -> None:
    """The memory-bounded quantizer's table names only options Olive's passes have (a rename in Olive shows here)."""
    from sdxl_qdq.convert.recipe_passes import LEAN, olive_schema

    schema = olive_schema()
    for kind, options in LEAN.items():
        assert set(options) <= set(schema["passes"][kind.lower()]["options"]), kind


@pytest.mark.parametrize("count", [0, -3, "ten", 2.5, True])
def test_a_calibration_prompt_count_that_is_not_a_count_is_named(tmp_path: Path, count) -> None:
    recipe = json.loads(DEFAULT_RECIPE.read_text())
    recipe["calibration"]["prompts"] = count
    path = tmp_path / "count.json"
    path.write_text(json.dumps(recipe))
    with pytest.raises(ConfigError, match=r"calibration\.prompts must be a count of train prompts >= 1 .*got"):
        load_recipe(path)


def test_a_calibration_prompt_count_calibrates_on_the_first_n_train_prompts(tmp_path: Path, qdq_cache) -> None:
    """``calibration.prompts``: the build records the float pipeline on the first N train prompts only (its own
    calibration, by key); more than the prompt set has is refused before anything is built."""
    from sdxl_qdq.convert.stages import build
    from sdxl_qdq.models.prompts import load_prompts

    recipe = json.loads(DEFAULT_RECIPE.read_text())
    recipe["calibration"]["prompts"] = 3
    three = tmp_path / "three.json"
    three.write_text(json.dumps(recipe))
    seed, small = build("tiny", cache=qdq_cache), build("tiny", recipe=three, cache=qdq_cache)
    assert small.keys["calibration"] != seed.keys["calibration"] and small.keys["export"] == seed.keys["export"]
    recorded = json.loads((small.calibration_dir / "key.json").read_text())
    assert recorded["prompts"] == [p.text for p in load_prompts("train")[:3]]
    recipe["calibration"]["prompts"] = 51
    many = tmp_path / "many.json"
    many.write_text(json.dumps(recipe))
    with pytest.raises(ConfigError, match=r"calibration\.prompts is 51, the prompt set .* has 50 .* at most 50"):
        build("tiny", recipe=many, cache=qdq_cache)
