"""The cached stages of the data flow, declared once: what each reads, what its folder holds, which input fields
its key hashes and the revision of the code that writes it.

The cache (``sdxl_qdq.cache``) refuses a declared stage's inputs that lack a key field, the stages read their
revision here, and ``sdxl-qdq verify --stage`` offers these names. Bump a stage's ``revision`` when its code changes
what it writes: every artifact of that stage and of the stages that read it is built again (their keys hash it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]  # upstream stages whose inputs enter this stage's key
    output: str  # what the artifact folder holds
    key_fields: tuple[str, ...]  # input fields every key of this stage hashes
    revision: int


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "source",
            (),
            "the pipeline folder: a hub snapshot's files, a local folder's, or a generated model",
            ("source",),
            1,
        ),
        Stage(
            "export",
            ("source",),
            "float ONNX of the four components at fixed shapes, each with io.json",
            ("source", "revision", "versions"),
            1,
        ),
        Stage(
            "prepared",
            ("export",),
            "a component's graph ready to calibrate (the lean quantizer's first half)",
            ("export", "component", "workflow", "revision"),
            1,
        ),
        Stage(
            "stock-peak",
            ("export",),
            "the stock quantizer's estimated peak memory per component",
            ("export", "revision"),
            1,
        ),
        Stage(
            "calibration",
            ("export", "prepared"),
            "each component's recorded inputs (and collected ranges)",
            ("export", "prompts", "steps", "revision"),
            1,
        ),
        Stage(
            "qdq",
            ("export", "calibration", "prepared"),
            "one component's QDQ model",
            ("export", "calibration", "component", "workflow", "revision"),
            2,
        ),
        Stage(
            "images",
            ("qdq", "export"),
            "one variant's PNGs of the prompts (and, for a gated set, each prompt's text response)",
            ("variant", "qnn", "prompts", "revision", "versions"),
            2,
        ),
    )
}


def check_inputs(stage: str, inputs: dict) -> None:
    """A declared stage's inputs hold every key field (a field left out would let two different artifacts share a
    key); undeclared stages (a caller's own) are not checked."""
    declared = STAGES.get(stage)
    if declared is None:
        return
    missing = [f for f in declared.key_fields if f not in inputs]
    if missing:
        raise ValueError(f"inputs of stage {stage!r} lack its key fields {missing} (sdxl_qdq/stage_table.py)")
