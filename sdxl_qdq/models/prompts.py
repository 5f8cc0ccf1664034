"""The evaluation prompts: 100 COCO 2017 captions (rows 0–49 train/calibration, 50–99 test), or a team's own prompt
set (``--prompts FILE``: JSON Lines or CSV, checked whole before anything is drawn).

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


ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TOKENS = 77  # CLIP's context, start and end tokens included: the encoders never see a longer prompt's tail


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str
    split: str  # "train" (calibration) or "test"
    name: str | None = None  # the prompt file's own id, when it gives one
    seed: int | None = None  # the prompt file's own seed, when it gives one (a text drawn more than once)

    @property
    def seed_key(self) -> str:
        """What the prompt's noise is drawn from (``prompt_seed``): its text, and its own seed when the file gives one
        (so a text that appears twice in a set draws two images)."""
        return self.text if self.seed is None else f"{self.text}\x00seed={self.seed}"

    @property
    def id(self) -> str:
        """A readable test id: the prompt file's id, else index and a short slug."""
        return self.name or f"{self.index:03d}-{slugify(self.text, max_len=24)}"


def slugify(text: str, *, max_len: int = 48) -> str:
    """A file-name-safe slug: lowercase ASCII letters, digits and single dashes; never empty, never a path."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].strip("-")
    return slug or "prompt"


def sanitize_caption(caption: str) -> str:
    """A COCO caption as the reference study used it: surrounding whitespace and punctuation (but , and -) off."""
    return re.sub(r"^[^\w,\-]+|[^\w,\-]+$", "", " ".join(caption.split()))


def load_prompts(split: str = "all", *, path: Path = PROMPTS_COCO, stream_from_hub: bool = False) -> list[Prompt]:
    """Prompts of ``split`` ("train", "test" or "all"), in row order, from the prompt file at ``path``
    (``read_prompt_set``)."""
    if split not in SPLITS:
        raise ConfigError(f"prompt split {split!r} is not one of {SPLITS}")
    if stream_from_hub:
        texts = _stream_hub(100)
        prompts = [Prompt(i, t, "train" if i < N_TRAIN else "test") for i, t in enumerate(texts)]
    else:
        prompts = read_prompt_set(path)
    return prompts if split == "all" else [p for p in prompts if p.split == split]


def read_prompt_set(path: Path, *, check_tokens: bool = False) -> list[Prompt]:
    """A prompt set from JSON Lines (a ``prompt`` or ``text`` string per row; ``id``, ``split`` and ``seed``
    optional) or CSV (a header naming ``text`` or ``prompt``, and optionally ``id``, ``split`` and ``seed``), checked
    whole before anything uses it: one ConfigError naming every problem (no rows, bad encoding or JSON, an empty
    prompt, a duplicate or unsafe id, a split other than train/test, a seed that is not a whole number from 0, the same
    text and seed twice (the same image twice: a set metric would read it as less diversity), no train or no test
    prompt; with ``check_tokens``, a prompt longer than CLIP's 77 tokens, whose tail the encoders would drop).
    Without a ``split`` column the first half is ``train`` (calibration) and the rest ``test``, as in the bundled COCO
    set."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"prompt file {path} does not exist; pass a JSON Lines or CSV file of prompts (README: Prompt sets)"
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"prompt file {path}: line {line} is not UTF-8 (byte {e.start}); save the file as UTF-8"
        ) from None
    rows, problems = (_csv_rows if path.suffix.lower() == ".csv" else _jsonl_rows)(text)
    if not rows and not problems:
        raise ConfigError(f"prompt file {path} holds no prompts; give one per line (JSON Lines) or per row (CSV)")
    prompts, seen, drawn = [], {}, {}
    has_split = any(row.get("split") is not None for _, row in rows)
    for number, row in rows:
        prompt, name, split = row.get("prompt", row.get("text")), row.get("id"), row.get("split")
        if not isinstance(prompt, str) or not " ".join(prompt.split()):
            problems.append(f"line {number}: empty prompt")
            continue
        seed = _seed(row.get("seed"))
        if seed == -1:
            problems.append(
                f"line {number}: seed {str(row.get('seed'))[:20]!r} is not a whole number from 0 to 2**31-1"
            )
            seed = None
        elif (prompt, seed) in drawn:
            problems.append(
                f"line {number}: the same prompt as line {drawn[prompt, seed]}"
                + (" with the same seed" if seed is not None else "")
                + " draws the same image; give each a distinct 'seed'"
            )
        drawn.setdefault((prompt, seed), number)
        if name is not None:
            name = str(name)
            if not ID_PATTERN.fullmatch(name):
                problems.append(f"line {number}: id {name[:40]!r} is not 1-64 letters, digits, '.', '_' or '-'")
            elif name in seen:
                problems.append(f"line {number}: duplicate id {name!r} (first on line {seen[name]})")
            seen.setdefault(name, number)
        if has_split and split not in ("train", "test"):
            problems.append(f"line {number}: split {split!r} is not 'train' or 'test'")
        prompts.append((number, prompt, name, split, seed))  # as written: the text is the key of its images
    if not has_split:
        half = (len(prompts) + 1) // 2 if len(prompts) != 100 else N_TRAIN
        prompts = [(n, t, name, "train" if i < half else "test", sd) for i, (n, t, name, _, sd) in enumerate(prompts)]
    if check_tokens and prompts:
        from sdxl_qdq.models.sdxl import build_tokenizers

        tokenizer = build_tokenizers()[0]
        for number, t, *_ in prompts:
            count = len(tokenizer(t).input_ids)
            if count > MAX_TOKENS:
                problems.append(f"line {number}: {count} CLIP tokens, over {MAX_TOKENS} (the encoders drop the rest)")
    splits = {s for *_, s, _ in prompts}
    if prompts and not problems:
        missing = [s for s in ("train", "test") if s not in splits]
        if missing:
            problems.append(f"no {missing[0]} prompt (calibration reads train, the re-calibrated baseline test)")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ConfigError(f"prompt file {path}: {'; '.join(problems[:5])}{more}")
    return [Prompt(i, t, s, name, sd) for i, (_, t, name, s, sd) in enumerate(prompts)]


def _seed(value: object) -> int | None:
    """A row's ``seed``: None when absent or blank, -1 when it is not a whole number in [0, 2**31)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return -1
    try:
        seed = int(value) if isinstance(value, int) else int(str(value).strip())
    except ValueError:
        return -1
    return seed if 0 <= seed < 2**31 else -1


def prompt_set_tag(path: Path) -> str:
    """A prompt file's tag in baseline file names: ``prompts-<slug of its name>-<sha256 of its bytes, 8 digits>``."""
    import hashlib

    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]
    return f"prompts-{slugify(Path(path).stem, max_len=32)}-{digest}"


def _jsonl_rows(text: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line number, row) of each non-blank line, and the lines that are not a JSON object (read with the standard
    library: a warm build must not import datasets, 1.7 s, for 100 lines; the hub's rows still come through
    datasets)."""
    rows, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {number} is not valid JSON ({e.msg})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("prompt", row.get("text")), str):
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            problems.append(f"line {number} has {keys}; every row needs a 'prompt' (or 'text') string")
            continue
        rows.append((number, row))
    return rows, problems


def _csv_rows(text: str) -> tuple[list[tuple[int, dict]], list[str]]:
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if not {"text", "prompt"} & set(fields):
        return [], [f"the CSV header {fields} names no 'text' (or 'prompt') column"]
    reader.fieldnames = fields
    return [(reader.line_num, {k: v for k, v in row.items() if k}) for row in reader], []


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


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` of a prompt set (``--shard k/N``): the prompts whose id hashes to it, so a prompt's
    shard depends on its id and N only (never on the other prompts, their order, or the machine)."""

    index: int  # 1-based
    count: int

    @classmethod
    def parse(cls, text: str, *, option: str = "--shard") -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise ConfigError(f"{option} {text!r} is not k/N with 1 <= k <= N (e.g. {option} 2/3: the second of three)")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, prompt: Prompt) -> bool:
        return shard_of(prompt.id, self.count) == self.index - 1

    def select(self, prompts: list[Prompt]) -> list[Prompt]:
        """This shard's prompts, in set order; an empty shard is an error naming the fix."""
        mine = [p for p in prompts if self.holds(p)]
        if not mine:
            raise ConfigError(
                f"shard {self} of {len(prompts)} prompts holds none of them; use fewer shards than N={self.count}"
            )
        return mine


def shard_of(prompt_id: str, count: int) -> int:
    """The 0-based shard of a prompt id among ``count``: the first 8 bytes of its SHA-256, modulo ``count``."""
    import hashlib

    return int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "little") % count
