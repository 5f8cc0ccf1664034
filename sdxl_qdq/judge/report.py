"""Static HTML report of a gate run: metrics vs baseline, per-prompt MSE plot, image grid (worst first)."""

from __future__ import annotations

import html
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from sdxl_qdq.cache import package_versions
from sdxl_qdq.judge.checks import registry
from sdxl_qdq.judge.evaluation import STEPS, Evaluation
from sdxl_qdq.judge.gate import Check, Gate
from sdxl_qdq.judge.metrics import psnr_db
from sdxl_qdq.judge.set_distance import convergence_html
from sdxl_qdq.manifest import replace_folder
from sdxl_qdq.paths import BASELINES_DIR
from sdxl_qdq.run.generate import image_name

GRID = ("float@1", "qdq@1", "float@2", "qdq@2")
HEADERS = ("float@1", "qdq@1", "|qdq@1 − float@1|", "float@2", "qdq@2", "|qdq@2 − float@2|")
CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}td.l{text-align:left}
.failed{background:#fdd}.changed{background:#ffe9b3}.pass{background:#dfd}img{width:160px;height:160px;image-rendering:pixelated;display:block}
.grid td{vertical-align:top;text-align:center}.small{color:#666;font-size:12px}"""


def _row(check: Check) -> str:
    sign = "≤" if check.direction == "max" else "≥"
    cells = [
        html.escape(check.metric),
        f"{check.measured:.5g}",
        f"{check.baseline:.5g}",
        f"{sign} {check.limit:.5g}",
        f"{sign} {check.harm:.5g}",
        check.status.upper(),
        html.escape(check.detail),
    ]
    return (
        f"<tr class={check.status}>"
        + "".join(f"<td class=l>{c}</td>" if i in (0, 6) else f"<td>{c}</td>" for i, c in enumerate(cells))
        + "</tr>"
    )


TABLE_HEAD = (
    "<tr><th>check</th><th>measured</th><th>baseline</th><th>noise limit</th><th>harm floor</th><th>status</th>"
    "<th>detail</th></tr>"
)


GROUP_HEAD = (
    "<tr><th>check</th><th>failed</th><th>changed only</th><th>of</th><th>median outside</th><th>worst</th>"
    "<th>worst at</th><th>its noise limit</th><th>its harm floor</th></tr>"
)


def _group_rows(gate: Gate) -> list[str]:
    """One row per kind of check (and step or label) with checks outside their windows, most failures first: how
    many failed (outside the harm floor) and changed (outside the noise window only), the median of those measured
    values, and the worst with its prompt and bounds."""
    rows = []
    for g in gate.groups():
        outside = g.outside()
        if not outside:
            continue
        worst, where = outside[0]
        failed = sum(c.status == "failed" for c, _ in outside)
        median = float(np.median([c.measured for c, _ in outside]))
        cells = [
            html.escape(g.title),
            str(failed),
            str(len(outside) - failed),
            str(len(g.checks)),
            f"{median:.5g}",
            f"{worst.measured:.5g}",
            html.escape(where.id if where is not None else "the whole set"),
            f"{'≤' if worst.direction == 'max' else '≥'} {worst.limit:.5g}",
            f"{'≤' if worst.direction == 'max' else '≥'} {worst.harm:.5g}",
        ]
        rows.append(
            (
                -failed,
                -len(outside),
                f"<tr class={'failed' if failed else 'changed'}>"
                + "".join(f"<td class=l>{c}</td>" if i in (0, 6) else f"<td>{c}</td>" for i, c in enumerate(cells))
                + "</tr>",
            )
        )
    return [row for *_, row in sorted(rows, key=lambda r: r[:2])]


def _diagnosis_html(sections: list | None) -> str:
    """The failure diagnosis (``sdxl_qdq.diagnose.failure``): each section's lines, or why it could not run."""
    if not sections:
        return ""
    parts = ["<h2>Where the error comes from</h2>"]
    for s in sections:
        parts.append(f"<p><b>{html.escape(s.title)}</b></p><pre>{html.escape(chr(10).join(s.text()))}</pre>")
    return "".join(parts)


def _perf_html(perf: dict | None, *, top: int = 5) -> str:
    """Where HTP spends its time: per component its latency, cycles, nodes on QNN and top ops by cycles."""
    if not perf:
        return ""
    rows = []
    for c, r in perf["components"].items():
        ops = "<br>".join(
            f"{op['share']:.1%} {html.escape(op['op_type'])} <span class=small>{html.escape(op['node'])}</span>"
            for op in r["top_ops"][:top]
        )
        rows.append(
            f"<tr><td class=l>{c}</td><td>{r['latency_ms']:.1f}</td><td>{r['htp_execute_ms']:.1f}</td>"
            f"<td>{r['execute_cycles']:,}</td><td>{r['nodes_on_qnn']}/{r['nodes_total']}</td>"
            f"<td>{r['peak_rss_gb']:.2f}</td><td class=l>{ops}</td></tr>"
        )
    versions = ", ".join(f"{k} {v}" for k, v in perf["versions"].items())
    return (
        f"<h2>Where HTP spends its time</h2><p class=small>QNN {html.escape(perf['backend'])}, soc "
        f"{html.escape(str(perf['soc_model']))}, {html.escape(versions)}; one call per component on its first "
        "calibration input, detailed profiling; <a href=\"perf.json\">perf.json</a>.</p>"
        "<table><tr><th>component</th><th>host ms</th><th>HTP execute ms</th><th>cycles</th><th>nodes on QNN</th>"
        f"<th>peak GB</th><th>top ops by cycles</th></tr>{''.join(rows)}</table>"
    )


def _heat_map(reference: Path, test: Path, dest: Path) -> None:
    """|test − reference| per pixel (mean over channels) as a PNG: black = equal, white = 64 or more levels apart."""
    from PIL import Image

    with Image.open(reference) as a, Image.open(test) as b:
        diff = np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16)).mean(
            axis=2
        )
    Image.fromarray(np.clip(diff * 4, 0, 255).astype(np.uint8), mode="L").save(dest)


def _mse_plot(gate: Gate) -> str:
    """An inline SVG: per-prompt MSE (qdq@k vs float@k) as points, with the baseline limit as a line."""
    ev, width, height, pad = gate.evaluation, 900, 260, 40
    values = {k: np.asarray(ev.mse[k]) for k in STEPS}
    limits = {
        k: np.asarray([gate.check("mse", str(k), p).limit for p in ev.prompts])
        for k in STEPS
        if gate.has("mse", str(k))
    }
    top = max([float(v.max()) for v in values.values()] + [float(v.max()) for v in limits.values()] + [1e-9]) * 1.05
    n = len(ev.prompts)

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad + i * (width - 2 * pad) / max(n - 1, 1), height - pad - v / top * (height - 2 * pad)

    colours = {1: "#1f77b4", 2: "#d62728"}
    parts = [
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" stroke="#999"/>',
        f'<text x="{pad}" y="{pad - 8}" font-size="12">per-prompt MSE (0–255 pixels), max {top / 1.05:.3g}; '
        'dots: measured, lines: limit; blue 1 step, red 2 steps; x: prompt index</text>',
    ]
    for k, v in values.items():
        for i, value in enumerate(v):
            x, y = xy(i, float(value))
            title = f"{html.escape(ev.prompts[i].id)}: {value:.3f}"
            circle = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colours[k]}">'
            parts.append(f"{circle}<title>{title}</title></circle>")
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
    values = "; ".join(
        c + " " + ", ".join(f"{v['measured_db']:.1f}" for v in outs.values()) + " dB"
        for c, outs in data["outputs"].items()
    )
    return (
        f"QNN-vs-CPU parity of these QDQ components (SQNR, {html.escape(str(data.get('qnn_backend', 'QNN')))}, "
        f"soc {html.escape(str(data.get('qnn_soc', '?')))}, {data.get('prompts')} prompts): {html.escape(values)}."
    )


def _summary_rows(gate: Gate) -> list[str]:
    """Each registered metric's rows (sdxl_qdq.judge.checks): what, measured, baseline, note."""
    return [
        f"<tr><td class=l>{html.escape(what)}</td><td>{measured:.5g}</td><td>{base:.5g}</td>"
        f"<td>{html.escape(note)}</td></tr>"
        for metric in registry()
        for what, measured, base, note in metric.report_rows(gate)
    ]


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
            cells.append(
                f'<td><img src="{dest.relative_to(folder).as_posix()}" alt="{label}">'
                f'<span class=small>{note}</span></td>'
            )
            if label.startswith("qdq"):
                heat = folder / "images" / f"diff-{label[-1]}" / image_name(prompt)
                heat.parent.mkdir(parents=True, exist_ok=True)
                _heat_map(ev.image(f"float@{label[-1]}", prompt), ev.image(label, prompt), heat)
                cells.append(
                    f'<td><img src="{heat.relative_to(folder).as_posix()}" alt="|{label} − float|">'
                    '<span class=small>|qdq − float| × 4</span></td>'
                )
        rows.append(
            f"<tr><td class=l>{html.escape(prompt.id)}<br><span class=small>{html.escape(prompt.text)}</span></td>"
            + "".join(cells)
            + "</tr>"
        )
    return rows


def write_report(
    gate: Gate,
    out: Path,
    *,
    strict: bool = False,
    diagnosis: list | None = None,
    trend: str | None = None,
    perf: dict | None = None,
) -> Path:
    """Write ``out/index.html`` and its images; the folder is replaced atomically. Returns the page's path. The page
    opens with the verdict, what failed or changed grouped by kind of check, and where the error comes from
    (``diagnosis``: ``sdxl_qdq.diagnose.failure`` sections), then the worst images; each check outside its window
    and the full check tables are folded. ``trend``: the history's HTML (``sdxl_qdq.judge.history.trend_html``),
    after the metrics. ``perf``: the QNN performance record (``sdxl_qdq.diagnose.qnn_profile.perf_record``), as a
    section after the trend and as ``perf.json``."""
    from sdxl_qdq.judge.summary import verdict as gate_verdict

    ev = gate.evaluation
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    checks = gate.all_checks()
    failed = [c for c in checks if c.status == "failed"]
    changed = [c for c in checks if c.status == "changed"]
    aggregate = [c for c in checks if not c.per_prompt]
    per_prompt = [c for c in checks if c.per_prompt]

    summary_rows = _summary_rows(gate)
    grid = _image_grid(ev, tmp)

    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    parity = _parity_line(ev.model)
    word = gate_verdict(checks, strict=strict)
    verdict = {"failed": "FAIL", "changed": "PASS, CHANGED", "pass": "PASS"}[word]
    counts = (
        f"{len(failed)} of {len(checks)} checks outside their harm floor, {len(changed)} outside their noise window "
        f"only{' (failing: --strict-gate)' if strict else ''}"
    )
    attention = failed + changed
    groups = _group_rows(gate)
    one_by_one = (
        f"<details><summary>The {len(attention)} checks outside their windows, one by one</summary>"
        f"<table>{TABLE_HEAD}{''.join(_row(c) for c in attention)}</table></details>"
        if attention
        else ""
    )
    ep_tag = {
        g: (f" · {ev.ep.upper()} EP" if g.startswith("qdq") else " · CPU EP" if g.startswith("float") else "")
        for g in HEADERS
    }
    grid_head = "".join(f"<th>{g}{html.escape(ep_tag[g])}</th>" for g in HEADERS)
    n_failed, n_changed = (sum(c.status == s for c in per_prompt) for s in ("failed", "changed"))
    rest = (
        (
            f"<details><summary>The other {len(grid) - 20} prompts' images</summary><table class=grid>"
            f"{''.join(grid[20:])}</table></details>"
        )
        if len(grid) > 20
        else ""
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Quality gate: {html.escape(ev.model)}</title>
<style>{CSS}</style></head><body>
<h1 class={word}>Quality gate: {html.escape(ev.model)} — {verdict}</h1>
<p><b>{counts}.</b> A check outside its noise window means the quantized images <i>changed</i> beyond what
re-seeding or re-calibrating moves them; outside its harm floor they are <i>harmed</i>
(floors: <code>baselines/README.md</code>).</p>
{f'<table>{GROUP_HEAD}{"".join(groups)}</table>' if groups else ''}
{_diagnosis_html(diagnosis)}
{one_by_one}
<h2>Images, worst 1-step MSE first</h2>
<details open><summary>{len(ev.prompts)} prompts</summary>
<table class=grid><tr><th>prompt</th>{grid_head}</tr>{''.join(grid[:20])}</table></details>
<p>Recipe <b>{html.escape(ev.recipe)}</b>; quantized variants (qdq@1, qdq@2) run on the
<b>{html.escape(ev.ep_detail or ev.ep)}</b>, float variants on the CPU EP; gated by the baseline made on the
<b>{html.escape(str(gate.baseline.get('ep')))}</b> EP; {len(ev.prompts)} prompts
({html.escape(ev.prompt_set or 'the model’s own set')});
CLIP backbone <b>{html.escape(ev.backbones.clip)}</b>, FID backbone <b>{html.escape(ev.backbones.fid)}</b>
(FID reference: {html.escape(ev.fid_reference)}). Baseline: {html.escape(str(gate.baseline.get('source', '')))}.
<br>{parity}
<br><span class=small>Generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC} with {html.escape(versions)}. Machine-readable:
<a href="summary.json">summary.json</a>.</span></p>
<h2>Metrics vs baseline</h2>
<table><tr><th>metric</th><th>measured</th><th>baseline</th><th></th></tr>{''.join(summary_rows)}</table>
<table>{TABLE_HEAD}{''.join(_row(c) for c in aggregate)}</table>
{trend or ''}
{_perf_html(perf)}
{convergence_html(ev)}
<h2>Per-prompt MSE</h2>{_mse_plot(gate)}
<details><summary>All {len(per_prompt)} per-prompt checks (MSE bound, CLIP floor): {n_failed} failed,
{n_changed} changed</summary>
<table>{TABLE_HEAD}{''.join(_row(c) for c in per_prompt)}</table></details>
{rest}
<p class=small>Baseline tolerances: {html.escape(str(gate.baseline.get('derivation', {}).get('text', '')))}</p>
</body></html>"""
    (tmp / "index.html").write_text(page, encoding="utf-8")
    if perf is not None:
        (tmp / "perf.json").write_text(json.dumps(perf, indent=1) + "\n")
    replace_folder(tmp, out)
    return out / "index.html"


def _toolchain_table(toolchains: dict | None, names: tuple[str, str]) -> str:
    if not toolchains:
        return ""
    rows = []
    for side, name in zip(("a", "b"), names):
        t = toolchains[side]
        versions = ", ".join(f"{k} {v}" for k, v in t["versions"].items())
        parity = ", ".join(f"{c} {v:.1f} dB" for c, v in t["parity_db"].items()) or "not measured"
        placement = ", ".join(f"{c} {n}" for c, n in t["placement"].items()) or "not measured"
        rows.append(
            f"<tr><td class=l>{html.escape(name)}</td><td class=l>{html.escape(versions)}</td>"
            f"<td class=l>{html.escape(str(t['backend']))}</td><td class=l>{html.escape(placement)}</td>"
            f"<td class=l>{html.escape(parity)}</td></tr>"
        )
    return (
        "<h2>Toolchains</h2><table><tr><th>side</th><th>versions</th><th>backend</th><th>nodes on QNN</th>"
        "<th>QNN vs CPU EP (worst output)</th></tr>" + "".join(rows) + "</table>"
    )


def write_comparison(
    a: Evaluation,
    b: Evaluation,
    rows: list,
    out: Path,
    *,
    names: tuple[str, str] = ("A", "B"),
    toolchains: dict | None = None,
) -> Path:
    """``out/index.html`` (+ ``comparison.json``): the verdict per metric, then float | A | B per prompt, the prompts
    where the two recipes (or toolchains) differ most first. ``toolchains``: each side's versions, placement and
    parity (``sdxl_qdq.flows.compare_results``), shown under the verdicts and kept in comparison.json."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    colour = {"better": "pass", "worse": "failed", "indistinguishable": ""}
    table = "".join(
        f"<tr class={colour[r.verdict]}><td class=l>{html.escape(r.metric)}</td><td>{r.a:.5g}</td><td>{r.b:.5g}</td>"
        f"<td>{r.difference:+.4g}</td><td>[{r.low:+.4g}, {r.high:+.4g}]</td><td>{r.better_is} is better</td>"
        f"<td class=l><b>{html.escape(names[1])} is {r.verdict}</b></td></tr>"
        if r.verdict != "indistinguishable"
        else f"<tr><td class=l>{html.escape(r.metric)}</td><td>{r.a:.5g}</td><td>{r.b:.5g}</td>"
        f"<td>{r.difference:+.4g}</td><td>[{r.low:+.4g}, {r.high:+.4g}]</td><td>{r.better_is} is better</td>"
        "<td class=l>indistinguishable</td></tr>"
        for r in rows
    )
    order = sorted(range(len(a.prompts)), key=lambda i: -max(abs(b.mse[k][i] - a.mse[k][i]) for k in STEPS))
    grid = []
    for i in order:
        prompt, cells = a.prompts[i], []
        for label, ev, tag in (
            ("float@1", a, "float"),
            ("qdq@1", a, names[0]),
            ("qdq@1", b, names[1]),
            ("qdq@2", a, names[0]),
            ("qdq@2", b, names[1]),
        ):
            dest = tmp / "images" / f"{tag}-{label.replace('@', '-')}" / image_name(prompt)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ev.image(label, prompt), dest)
            note = f"MSE {ev.mse[int(label[-1])][i]:.3f}" if label.startswith("qdq") else ""
            src = dest.relative_to(tmp).as_posix()
            cells.append(f'<td><img src="{src}" alt="{tag} {label}"><span class=small>{note}</span></td>')
        grid.append(
            f"<tr><td class=l>{html.escape(prompt.id)}<br><span class=small>{html.escape(prompt.text)}</span></td>"
            + "".join(cells)
            + "</tr>"
        )
    heads = ["float@1", f"{names[0]} qdq@1", f"{names[1]} qdq@1", f"{names[0]} qdq@2", f"{names[1]} qdq@2"]
    first, second = html.escape(names[0]), html.escape(names[1])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Recipe comparison: {html.escape(a.model)}</title>
<style>{CSS}</style></head><body>
<h1>{second} ({html.escape(b.recipe)}) vs {first} ({html.escape(a.recipe)}) on {html.escape(a.model)}</h1>
<p>Same {len(a.prompts)} prompts and noise; quantized variants on the {html.escape(a.ep_detail or a.ep)}.
Difference = {second} − {first}: mean of paired per-prompt differences (MSE, CLIP) or of FID, with a 95 % bootstrap
interval over prompts; a verdict only when the interval excludes 0.</p>
<table><tr><th>metric</th><th>{first}</th><th>{second}</th><th>difference</th><th>95 % interval</th><th></th>
<th>verdict</th></tr>{table}</table>
{_toolchain_table(toolchains, names)}
<h2>Images, largest difference between the two first</h2>
<table class=grid><tr><th>prompt</th>{''.join(f'<th>{html.escape(h)}</th>' for h in heads)}</tr>{''.join(grid)}</table>
</body></html>"""
    (tmp / "index.html").write_text(page, encoding="utf-8")
    (tmp / "comparison.json").write_text(
        json.dumps(
            {
                "model": a.model,
                "a": {"name": names[0], "recipe": a.recipe},
                "b": {"name": names[1], "recipe": b.recipe},
                "ep": a.ep,
                "prompts": len(a.prompts),
                "versions": package_versions(),
                "metrics": [r.record() for r in rows],
                **({"toolchains": toolchains} if toolchains else {}),
            },
            indent=1,
        )
        + "\n"
    )
    replace_folder(tmp, out)
    return out / "index.html"
