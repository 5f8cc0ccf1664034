"""Bad input, through the two doors users come in by: the CLI (`sdxl-qdq build ...`) and pytest (`pytest -m quality
...`). Each case must stop before anything is built, with exit code 2 (the CLI, and pytest's own exit for a gate
fixture) or pytest's usage error (4), a message naming the value and the fix, and no traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sdxl_qdq.convert.recipe import DEFAULT_RECIPE
from sdxl_qdq.plugin import plugin_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
SDXL_QDQ = Path(sys.executable).with_name("sdxl-qdq")


PYTEST_QUALITY = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-m", "quality"]


def _recipe(tmp: Path, edit: Callable[[dict], None]) -> str:
    recipe = json.loads(DEFAULT_RECIPE.read_text())
    edit(recipe)
    path = tmp / "recipe.json"
    path.write_text(json.dumps(recipe))
    return str(path)


def _missing_recipe(tmp: Path) -> list[str]:
    return ["--recipe", str(tmp / "nope.json")]


def _invalid_recipe(tmp: Path) -> list[str]:
    (tmp / "broken.json").write_text('{"workflows": ')
    return ["--recipe", str(tmp / "broken.json")]


def _unknown_pass(tmp: Path) -> list[str]:
    return [
        "--recipe",
        _recipe(tmp, lambda r: r["workflows"]["unet"]["passes"].update(extra={"type": "OnnxStaticQuantisation"})),
    ]


def _pass_option(option: str, value: object):
    """The UNet's quantization pass with ``option`` set to ``value`` (typos Olive would ignore or fail on late)."""
    return lambda tmp: [
        "--recipe",
        _recipe(tmp, lambda r: r["workflows"]["unet"]["passes"]["quantization"].update({option: value})),
    ]


def _no_model_emitted(tmp: Path) -> list[str]:
    return ["--recipe", _recipe(tmp, lambda r: r["workflows"]["vae_decoder"].update(output_dir=str(tmp / "elsewhere")))]


def _not_diffusers(tmp: Path) -> list[str]:
    (tmp / "model").mkdir()
    (tmp / "model" / "weights.safetensors").write_bytes(b"")
    return ["--model", str(tmp / "model")]


def _bin_only(tmp: Path) -> list[str]:
    folder = tmp / "pickled"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"]})
    )
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02")
    return ["--model", str(folder)]


def _unknown_soc(tmp: Path) -> list[str]:
    return ["--qnn-soc", "99"]


def _prompt_file(name: str, data: bytes):
    def make(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(data)
        return ["--prompt-set", str(tmp / name)]

    return make


LONG = " ".join(["a red circle on the left and"] * 12)

# (case, argv maker, what the message must say): the value and the fix
SHARED = [
    ("empty-prompt-file", _prompt_file("p.jsonl", b"\n\n"), r"p\.jsonl holds no prompts; give one per line"),
    (
        "duplicate-prompt-ids",
        _prompt_file("p.csv", b"id,text,split\na,a cat,train\nb,a dog,test\na,a cow,test\n"),
        r"p\.csv: line 4: duplicate id 'a' \(first on line 2\)",
    ),
    (
        "over-long-prompt",
        _prompt_file(
            "p.jsonl", f'{{"text": "{LONG}", "split": "train"}}\n{{"text": "a cat", "split": "test"}}'.encode()
        ),
        r"p\.jsonl: line 1: \d+ CLIP tokens, over 77 \(the encoders drop the rest\)",
    ),
    (
        "prompt-file-not-utf8",
        _prompt_file("p.jsonl", b'{"text": "a cat"}\n{"text": "caf\xe9"}\n'),
        r"p\.jsonl: line 2 is not UTF-8 .*save the file as UTF-8",
    ),
    ("missing-recipe", _missing_recipe, r"nope\.json.* does not exist; pass a JSON recipe such as .*qnn_w8a16\.json"),
    ("invalid-recipe", _invalid_recipe, r"broken\.json is not valid JSON"),
    ("unknown-pass-type", _unknown_pass, r"type 'OnnxStaticQuantisation', which Olive does not know \(did you mean"),
    (
        "misspelled-option",
        _pass_option("per_chanel", True),
        r"workflow 'unet': pass 'quantization' \(OnnxStaticQuantization\): unknown option 'per_chanel' "
        r"\(did you mean 'per_channel'\?\); Olive would ignore it silently",
    ),
    (
        "option-case-typo",
        _pass_option("calibrate_method", "Minmax"),
        r"pass 'quantization' \(OnnxStaticQuantization\): option 'calibrate_method' is 'Minmax'; allowed: MinMax, "
        r"Entropy, Percentile, Distribution \(did you mean 'MinMax'\?\)",
    ),
    (
        "bad-enum-value",
        _pass_option("activation_type", "uint61"),
        r"option 'activation_type' is 'uint61'; allowed: int4, .*uint16.* \(did you mean one of \['uint16'",
    ),
    (
        "wrong-option-type",
        _pass_option("per_channel", "true"),
        r"option 'per_channel' is 'true' \(str\); Olive expects true or false",
    ),
    ("no-model-emitted", _no_model_emitted, r"output_dir '.*elsewhere'; it must be \"\$\{output_dir\}\""),
    ("not-diffusers", _not_diffusers, r"model' is a folder without model_index\.json; pass a diffusers SDXL folder"),
    (
        "bin-only",
        _bin_only,
        r"unet/ holds only pickled weights \(diffusion_pytorch_model\.bin\); this project loads safetensors only",
    ),
    ("unknown-qnn-soc", _unknown_soc, r"--qnn-soc: invalid choice: '99' \(choose from"),
]


def _without_qnn(tmp: Path) -> dict[str, str]:
    """An interpreter where onnxruntime-qnn is not found (a sitecustomize hides it from importlib's finder)."""
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import importlib.util as u\n_find = u.find_spec\n"
        "u.find_spec = lambda name, package=None: "
        "None if name.split('.')[0] == 'onnxruntime_qnn' else _find(name, package)\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def _one_clear_line(done: subprocess.CompletedProcess, message: str, codes: tuple[int, ...]) -> None:
    out = done.stdout + done.stderr
    assert done.returncode in codes, f"exit {done.returncode}, wanted {codes}:\n{out[-3000:]}"
    assert "Traceback" not in out and "INTERNALERROR" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if re.search(message, line)]
    assert len(lines) == 1, f"wanted one line matching {message!r}:\n{out[-3000:]}"


@pytest.mark.parametrize(("case", "make", "message"), SHARED, ids=[c[0] for c in SHARED])
def test_cli_bad_input_is_exit_2_and_one_line(tmp_path: Path, case: str, make, message: str) -> None:
    verb = "parity" if case == "unknown-qnn-soc" else "build"  # the verbs that take --qnn-soc
    done = _run([str(SDXL_QDQ), verb, "--cache-dir", str(tmp_path / "cache"), *make(tmp_path)], tmp_path)
    _one_clear_line(done, message, (2,))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.onnx")), "it built something"


@pytest.mark.parametrize(
    ("case", "make", "message"),
    [
        *SHARED,
        (
            "coco-dir-missing",
            lambda t: ["--coco-dir", str(t / "coco")],
            r"--coco-dir .*coco: no such folder; `sdxl-qdq coco-images",
        ),
        (
            "coco-dir-incomplete",
            lambda t: [(t / "coco").mkdir() or "--coco-dir", str(t / "coco")],
            r"--coco-dir .*coco: 100 of the 100 COCO images of the prompts are missing \(first: \d+\.jpg\); "
            r"`sdxl-qdq coco-images",
        ),
    ],
    ids=[c[0] for c in SHARED] + ["coco-dir-missing", "coco-dir-incomplete"],
)
def test_pytest_bad_input_is_a_usage_error_and_one_line(tmp_path: Path, case: str, make, message: str) -> None:
    """The same inputs through the plugin (its flags are the command line's with --qdq-, and so are its messages)."""
    done = _run(
        [
            *PYTEST_QUALITY,
            *_plugin(["--cache-dir", str(tmp_path / "cache"), *make(tmp_path)]),
            str(REPO_ROOT / "tests" / "test_quality.py"),
            "-k",
            "test_image_set and fid",
        ],
        tmp_path,
    )
    _one_clear_line(done, plugin_flags(message), (2, pytest.ExitCode.USAGE_ERROR))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.onnx")), "it built something"


def _plugin(argv: list[str]) -> list[str]:
    return [plugin_flags(a) if a.startswith("--") else a for a in argv]


@pytest.mark.parametrize("door", ["cli", "pytest"])
def test_qnn_without_onnxruntime_qnn_is_one_line_before_any_build(tmp_path: Path, door: str) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    argv = (
        [str(SDXL_QDQ), "sqnr", "--ep", "qnn", *cache]
        if door == "cli"
        else [
            *PYTEST_QUALITY,
            "--qdq-ep",
            "qnn",
            *_plugin(cache),
            str(REPO_ROOT / "tests" / "test_quality.py"),
        ]
    )
    done = _run(argv, tmp_path, _without_qnn(tmp_path))
    message = r"the QNN EP needs the onnxruntime-qnn package; install it .* or run with --ep cpu"
    _one_clear_line(
        done,
        message if door == "cli" else plugin_flags(message),
        (2,) if door == "cli" else (pytest.ExitCode.USAGE_ERROR,),
    )
    assert not (tmp_path / "cache").exists(), "it started building"
