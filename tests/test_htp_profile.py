"""Where HTP spends its time: QNN's detailed profile read into cycles per op, mapped back to ONNX nodes, and the
performance record (latency, cycles, peak memory, nodes on QNN) in the report and summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from sdxl_qdq.diagnose.qnn_profile import op_cycles, summarize

HEADER = "Msg Timestamp,Message,Time,Unit of Measurement,Timing Source,Event Level,Event Identifier\n"
ROWS = [  # as onnxruntime-qnn 2.7.0 writes them (QNN 2.51, HTP simulator), names shortened
    "0,FINALIZE,722791,US,BACKEND,ROOT,QNN (finalize) time",
    "0,NODE,3221,CYCLES,BACKEND,SUB-EVENT,Input OpId_2 (cycles)",
    "0,NODE,37011,CYCLES,BACKEND,SUB-EVENT,latent_sample_QuantizeLinear:OpId_16 (cycles)",
    "0,NODE,14989,CYCLES,BACKEND,SUB-EVENT,Transpose_token_315:OpId_18 (cycles)",
    "0,NODE,904640,CYCLES,BACKEND,SUB-EVENT,/mid/norm1/GroupNormalization_token_16:OpId_40 (cycles)",
    "0,NODE,29715,CYCLES,BACKEND,SUB-EVENT,/mid/nonlinearity/Mul:OpId_45 (cycles)",
    "0,BACKEND,989576,CYCLES,BACKEND,ROOT,Accelerator (execute) time (cycles)",
    "0,BACKEND,5972,US,BACKEND,ROOT,Accelerator (execute) time",
]
NODES = {
    "latent_sample_QuantizeLinear": "QuantizeLinear",
    "/mid/norm1/GroupNormalization": "GroupNormalization",
    "/mid/nonlinearity/Mul": "Mul",
}


def test_a_detailed_profile_maps_ops_to_onnx_nodes_and_shares(tmp_path: Path) -> None:
    profile = tmp_path / "p.csv"
    profile.write_text(HEADER + "\n".join(ROWS) + "\n")
    ops = op_cycles(profile, NODES)
    assert [(o.node, o.op_type, o.cycles) for o in ops] == [
        (None, "(inserted by QNN)", 3221),
        ("latent_sample_QuantizeLinear", "QuantizeLinear", 37011),
        (None, "(inserted by QNN)", 14989),
        ("/mid/norm1/GroupNormalization", "GroupNormalization", 904640),
        ("/mid/nonlinearity/Mul", "Mul", 29715),
    ]
    found = summarize(ops, top=2)
    assert found["op_cycles"] == 989576 and found["mapped_to_onnx"] == 3  # = the accelerator's cycles above
    assert [op["node"] for op in found["top_ops"]] == ["/mid/norm1/GroupNormalization", "latent_sample_QuantizeLinear"]
    assert found["top_ops"][0]["share"] == pytest.approx(904640 / 989576, abs=1e-4)
    assert sum(v["share"] for v in found["by_op_type"].values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.qnn
def test_the_performance_record_of_a_component_on_htp(qdq_artifacts, qdq_qnn_options) -> None:
    """On the simulator: the op cycles add up to the accelerator's execute cycles, every node is on QNN, and the top
    ops are nodes of the ONNX model."""
    pytest.importorskip("onnxruntime_qnn", reason="the QNN EP needs onnxruntime-qnn (pip install onnxruntime-qnn)")
    from sdxl_qdq.diagnose.qnn_profile import PERF_SCHEMA, perf_lines, perf_record

    record = perf_record(qdq_artifacts, soc_model=qdq_qnn_options.soc_model, components=("text_encoder",), top=3)
    assert record["schema"] == PERF_SCHEMA and record["versions"]["onnxruntime-qnn"]
    r = record["components"]["text_encoder"]
    assert r["op_cycles"] == r["execute_cycles"] > 0
    assert r["nodes_on_qnn"] == r["nodes_total"] > 0 and r["htp_execute_ms"] > 0 and r["peak_rss_gb"] > 0
    names = {n.name for n in onnx.load(str(qdq_artifacts.qdq.models["text_encoder"])).graph.node}
    assert len(r["top_ops"]) == 3 and any(op["node"] in names for op in r["top_ops"])
    assert r["mapped_to_onnx"] >= r["ops"] // 2
    assert perf_lines(record)[1].startswith("text_encoder")


def test_the_report_and_summary_carry_the_performance_record(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_verdicts import _gate

    from sdxl_qdq.judge.checks.mse import mse_at_psnr
    from sdxl_qdq.judge.report import write_report
    from sdxl_qdq.judge.summary import summary, validate

    component = {
        "latency_ms": 5.0,
        "htp_execute_ms": 4.5,
        "execute_cycles": 1000,
        "nodes_on_qnn": 10,
        "nodes_total": 10,
        "peak_rss_gb": 0.2,
        "top_ops": [{"node": "/a/GroupNormalization", "op_type": "GroupNormalization", "cycles": 600, "share": 0.6}],
    }
    perf = {
        "schema": "sdxl-qdq-gate/perf/1",
        "soc_model": "60",
        "backend": "htp simulator",
        "versions": {"onnxruntime-qnn": "2.7.0"},
        "components": {"unet": component},
    }
    gate = _gate(tmp_path, [mse_at_psnr(45.0)] * 2, [mse_at_psnr(45.0)] * 2)
    page = write_report(gate, tmp_path / "rep", perf=perf).read_text()
    assert "Where HTP spends its time" in page and "60.0% GroupNormalization" in page
    assert json.loads((tmp_path / "rep" / "perf.json").read_text()) == perf
    validate(summary(gate, perf=perf))
    with pytest.raises(Exception, match="required property"):
        validate(summary(gate, perf={**perf, "components": {"unet": {"latency_ms": 1.0}}}))
