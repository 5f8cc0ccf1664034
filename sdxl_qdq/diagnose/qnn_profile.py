"""QNN EP profiling output (``profiling_file_path``: CSV): HTP execute time per run (``profiling_level=basic``), and
where HTP spends its time (``detailed``): cycles per op, mapped back to the ONNX nodes."""

from __future__ import annotations

import csv
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EXECUTE_EVENT = "Accelerator (execute) time"


def htp_execute_us(profile_csv: Path) -> list[float]:
    """Microseconds the accelerator spent per execution (host overhead excluded), in run order."""
    with open(profile_csv, newline="") as f:
        return [
            float(row["Time"])
            for row in csv.DictReader(f)
            if row.get("Event Identifier") == EXECUTE_EVENT and row.get("Unit of Measurement") == "US"
        ]


# ------------------------------------------------------------------------- detailed: where HTP spends its time
NODE_EVENT = re.compile(r"^(?P<name>.*?)(?::OpId_(?P<op>\d+))? \(cycles\)$")


@dataclass(frozen=True)
class OpTime:
    """One HTP op of a detailed profile: its QNN name, the ONNX node it maps to (None: an op QNN inserted, such as a
    layout Transpose or a graph input), that node's op type, and its cycles in one execution."""

    qnn_name: str
    node: str | None
    op_type: str
    cycles: int


def op_cycles(profile_csv: Path, nodes: dict[str, str]) -> list[OpTime]:
    """The per-op cycles of a ``profiling_level=detailed`` CSV (one execution), mapped to the ONNX nodes of the
    model (``nodes``: name → op type). QNN names an op after the ONNX node it comes from, suffixed with
    ``_token_<n>`` when it was split or renamed, and ``:OpId_<n>``."""
    found = []
    with open(profile_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Message") != "NODE" or row.get("Unit of Measurement") != "CYCLES":
                continue
            match = NODE_EVENT.match(row["Event Identifier"])
            name = match.group("name") if match else row["Event Identifier"]
            base = re.sub(r"_token_\d+$", "", name)
            node = base if base in nodes else None
            found.append(OpTime(name, node, nodes.get(base, "(inserted by QNN)"), int(float(row["Time"]))))
    return found


def _events(profile_csv: Path) -> dict[str, float]:
    with open(profile_csv, newline="") as f:
        return {
            f"{r['Event Identifier']} [{r['Unit of Measurement']}]": float(r["Time"])
            for r in csv.DictReader(f)
            if r.get("Message") != "NODE"
        }


def summarize(ops: list[OpTime], *, top: int = 10) -> dict[str, Any]:
    """The ops that take most cycles (with their share of all op cycles) and the cycles per ONNX op type."""
    total = sum(o.cycles for o in ops) or 1
    by_type: dict[str, int] = {}
    for o in ops:
        by_type[o.op_type] = by_type.get(o.op_type, 0) + o.cycles
    return {
        "op_cycles": total,
        "ops": len(ops),
        "mapped_to_onnx": sum(o.node is not None for o in ops),
        "top_ops": [
            {
                "node": o.node or o.qnn_name,
                "op_type": o.op_type,
                "cycles": o.cycles,
                "share": round(o.cycles / total, 4),
            }
            for o in sorted(ops, key=lambda o: -o.cycles)[:top]
        ],
        "by_op_type": {
            k: {"cycles": v, "share": round(v / total, 4)} for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])
        },
    }


def profile_component(model: str, feeds: dict[str, np.ndarray], soc_model: str, top: int = 10) -> dict[str, Any]:
    """One QNN session of ``model`` with detailed profiling, run once on ``feeds`` after a warm-up run (in the
    calling process: run it in a child, ``profile_components``). Host wall time per run, HTP execute time and cycles,
    the node counts on QNN and in all, the process's peak RSS, and ``summarize`` of the ops."""
    import onnx

    from sdxl_qdq.procs import peak_rss_bytes
    from sdxl_qdq.runtime import QnnOptions, create_session, graph_assignment

    nodes = {n.name: n.op_type for n in onnx.load(model, load_external_data=False).graph.node}
    with tempfile.TemporaryDirectory(prefix="htp-profile-") as work:
        csv_path = Path(work) / "profile.csv"
        options = QnnOptions(soc_model=soc_model, profiling_level="detailed", profiling_file_path=str(csv_path))
        session = create_session(model, ep="qnn", qnn=options)
        assigned = graph_assignment(session)
        session.run(None, feeds)  # warm-up: its events are in the profile too; the op rows are taken per run below
        start = time.perf_counter()
        session.run(None, feeds)
        wall_ms = (time.perf_counter() - start) * 1000
        del session  # QNN writes its profile when the session ends
        ops = op_cycles(csv_path, nodes)
        events = _events(csv_path)
    per_run = len(ops) // 2 if len(ops) % 2 == 0 else len(ops)  # the last run's rows
    return {
        "latency_ms": round(wall_ms, 2),
        "htp_execute_ms": round(events.get(f"{EXECUTE_EVENT} [US]", float("nan")) / 1000, 3),
        "execute_cycles": int(events.get(f"{EXECUTE_EVENT} (cycles) [CYCLES]", 0)),
        "nodes_on_qnn": sum(sum(c.values()) for ep, c in assigned.items() if ep.startswith("QNN")),
        "nodes_total": sum(sum(c.values()) for c in assigned.values()),
        "peak_rss_gb": round(peak_rss_bytes() / 1e9, 3),
        **summarize(ops[-per_run:], top=top),
    }


PERF_SCHEMA = "sdxl-qdq-gate/perf/1"


def qnn_versions() -> dict[str, str]:
    """onnxruntime, onnxruntime-qnn and the QNN SDK it carries (empty where not installed)."""
    import onnxruntime

    found = {"onnxruntime": onnxruntime.__version__}
    try:
        from onnxruntime_qnn import build_and_package_info as info

        found.update({"onnxruntime-qnn": info.__version__, "qnn": getattr(info, "qnn_version", "?")})
    except ImportError:
        pass
    return found


def perf_record(build: Any, *, soc_model: str, components: tuple[str, ...] | None = None, top: int = 10) -> dict:
    """A per-device performance record of ``build``'s QDQ components on the QNN EP, the way Qualcomm AI Hub's
    perf.yaml keeps one: per component the host latency of one call, HTP execute time and cycles, peak memory of the
    process that ran it, nodes on QNN of all, and the top ops by cycles mapped to ONNX nodes. Each component runs in
    its own spawned process (many QNN sessions in one process can crash it), on its first calibration input."""
    import multiprocessing
    import platform
    from concurrent.futures import ProcessPoolExecutor

    from sdxl_qdq.components import COMPONENTS
    from sdxl_qdq.convert.calibration import iter_calibration
    from sdxl_qdq.runtime import qnn_is_simulated

    chosen = components or COMPONENTS
    results = {}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        for c in chosen:
            feeds = next(iter(iter_calibration(build.calibration_dir, c)))
            results[c] = pool.submit(profile_component, str(build.qdq.models[c]), feeds, soc_model, top).result()
    return {
        "schema": PERF_SCHEMA,
        "model": build.source.name,
        "recipe": build.recipe_name,
        "soc_model": soc_model,
        "backend": "htp simulator" if qnn_is_simulated() else "htp",
        "machine": f"{platform.system()} {platform.machine()}",
        "versions": qnn_versions(),
        "components": results,
    }


def perf_lines(record: dict, *, top: int = 5) -> list[str]:
    """The record as text: per component its figures and top ops."""
    out = [
        f"{record['model']} ({record['recipe']}) on QNN {record['backend']}, soc {record['soc_model']}; "
        + ", ".join(f"{k} {v}" for k, v in record["versions"].items())
    ]
    for c, r in record["components"].items():
        out.append(
            f"{c:15s} host {r['latency_ms']:10.1f} ms  HTP {r['htp_execute_ms']:10.1f} ms  {r['execute_cycles']:>14,d} "
            f"cycles  nodes on QNN {r['nodes_on_qnn']}/{r['nodes_total']}  peak {r['peak_rss_gb']:.2f} GB"
        )
        for op in r["top_ops"][:top]:
            out.append(f"{'':15s} {op['share']:6.1%}  {op['op_type']:22s} {op['node']}")
    return out
