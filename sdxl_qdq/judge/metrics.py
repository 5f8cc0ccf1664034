"""Metrics as pure functions with float64 accumulation."""

from __future__ import annotations

import numpy as np


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``reference``, in dB (inf when equal)."""
    ref = np.asarray(reference, dtype=np.float64)
    tst = np.asarray(test, dtype=np.float64)
    if ref.shape != tst.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, test {tst.shape}")
    err = ref - tst
    noise = float(np.sum(err * err))
    signal = float(np.sum(ref * ref))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)


def image_mse(reference: np.ndarray, test: np.ndarray) -> float:
    """Per-image MSE as the reference study computes it: 0–255 pixels as float32, mean over H×W×C.

    The squared differences are summed in float64 (the study's float32 mean agrees to ~1e-6 relative).
    """
    ref = np.asarray(reference)
    tst = np.asarray(test)
    if ref.shape != tst.shape or ref.ndim != 3:
        raise ValueError(f"expected two H×W×C images of one shape, got {ref.shape} and {tst.shape}")
    diff = ref.astype(np.float32) - tst.astype(np.float32)
    return float(np.mean(np.square(diff, dtype=np.float64)))


def psnr_db(mse: float, *, data_range: float = 255.0) -> float:
    """PSNR in dB for an MSE on pixels of ``data_range`` (inf when mse == 0)."""
    if mse < 0:
        raise ValueError(f"mse must be >= 0, got {mse}")
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def bootstrap_mean_ci(
    values: np.ndarray, *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (seeded, so the interval is reproducible)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"need a 1-D array of at least 2 values, got shape {x.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
