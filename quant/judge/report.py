"""Static HTML report of a gate run: metrics vs baseline, per-prompt MSE plot, image grid (worst first)."""

from __future__ import annotations

import html
import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from quant.cache import package_versions
from quant.judge.evaluation import STEPS, Evaluation
from quant.judge.gate import Check, Gate
from quant.judge.metrics import psnr_db
from quant.paths import BASELINES_DIR
from quant.run.generate import image_name

GRID = ("float@1", "qdq@1", "float@2", "qdq@2")
CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}td.l{text-align:left}
.fail{background:#fdd}.pass{background:#dfd}img{width:160px;height:160px;image-rendering:pixelated;display:block}
.grid td{vertical-align:top;text-align:center}.small{color:#666;font-size:12px}"""


def _status(check: Check) -> str:
    return "fail" if check.failure else "pass"


def _row(check: Check) -> str:
    cells = [html.escape(check.metric), f"{check.measured:.5g}", f"{check.baseline:.5g}",
             f"{'≤' if check.direction == 'max' else '≥'} {check.limit:.5g}", _status(check).upper(), html.escape(check.detail)]
    return f"<tr class={_status(check)}>" + "".join(
        f"<td class=l>{c}</td>" if i in (0, 5) else f"<td>{c}</td>" for i, c in enumerate(cells)) + "</tr>"


def _mse_plot(gate: Gate) -> str:
    """An inline SVG: per-prompt MSE (qdq@k vs float@k) as points, with the baseline limit as a line."""
    ev, width, height, pad = gate.evaluation, 900, 260, 40
    values = {k: np.asarray(ev.mse[k]) for k in STEPS}
    limits = {k: np.asarray([gate.mse(p, k).limit for p in ev.prompts]) for k in STEPS if gate.has("mse", str(k))}
    top = max([float(v.max()) for v in values.values()] + [float(v.max()) for v in limits.values()] + [1e-9]) * 1.05
    n = len(ev.prompts)

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad + i * (width - 2 * pad) / max(n - 1, 1), height - pad - v / top * (height - 2 * pad)

    colours = {1: "#1f77b4", 2: "#d62728"}
    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" stroke="#999"/>',
             f'<text x="{pad}" y="{pad - 8}" font-size="12">per-prompt MSE (0–255 pixels), max {top / 1.05:.3g}; '
             'dots: measured, lines: limit; blue 1 step, red 2 steps; x: prompt index</text>']
    for k, v in values.items():
        for i, value in enumerate(v):
            x, y = xy(i, float(value))
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colours[k]}"><title>{html.escape(ev.prompts[i].id)}: '
                         f'{value:.3f}</title></circle>')
        if k in limits:
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, float(lim)) for i, lim in enumerate(limits[k])))
            parts.append(f'<polyline points="{points}" fill="none" stroke="{colours[k]}" stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return "".join(parts)


def _parity_line(model: str) -> str:
    """How closely the CPU EP emulates the NPU for this model's QDQ components (baselines/<model>/parity.json)."""

    path = BASELINES_DIR / model / "parity.json"
    if not path.is_file():
        return "No QNN-vs-CPU parity is recorded for this model: CPU-EP results may not be what the NPU draws."
    data = json.loads(path.read_text())
    values = "; ".join(c + " " + ", ".join(f"{v['measured_db']:.1f}" for v in outs.values()) + " dB"
                       for c, outs in data["outputs"].items())
    return (f"QNN-vs-CPU parity of these QDQ components (SQNR, {html.escape(str(data.get('qnn_backend', 'QNN')))}, "
            f"soc {html.escape(str(data.get('qnn_soc', '?')))}, {data.get('prompts')} prompts): {html.escape(values)}.")


def _summary_rows(gate: Gate) -> list[str]:
    """Mean MSE, CLIP and FID of each variant against the baseline's, as table rows."""
    ev, rows = gate.evaluation, []
    for k in STEPS:
        mse = np.asarray(ev.mse[k])
        rows.append(f"<tr><td class=l>mean MSE qdq@{k} vs float@{k}</td><td>{mse.mean():.5g}</td>"
                    f"<td>{np.mean(gate.baseline['mse'][str(k)]['values']) if gate.has('mse', str(k)) else float('nan'):.5g}</td>"
                    f"<td>PSNR {psnr_db(float(mse.mean())):.2f} dB</td></tr>")
    for label, scores in ev.clip.items():
        base = np.mean(gate.baseline["clip"][label]) if label in gate.baseline.get("clip", {}) else float("nan")
        rows.append(f"<tr><td class=l>mean CLIP {label} [{html.escape(ev.backbones.clip)}]</td>"
                    f"<td>{np.mean(scores):.5g}</td><td>{base:.5g}</td><td></td></tr>")
    for label, value in ev.fid.items():
        base = gate.baseline.get("fid", {}).get(label, {}).get("value", float("nan"))
        rows.append(f"<tr><td class=l>FID {label} [{html.escape(ev.backbones.fid)}]</td>"
                    f"<td>{value:.5g}</td><td>{base:.5g}</td><td></td></tr>")
    return rows


def _image_grid(ev: Evaluation, folder: Path) -> list[str]:
    """One table row per prompt, worst 1-step MSE first, its images copied under ``folder/images``."""
    rows = []
    for i in sorted(range(len(ev.prompts)), key=lambda i: -ev.mse[1][i]):
        prompt = ev.prompts[i]
        cells = []
        for label in GRID:
            dest = folder / "images" / label.replace("@", "-") / image_name(prompt)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ev.image(label, prompt), dest)
            note = ""
            if label.startswith("qdq"):
                k = int(label[-1])
                note = f"MSE {ev.mse[k][i]:.3f} · PSNR {psnr_db(ev.mse[k][i]):.1f} dB"
            if label in ev.clip:
                note += f"{' · ' if note else ''}CLIP {ev.clip[label][i]:.2f}"
            cells.append(f'<td><img src="{dest.relative_to(folder).as_posix()}" alt="{label}">'
                         f'<span class=small>{note}</span></td>')
        rows.append(f"<tr><td class=l>{html.escape(prompt.id)}<br><span class=small>{html.escape(prompt.text)}</span></td>"
                    + "".join(cells) + "</tr>")
    return rows


def write_report(gate: Gate, out: Path) -> Path:
    """Write ``out/index.html`` and its images; the folder is replaced atomically. Returns the page's path."""
    ev = gate.evaluation
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    checks = gate.all_checks()
    failed = [c for c in checks if c.failure]
    aggregate = [c for c in checks if c.metric.startswith(("mean CLIP", "FID"))]
    per_prompt_failed = [c for c in failed if c not in aggregate]

    summary_rows = _summary_rows(gate)
    grid = _image_grid(ev, tmp)

    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    parity = _parity_line(ev.model)
    verdict = f"FAIL: {len(failed)} of {len(checks)} checks" if failed else f"PASS: all {len(checks)} checks"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Quality gate: {html.escape(ev.model)}</title>
<style>{CSS}</style></head><body>
<h1>Quality gate: {html.escape(ev.model)} — {verdict}</h1>
<p>Recipe <b>{html.escape(ev.recipe)}</b>; quantized variants (qdq@1, qdq@2) run on the <b>{html.escape(ev.ep_detail or ev.ep)}</b>,
float variants on the CPU EP; gated by the baseline made on the <b>{html.escape(str(gate.baseline.get('ep')))}</b> EP; {len(ev.prompts)} prompts;
CLIP backbone <b>{html.escape(ev.backbones.clip)}</b>, FID backbone <b>{html.escape(ev.backbones.fid)}</b>
(FID reference: {html.escape(ev.fid_reference)}). Baseline: {html.escape(str(gate.baseline.get('source', '')))}.
<br>{parity}
<br><span class=small>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} with {html.escape(versions)}.</span></p>
<h2>Metrics vs baseline</h2>
<table><tr><th>metric</th><th>measured</th><th>baseline</th><th></th></tr>{''.join(summary_rows)}</table>
<table><tr><th>check</th><th>measured</th><th>baseline</th><th>limit</th><th>status</th><th>detail</th></tr>
{''.join(_row(c) for c in aggregate)}</table>
<p>Per-prompt checks (MSE bound, CLIP floor): {len([c for c in checks if c not in aggregate])} run,
{len(per_prompt_failed)} failed.</p>
<table><tr><th>check</th><th>measured</th><th>baseline</th><th>limit</th><th>status</th><th>detail</th></tr>
{''.join(_row(c) for c in per_prompt_failed[:200])}</table>
<h2>Per-prompt MSE</h2>{_mse_plot(gate)}
<h2>Images, worst 1-step MSE first</h2>
<table class=grid><tr><th>prompt</th>{''.join(f'<th>{g}{" · " + html.escape(ev.ep.upper()) + " EP" if g.startswith("qdq") else " · CPU EP"}</th>' for g in GRID)}</tr>{''.join(grid)}</table>
<p class=small>Baseline tolerances: {html.escape(str(gate.baseline.get('derivation', {}).get('text', '')))}</p>
</body></html>"""
    (tmp / "index.html").write_text(page, encoding="utf-8")
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    return out / "index.html"
