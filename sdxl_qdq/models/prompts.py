"""The evaluation prompts: 100 COCO 2017 captions (rows 0–49 train/calibration, 50–99 test).

Loaded through ``datasets`` from the JSONL in fixtures/ (offline). With ``stream_from_hub=True`` the same
rows are streamed from ``phiyodr/coco2017`` instead (needs network; the user opts in).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from sdxl_qdq.errors import ConfigError, ModelNotAvailableError
from sdxl_qdq.paths import FIXTURES_DIR

PROMPTS_DIR = FIXTURES_DIR / "prompts"


PROMPTS_COCO = PROMPTS_DIR / "coco2017_first100.jsonl"


PROMPTS_CANARY = PROMPTS_DIR / "canary_world.jsonl"
HUB_DATASET = "phiyodr/coco2017"
SPLITS = ("train", "test", "all")
N_TRAIN = 50


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str
    split: str  # "train" (calibration) or "test"

    @property
    def id(self) -> str:
        """A readable test id: index and a short slug."""
        return f"{self.index:03d}-{slugify(self.text, max_len=24)}"


def slugify(text: str, *, max_len: int = 48) -> str:
    """A file-name-safe slug: lowercase ASCII letters, digits and single dashes; never empty, never a path."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].strip("-")
    return slug or "prompt"


def sanitize_caption(caption: str) -> str:
    """A COCO caption as the reference study used it: surrounding whitespace and punctuation (but , and -) off."""
    return re.sub(r"^[^\w,\-]+|[^\w,\-]+$", "", " ".join(caption.split()))


def load_prompts(split: str = "all", *, path: Path = PROMPTS_COCO, stream_from_hub: bool = False) -> list[Prompt]:
    """Prompts of ``split`` ("train", "test" or "all"), in row order, from the JSONL at ``path``."""
    if split not in SPLITS:
        raise ConfigError(f"prompt split {split!r} is not one of {SPLITS}")
    if stream_from_hub:
        texts = _stream_hub(100)
    else:
        if not path.is_file():
            raise ConfigError(f"prompt file {path} does not exist; pass a JSONL with a 'prompt' column per row")
        texts = _read_jsonl_prompts(path)
    prompts = [Prompt(i, t, "train" if i < N_TRAIN else "test") for i, t in enumerate(texts)]
    return prompts if split == "all" else [p for p in prompts if p.split == split]


def _read_jsonl_prompts(path: Path) -> list[str]:
    """The 'prompt' of each row of a JSONL file (read with the standard library: a warm build must not import
    datasets, 1.7 s, for 100 lines; the hub's rows still come through datasets)."""
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"prompt file {path}: line {number} is not valid JSON ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ConfigError(f"prompt file {path}: line {number} has {keys}; every row needs a 'prompt' string")
        texts.append(row["prompt"])
    return texts


def _stream_hub(n: int) -> list[str]:
    import datasets

    try:
        rows = datasets.load_dataset(HUB_DATASET, split="train", streaming=True)
        return [sanitize_caption(row["captions"][0]) for row in rows.take(n)]
    except Exception as e:  # datasets raises many network error types
        raise ModelNotAvailableError(
            f"could not stream {HUB_DATASET!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "drop --prompts-from-hub to use the bundled fixtures/prompts/coco2017_first100.jsonl"
        ) from e
