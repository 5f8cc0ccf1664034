"""The 100 COCO prompts and safe file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxl_qdq.errors import ConfigError
from sdxl_qdq.models.prompts import PROMPTS_COCO, load_prompts, slugify


def test_prompts_split_fifty_fifty() -> None:
    prompts = load_prompts("all")
    assert [p.index for p in prompts] == list(range(100))
    assert {p.split for p in prompts[:50]} == {"train"} and {p.split for p in prompts[50:]} == {"test"}
    assert load_prompts("train") == prompts[:50] and load_prompts("test") == prompts[50:]
    assert prompts[0].text == "A man with a red helmet on a small moped on a dirt road"


def test_prompt_fixture_keeps_its_attribution() -> None:
    text = (PROMPTS_COCO.parent / "ATTRIBUTION.md").read_text()
    assert "CC BY 4.0" in text and "COCO Consortium" in text


def test_unknown_split_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"prompt split 'validation' is not one of \('train', 'test', 'all'\)"):
        load_prompts("validation")


@pytest.mark.parametrize(
    "text", ["../../etc/passwd", "a/b\\c", "..", "\x00\x1b[31mred\n", "   ", "Ünïcödé ☃ / ..", "CON", "x" * 500]
)
def test_slug_never_escapes_the_folder(tmp_path: Path, text: str) -> None:
    slug = slugify(text)
    assert slug and len(slug) <= 48
    assert (tmp_path / slug).resolve().parent == tmp_path.resolve()
    assert set(slug) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") and not slug.startswith("-")


# ------------------------------------------------------------------------------------ a team's own prompt set
def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_bundled_sets_read_as_before() -> None:
    """Both bundled sets: row order, the first 50 train, the derived ids (the baselines' keys) unchanged."""
    from sdxl_qdq.models.prompts import PROMPTS_CANARY, read_prompt_set

    for path in (PROMPTS_COCO, PROMPTS_CANARY):
        prompts = read_prompt_set(path)
        assert [p.split for p in prompts] == ["train"] * 50 + ["test"] * 50
        assert all(p.name is None and p.id == f"{p.index:03d}-{slugify(p.text, max_len=24)}" for p in prompts)


def test_a_prompt_set_in_csv_or_json_lines(tmp_path: Path) -> None:
    from sdxl_qdq.models.prompts import read_prompt_set

    csv = _write(tmp_path, "set.csv", "ID,Text,Split\nkitchen-1,a kitchen with a red kettle,train\ncat.2,a cat,test\n")
    prompts = read_prompt_set(csv, check_tokens=True)
    assert [(p.index, p.id, p.text, p.split) for p in prompts] == [
        (0, "kitchen-1", "a kitchen with a red kettle", "train"),
        (1, "cat.2", "a cat", "test"),
    ]
    lines = _write(tmp_path, "set.jsonl", "\n".join(f'{{"prompt": "prompt {i}"}}' for i in range(5)) + "\n")
    assert [p.split for p in read_prompt_set(lines)] == ["train"] * 3 + ["test"] * 2  # no split: first half train


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.jsonl", "", r"p\.jsonl holds no prompts"),
        ("p.jsonl", '{"text": "a cat"}\n{"text": "a cat"\n', r"line 2 is not valid JSON"),
        ("p.jsonl", '{"caption": "a cat"}\n', r"line 1 has \['caption'\]; every row needs a 'prompt' \(or 'text'\)"),
        ("p.jsonl", '{"text": "a"}\n{"text": "   "}\n{"text": "b"}\n', r"line 2: empty prompt"),
        ("p.csv", "id,text\n../x,a cat\nb,a dog\n", r"line 2: id '\.\./x' is not 1-64 letters, digits"),
        ("p.csv", "id,text,split\na,a cat,train\nb,a dog,validation\n", r"line 3: split 'validation' is not 'train'"),
        ("p.csv", "text,split\na cat,train\na dog,train\n", r"no test prompt \(calibration reads train"),
        ("p.csv", "caption\na cat\n", r"the CSV header \['caption'\] names no 'text'"),
        ("missing.jsonl", None, r"missing\.jsonl does not exist; pass a JSON Lines or CSV file"),
    ],
    ids=["empty", "bad-json", "no-text", "empty-prompt", "unsafe-id", "bad-split", "no-test", "csv-header", "missing"],
)
def test_a_bad_prompt_set_is_one_line_naming_the_row(tmp_path: Path, name: str, text: str | None, message: str) -> None:
    from sdxl_qdq.models.prompts import read_prompt_set

    path = tmp_path / name if text is None else _write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=message) as info:
        read_prompt_set(path)
    assert "\n" not in str(info.value)


def test_every_problem_of_a_prompt_set_is_named_at_once(tmp_path: Path) -> None:
    from sdxl_qdq.models.prompts import read_prompt_set

    rows = ["id,text,split", *("p,,train" for _ in range(8))]
    with pytest.raises(ConfigError, match=r"line 2: empty prompt; line 3: empty prompt;.* \(and 3 more\)"):
        read_prompt_set(_write(tmp_path, "p.csv", "\n".join(rows) + "\n"))


def test_a_prompt_set_is_gated_by_its_own_baseline(tmp_path: Path, qdq_cache) -> None:
    """The canary on six prompts of a team's file (their own ids; three calibrate): the build calibrates on its train
    rows, the gate draws all six, and its baseline is a file of its own beside the model's (which it never
    overwrites); the report and summary.json name the set. Without that baseline the gate says how to make one."""
    from sdxl_qdq.convert.stages import build
    from sdxl_qdq.flows import prepare_gate
    from sdxl_qdq.judge.summary import summary
    from sdxl_qdq.models.prompts import PROMPTS_CANARY, prompt_set_tag, read_prompt_set

    texts = [p.text for p in read_prompt_set(PROMPTS_CANARY)]
    rows = ["id,text,split", *(f"team-{i},{t},{'train' if i < 3 else 'test'}" for i, t in enumerate(texts[45:51]))]
    own = _write(tmp_path, "team.csv", "\n".join(rows) + "\n")
    built = build("canary", cache=qdq_cache, prompts=own)
    assert built.source.prompts == own.resolve() and built.source.prompt_set == prompt_set_tag(own)
    root = tmp_path / "baselines"
    with pytest.raises(ConfigError, match=r"no baseline for model 'canary'.*__prompts-team-[0-9a-f]{8}\.json"):
        prepare_gate(built, cache=qdq_cache, baselines_root=root)
    made = prepare_gate(built, cache=qdq_cache, baselines_root=root, update=True)
    files = sorted(p.name for p in (root / "canary" / "cpu").iterdir() if p.suffix == ".json")
    assert files == [f"canary-scorer-v1__canary-image-tower-v1__world-render__{prompt_set_tag(own)}.json"]
    gate = prepare_gate(built, cache=qdq_cache, baselines_root=root)
    assert [p.id for p in gate.evaluation.prompts] == [f"team-{i}" for i in range(6)]
    assert all(c.status == "pass" for c in gate.all_checks()) and len(made.all_checks()) == len(gate.all_checks())
    assert summary(gate)["prompt_set"] == f"team.csv ({prompt_set_tag(own)})"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"text": "a cat"}\n{"text": "a dog"}\n{"text": "a cat"}\n',
            r"line 3: the same prompt as line 1 draws the same",
        ),
        (
            '{"text": "a cat", "seed": 4}\n{"text": "a dog"}\n{"text": "a cat", "seed": 4}\n',
            r"line 3: the same prompt as line 1 with the same seed draws the same image; give each a distinct 'seed'",
        ),
        ('{"text": "a cat", "seed": -1}\n{"text": "a dog"}\n', r"line 1: seed '-1' is not a whole number"),
        ('{"text": "a cat", "seed": "x"}\n{"text": "a dog"}\n', r"line 1: seed 'x' is not a whole number"),
    ],
    ids=["same-text", "same-seed", "negative-seed", "bad-seed"],
)
def test_a_prompt_drawn_twice_needs_its_own_seed(tmp_path: Path, text: str, message: str) -> None:
    from sdxl_qdq.models.prompts import read_prompt_set

    with pytest.raises(ConfigError, match=message) as info:
        read_prompt_set(_write(tmp_path, "p.jsonl", text))
    assert "\n" not in str(info.value)


def test_a_seed_tells_two_draws_of_one_text_apart(tmp_path: Path) -> None:
    """A row's own seed changes what its noise is drawn from; a row without one draws as before (the text alone)."""
    from sdxl_qdq.models.prompts import read_prompt_set
    from sdxl_qdq.run.pipeline import prompt_seed

    rows = '{"text": "a cat"}\n{"text": "a cat", "seed": 7}\n{"text": "a cat", "seed": 8}\n{"text": "a dog"}\n'
    prompts = read_prompt_set(_write(tmp_path, "p.jsonl", rows))
    assert [p.seed for p in prompts] == [None, 7, 8, None]
    assert prompts[0].seed_key == "a cat"
    assert len({prompt_seed(p.seed_key) for p in prompts[:3]}) == 3


def test_a_synthetic_canary_set_starts_with_the_canary_prompts(tmp_path: Path) -> None:
    """`sdxl-qdq canary-prompts N`: the canary's 100 prompts first (same texts and splits: the same calibration and
    images), then seeded test prompts, every (text, seed) distinct, readable as a prompt set; the same seed writes
    the same file."""
    from sdxl_qdq.cli import main
    from sdxl_qdq.models.prompts import PROMPTS_CANARY, read_prompt_set

    assert main(["canary-prompts", "300", "--out", str(tmp_path / "a.jsonl")]) == 0
    assert main(["canary-prompts", "300", "--out", str(tmp_path / "b.jsonl")]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    prompts, own = read_prompt_set(tmp_path / "a.jsonl"), read_prompt_set(PROMPTS_CANARY)
    assert len(prompts) == 300 and [(p.text, p.split, p.seed) for p in prompts[:100]] == [
        (p.text, p.split, None) for p in own
    ]
    assert all(p.split == "test" and p.seed == p.index for p in prompts[100:])
    assert main(["canary-prompts", "99", "--out", str(tmp_path / "c.jsonl")]) == 2
