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
