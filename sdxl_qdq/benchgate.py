"""The latency regression gate, corrected for the machine's speed in the same run.

pytest-benchmark measures, stores and compares (`--benchmark-compare` prints its table); its `--benchmark-compare-fail`
compares raw times, so on a shared machine whose speed moves up to 2x between hours (and a CI machine that is not the
one that stored the run) it judges the hour as much as the code. Here every benchmark also times a fixed workload,
`machine_speed_probe`, just before it runs (`probe_seconds`, the fastest of a few calls, kept in the benchmark's
extra_info as `machine_probe_s`). The machine's speed factor is the median of those probes now over the stored run's,
over the benchmarks both runs have, clamped to [1/2, 2] (the span of this machine kind's speed), and a benchmark
fails when its time divided by that factor grew past the threshold. A machine 2x slower moves both and passes;
code 3x slower moves one and fails. The probe is timed beside every benchmark, not once, because this machine kind's
speed also moves within seconds (the probe's BLAS part, timed 30 times in three rounds a few seconds apart: medians
5.9, 4.6 and 3.2 ms).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdxl_qdq.errors import ConfigError

PROBE = "machine_probe_s"  # the extra_info key
# The correction excuses at most what this machine kind's speed does between hours (measured: up to 2x). A larger
# probe ratio is load on a shared machine, not its speed, and a regression must not hide behind it: a planted 10x
# slowdown under xdist load measured 10.4x raw with a 3.6x probe ratio (2.9x corrected, a miss; 5.2x clamped).
MACHINE_SPAN = 2.0
STATS = ("min", "median", "mean")


def machine_speed_probe() -> int:
    """A fixed, seeded workload of the kinds the gated benchmarks spend their time in: the interpreter and JSON (cache
    keys, manifests), file metadata (cache checks), and BLAS (ONNX Runtime's kernels). About 10-30 ms on 2 cores."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((192, 192), dtype=np.float32)
    b = rng.standard_normal((192, 192), dtype=np.float32)
    total = 0.0
    for _ in range(8):
        a = np.tanh(a @ b)
        total += float(a.sum())
    doc = {f"k{i}": {"shape": [1, 4, i, i], "digest": f"{i:064x}", "files": list(range(i % 17))} for i in range(200)}
    for _ in range(10):
        doc = json.loads(json.dumps(doc, sort_keys=True))
    with tempfile.TemporaryDirectory(prefix="sdxl-qdq-probe-") as folder:
        for i in range(40):
            Path(folder, f"{i}.bin").write_bytes(b"\0" * 64)
        names = sorted(os.listdir(folder))
        for _ in range(10):
            total += sum(os.stat(os.path.join(folder, n)).st_size for n in names)
    return len(doc) + int(total) % 7


def probe_seconds(calls: int = 5) -> float:
    """The fastest of `calls` timings of machine_speed_probe: the machine's speed at this moment."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        machine_speed_probe()
        times.append(time.perf_counter() - start)
    return min(times)


@dataclass(frozen=True)
class Row:
    name: str
    stored_s: float
    now_s: float
    machine: float  # the probes' median now / stored: > 1 means this machine is slower now
    corrected: float  # (now / stored) / machine

    def line(self, limit: float) -> str:
        verdict = "REGRESSED" if self.corrected > limit else "ok"
        return (
            f"{self.name:<40} stored {_ms(self.stored_s):>10} now {_ms(self.now_s):>10} "
            f"raw {self.now_s / self.stored_s:5.2f}x machine {self.machine:5.2f}x corrected {self.corrected:5.2f}x "
            f"(limit {limit:.2f}x) {verdict}"
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def parse_fail(spec: str) -> tuple[str, float]:
    """'median:200%' -> ('median', 3.0): the same spelling as --benchmark-compare-fail's percentage form."""
    stat, sep, pct = spec.partition(":")
    if not sep or stat not in STATS or not pct.endswith("%"):
        raise ConfigError(
            f"--fail {spec!r}: expected STAT:PERCENT% with STAT one of {', '.join(STATS)} (e.g. median:200%, which "
            "fails a benchmark more than 3x slower than the stored run after the machine-speed correction)"
        )
    try:
        value = float(pct[:-1])
    except ValueError:
        raise ConfigError(f"--fail {spec!r}: {pct[:-1]!r} is not a number; e.g. median:200%") from None
    if value <= 0:
        raise ConfigError(f"--fail {spec!r}: the percentage must be above 0; e.g. median:200%")
    return stat, 1 + value / 100


def _load(path: Path) -> list[dict]:
    try:
        runs = json.loads(path.read_text())["benchmarks"]
    except FileNotFoundError:
        raise ConfigError(f"benchmark run {path} does not exist; write one with --benchmark-json={path}") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a pytest-benchmark JSON run (no 'benchmarks' list)") from None
    return runs


def machine_seconds(runs: list[dict], path: Path, names: set[str]) -> float:
    """The median of the probes of the named benchmarks."""
    probes = sorted(b["extra_info"][PROBE] for b in runs if b["name"] in names and PROBE in b.get("extra_info", {}))
    if not probes:
        raise ConfigError(
            f"{path} has no machine probe (extra_info {PROBE!r} of its benchmarks), so its times cannot be corrected "
            "for the machine's speed; a benchmark records one with benchgate.probe_seconds() (tests/test_benchmarks.py "
            "does), and a stored run without it is recorded anew with `make bench-save`"
        )
    middle = len(probes) // 2
    return probes[middle] if len(probes) % 2 else (probes[middle - 1] + probes[middle]) / 2


def latest_stored(storage: Path, machine_id: str) -> Path:
    """The run pytest-benchmark's bare --benchmark-compare picks: the highest-numbered file of this machine's folder."""
    runs = sorted((storage / machine_id).glob("[0-9][0-9][0-9][0-9]_*.json"))
    if not runs:
        raise ConfigError(
            f"no stored benchmark run for this machine ({machine_id}) in {storage / machine_id}; record one with "
            "`make bench-save`, review it and commit it"
        )
    return runs[-1]


def compare(now_path: Path, stored_path: Path, *, stat: str = "median") -> list[Row]:
    """One row per benchmark of the current run that the stored run also has."""
    now_runs, stored_runs = _load(now_path), _load(stored_path)
    now = {b["name"]: b["stats"][stat] for b in now_runs}
    stored = {b["name"]: b["stats"][stat] for b in stored_runs}
    shared = set(now) & set(stored)
    if not shared:
        raise ConfigError(f"{now_path} and {stored_path} share no benchmark: nothing to compare")
    # over the same benchmarks on both sides: a stored full run's probes beside the QNN simulator's long benchmarks
    # are not counted against a CI run that has none
    machine = machine_seconds(now_runs, now_path, shared) / machine_seconds(stored_runs, stored_path, shared)
    machine = min(max(machine, 1 / MACHINE_SPAN), MACHINE_SPAN)
    rows = [
        Row(name, stored[name], now[name], machine, (now[name] / stored[name]) / machine)
        for name in now
        if name in stored
    ]
    return rows


def regressions(rows: list[Row], limit: float) -> list[Row]:
    return [r for r in rows if r.corrected > limit]
