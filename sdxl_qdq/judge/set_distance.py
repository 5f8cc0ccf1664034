"""Set metrics that mean something at 100 images: the unbiased squared MMD between a drawn set's embeddings and the
reference set's (KID: the FID backbone's features, polynomial kernel; CMMD: the CLIP backbone's image embeddings,
RBF kernel). FID at 100 images is mostly its 1/n bias (the covariance of 2048 features has rank 99 at most); an
unbiased MMD is 0 on average for two sets of one distribution whatever their size.

The base of ``sdxl_qdq/judge/checks/kid.py`` and ``cmmd.py``: one check per quantized set, the value with its
jackknife interval (``jackknife_ci``: leaving a prompt's image and its reference out, never duplicating them).
Window: the baseline plus 3 σ of the value over float@1 sets drawn with other seeds (as FID). Harm: twice the window
above the baseline (an unbiased estimate sits near 0, so a floor relative to the baseline, as FID's +50 %, would mean
nothing).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sdxl_qdq.judge.checks import CheckKind, GatedMetric, NoiseSets
from sdxl_qdq.judge.metrics import jackknife_ci, mmd2_jackknife, mmd2_unbiased

SIGMA = 3.0  # window: 3 σ of the value over float@1 sets of other seeds
HARM_WINDOWS = 2.0  # harm: a rise of twice the window
LABELS = ("float@1", "qdq@1", "qdq@2")


class SetDistance(GatedMetric):
    by_step = False
    keys = ("qdq@1", "qdq@2")
    better_is = "lower"
    required = False  # baselines made before it: its checks skip until --update-baselines
    label = ""  # what its checks and rows are called: "KID×1000"
    title = ""  # and in words: "KID×1000 (the FID backbone's features, polynomial kernel)"
    scale = 1000.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kinds = (CheckKind(cls.name, per_prompt=False),)
        cls.baseline_keys = (cls.name,)
        cls.harm = {f"{cls.name}_harm_windows": HARM_WINDOWS}

    # -- what a subclass says
    def embed(self, images: list[np.ndarray], backbones: Any) -> np.ndarray:
        raise NotImplementedError

    def kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backbone(self, backbones: Any) -> str:
        raise NotImplementedError

    # -- the rest
    def distance(self, x: np.ndarray, reference: np.ndarray) -> float:
        return self.scale * mmd2_unbiased(x, reference, self.kernel)

    def measure(self, images, prompts, backbones, progress, dirs, reference) -> dict[str, Any]:
        progress(f"{self.label} with {self.backbone(backbones)}")
        ref = self.embed(reference, backbones)
        values, intervals, embeddings = {}, {}, {"reference": ref}
        for label in LABELS:
            x = embeddings[label] = self.embed(images[label], backbones)
            value, low, high = (self.scale * v for v in mmd2_jackknife(x, ref, self.kernel))
            values[label], intervals[label] = value, [low, high]
        return {"values": values, "intervals": intervals, "embeddings": embeddings}

    def noise(self, ev, sets: NoiseSets) -> dict[str, Any]:
        if self.name not in ev.measured:
            return {}
        ref = ev.measured[self.name]["embeddings"]["reference"]  # what measure embedded
        values = [ev.measured[self.name]["values"]["float@1"]]
        values += [self.distance(self.embed(s, ev.backbones), ref) for s in sets.seed_sets.values()]
        return {f"{self.name}_values": values, f"{self.name}_std": float(np.std(values, ddof=1))}

    def baseline_entries(self, ev) -> dict[str, Any]:
        if self.name not in ev.measured or f"{self.name}_std" not in ev.noise:
            return {}
        tol = SIGMA * ev.noise[f"{self.name}_std"]
        return {self.name: {k: {"value": v, "tolerance": tol} for k, v in ev.measured[self.name]["values"].items()}}

    def derivation(self, ev) -> tuple[str, dict[str, Any]]:
        text = (
            f"{self.title}: unbiased MMD² × {self.scale:g} vs the reference set; tolerance = {SIGMA} × std over "
            "float@1 sets of other seeds; harm at twice the tolerance above the baseline."
        )
        keys = (f"{self.name}_values", f"{self.name}_std")
        return text, {k: ev.noise[k] for k in keys if ev.noise and k in ev.noise}

    def check(self, gate, kind: str, key: str, prompt=None):
        from sdxl_qdq.judge.gate import Check

        entry, measured = gate.baseline[self.name][key], gate.evaluation.measured[self.name]
        low, high = measured["intervals"][key]
        return Check(
            f"{self.label} {key} [{self.backbone(gate.evaluation.backbones)}]",
            measured["values"][key],
            entry["value"],
            entry["value"] + entry["tolerance"],
            "max",
            f"95% jackknife interval [{low:.4g}, {high:.4g}]; reference: {gate.baseline.get('fid_reference')}",
            harm=entry["value"] + HARM_WINDOWS * entry["tolerance"],
        )

    def report_rows(self, gate) -> list[tuple[str, float, float, str]]:
        measured = gate.evaluation.measured.get(self.name)
        if not measured:
            return []
        stored = gate.baseline.get(self.name, {})
        return [
            (
                f"{self.label} {label} [{self.backbone(gate.evaluation.backbones)}]",
                value,
                stored.get(label, {}).get("value", float("nan")),
                "interval [{:.4g}, {:.4g}]".format(*measured["intervals"][label]),
            )
            for label, value in measured["values"].items()
        ]

    def differences(self, a, b, key: str, reference):
        """B − A over the same prompts, with the paired jackknife's interval (the same prompt left out of both)."""
        from sdxl_qdq.judge.compare import Difference

        if self.name not in a.measured or self.name not in b.measured:
            return []
        ref = a.measured[self.name]["embeddings"]["reference"]
        xa, xb = a.measured[self.name]["embeddings"][key], b.measured[self.name]["embeddings"][key]
        value, low, high = jackknife_ci(
            lambda keep: self.distance(xb[keep], ref[keep]) - self.distance(xa[keep], ref[keep]), len(xa)
        )
        name = f"{self.label} {key}"
        return [
            Difference(
                name,
                a.measured[self.name]["values"][key],
                b.measured[self.name]["values"][key],
                value,
                low,
                high,
                "lower",
            )
        ]


def convergence(ev: Any, *, points: int = 10) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Each set metric (FID, KID×1000, CMMD) of float@1 and qdq@1 on the first m prompts (and their references), for
    ``points`` values of m up to all of them: how far from settled a set metric is at this prompt count. Read from the
    embeddings KID and CMMD measured (KID's are FID's features); {} when they were not measured."""
    from sdxl_qdq.judge.backbones import fid_from_features
    from sdxl_qdq.judge.checks import registry

    metrics = {m.name: m for m in registry() if isinstance(m, SetDistance) and m.name in ev.measured}
    if "kid" not in metrics:
        return {}
    n = len(ev.prompts)
    sizes = sorted({max(3, round(n * (i + 1) / points)) for i in range(points)})
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    features = ev.measured["kid"]["embeddings"]
    out["FID"] = {
        label: [(m, fid_from_features(features[label][:m], features["reference"][:m])) for m in sizes]
        for label in ("float@1", "qdq@1")
    }
    for name, metric in metrics.items():
        emb = ev.measured[name]["embeddings"]
        out[metric.label] = {
            label: [(m, metric.distance(emb[label][:m], emb["reference"][:m])) for m in sizes]
            for label in ("float@1", "qdq@1")
        }
    return out


def convergence_html(ev: Any) -> str:
    """The report's section: per set metric and set, its value against the number of prompts (a sparkline)."""
    import html

    from sdxl_qdq.judge.history import sparkline

    curves = convergence(ev)
    if not curves:
        return ""
    rows = []
    for metric, sets in curves.items():
        for label, points in sets.items():
            values = [v for _, v in points]
            rows.append(
                f"<tr><td class=l>{html.escape(metric)} {html.escape(label)}</td><td>{sparkline(values, set())}</td>"
                + "".join(f"<td>{v:.4g}</td>" for v in values)
                + "</tr>"
            )
    sizes = "".join(f"<th>{m}</th>" for m, _ in next(iter(next(iter(curves.values())).values())))
    return (
        "<h2>Set metrics against the number of prompts</h2><p class=small>Each set metric on the first m prompts and "
        "their references (FID also carries its 1/n bias; KID and CMMD none). A metric still moving at the last "
        "column is not settled at this prompt count: more prompts would move it.</p>"
        f"<table><tr><th>set</th><th>m →</th>{sizes}</tr>{''.join(rows)}</table>"
    )
