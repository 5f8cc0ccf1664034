"""Metric functions against independent references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sdxl_qdq.judge.metrics import bootstrap_mean_ci, image_mse, psnr_db, sqnr_db


def test_sqnr_matches_hand_computation() -> None:
    ref = np.array([3.0, 4.0])  # signal power 25
    test = np.array([3.0, 3.5])  # noise power 0.25
    assert sqnr_db(ref, test) == pytest.approx(20.0)


def test_sqnr_matches_reference_on_random_data() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 77, 32)).astype(np.float32)
    test = ref + rng.normal(scale=0.01, size=ref.shape).astype(np.float32)
    expected = 10 * math.log10(
        sum(float(x) ** 2 for x in ref.ravel()) / sum(float(x) ** 2 for x in (ref - test).ravel())
    )
    assert sqnr_db(ref, test) == pytest.approx(expected, rel=1e-6)


def test_sqnr_edge_cases() -> None:
    assert sqnr_db(np.ones(3), np.ones(3)) == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        sqnr_db(np.ones(3), np.ones(4))


def test_image_mse_and_psnr_match_torchmetrics() -> None:
    """Against torchmetrics' functional metrics, on 0-255 images (uint8 as the pipeline writes them)."""
    import torch
    from torchmetrics.functional import mean_squared_error
    from torchmetrics.functional.image import peak_signal_noise_ratio

    rng = np.random.default_rng(1)
    for _ in range(5):
        ref = rng.integers(0, 256, size=(64, 48, 3), dtype=np.uint8)
        test = np.clip(ref.astype(int) + rng.integers(-20, 21, size=ref.shape), 0, 255).astype(np.uint8)
        r, t = torch.from_numpy(ref.astype(np.float64)), torch.from_numpy(test.astype(np.float64))
        mse = image_mse(ref, test)
        assert mse == pytest.approx(float(mean_squared_error(t, r)), rel=1e-9)
        # torchmetrics holds data_range as a float32 tensor: agreement to float32 precision
        assert psnr_db(mse) == pytest.approx(float(peak_signal_noise_ratio(t, r, data_range=255.0)), rel=1e-6)


def _exact_bootstrap_means(x: np.ndarray) -> np.ndarray:
    """Every one of the n^n equally likely resamples of ``x``: the exact bootstrap distribution of the mean."""
    return np.array([np.mean(s) for s in itertools.product(x, repeat=x.size)])


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution() -> None:
    x = np.array([0.3, 1.9, -0.7, 2.6, 0.1, 5.2])  # 6^6 = 46,656 resamples
    exact = _exact_bootstrap_means(x)
    low, high = bootstrap_mean_ci(x, confidence=0.9, resamples=20_000)
    # the exact distribution puts 5 % below the lower end and 5 % above the upper one (Monte Carlo error ~0.3 %)
    assert np.mean(exact < low) == pytest.approx(0.05, abs=0.01)
    assert np.mean(exact > high) == pytest.approx(0.05, abs=0.01)


def test_bootstrap_interval_covers_the_true_mean_at_its_confidence() -> None:
    """500 samples of 50 normal values: the 95 % interval covers the true mean in 91.5-98 % of them (binomial
    3.5 σ around the percentile bootstrap's ~94 % at n=50); a 90 % or a 99 % interval would fall outside."""
    rng = np.random.default_rng(2)
    covered = 0
    for i in range(500):
        low, high = bootstrap_mean_ci(rng.normal(1.0, 2.0, size=50), resamples=2000, seed=i)
        covered += low <= 1.0 <= high
    assert 0.915 <= covered / 500 <= 0.98, covered / 500


def test_bootstrap_interval_refuses_what_it_cannot_resample() -> None:
    with pytest.raises(ValueError, match="at least 2 values"):
        bootstrap_mean_ci(np.array([1.0]))
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 95"):
        bootstrap_mean_ci(np.ones(5), confidence=95)


def test_t_quantile_matches_the_tables() -> None:
    from sdxl_qdq.judge.metrics import t_quantile

    for dof, expected in ((10, 2.2281), (30, 2.0423), (59, 2.0010), (99, 1.9842)):
        assert t_quantile(0.975, dof) == pytest.approx(expected, abs=2e-3)
    with pytest.raises(ValueError, match="dof >= 1"):
        t_quantile(0.975, 0)


def test_the_fid_difference_interval_covers_its_estimate_and_the_truth_at_its_confidence() -> None:
    """The recipe A/B's FID row (``fid_difference``): two quantized sets of the same 100 prompts (shared content plus
    each recipe's own error, of different size) as Gaussian features of 64 dimensions — the regime where FID's
    covariance is barely estimable, as 2048 Inception features on 100 prompts. The truth: the expected difference of
    the two recipes' FIDs at 100 prompts (what the gate measures), from 1,000 draws. Measured over these seeded
    experiments: 97 % coverage for a stated 95 %; the bootstrap that resampled prompts with replacement (the previous
    code) covered the population's difference in 52 % (40 dimensions, 60 prompts). Every interval holds its estimate."""
    import torch

    from sdxl_qdq.judge.backbones import fid_from_features
    from sdxl_qdq.judge.checks.fid import fid_difference

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 14,000 FIDs of 64 dimensions: threads only contend (140 s beside another worker)
    try:
        _fid_difference_coverage(fid_from_features, fid_difference)
    finally:
        torch.set_num_threads(threads)


def _fid_difference_coverage(fid_from_features, fid_difference) -> None:
    d, n, experiments = 64, 100, 60
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((4000, d))
    shared = np.linalg.cholesky(np.eye(d) * 0.8 + 0.2)
    mu_a, mu_b, err_a, err_b = np.full(d, 0.3), np.full(d, 0.35), 0.5, 0.3

    def draw(mu: np.ndarray = mu_b) -> tuple[np.ndarray, np.ndarray]:
        content = rng.standard_normal((n, d)) @ shared.T
        return mu_a + content + err_a * rng.standard_normal((n, d)), mu + content + err_b * rng.standard_normal((n, d))

    spread = [
        fid_from_features(b, reference) - fid_from_features(a, reference) for a, b in (draw() for _ in range(1000))
    ]
    truth = float(np.mean(spread))
    covered, ses = 0, []
    for _ in range(experiments):
        a, b = draw()
        estimate, low, high = fid_difference(a, b, reference)
        assert estimate == pytest.approx(fid_from_features(b, reference) - fid_from_features(a, reference))
        assert low <= estimate <= high
        covered += low <= truth <= high
        ses.append((high - low) / 2 / 1.984)
    assert covered / experiments >= 0.9, f"covered the truth in {covered} of {experiments}"
    assert np.median(ses) <= 1.5 * np.std(spread), "valid, but so wide it decides nothing"
    # and it decides where the data can: a recipe whose images drift 3x further from the reference is worse
    decided = sum(fid_difference(a, b, reference)[1] > 0 for a, b in (draw(3 * mu_a) for _ in range(10)))
    assert decided >= 9, f"the interval excluded 0 in {decided} of 10"


def test_the_mmd_estimate_is_unbiased_and_ignores_the_pairing_of_rows() -> None:
    """KID's and CMMD's estimator (``mmd2_unbiased``): two sets of 40 rows from one distribution give 0 on average
    (the V-statistic, diagonals kept, sits above 0 by its 1/n bias); the same holds when row i of one set is a noisy
    copy of row i of the other (a generated image and the reference of its prompt), which pulled the estimate that
    pairs rows far under 0 (canary KID×1000 −3.7, its 95 % interval [−4.6, −2.9]); a shifted set is positive."""
    from sdxl_qdq.judge.metrics import mmd2_unbiased, polynomial_kernel, rbf_kernel

    rng = np.random.default_rng(0)
    independent, paired, biased, shifted = [], [], [], []
    for _ in range(300):
        x, y = rng.standard_normal((40, 8)), rng.standard_normal((40, 8))
        independent.append(mmd2_unbiased(x, y, polynomial_kernel))
        copy = 0.6 * x + 0.8 * rng.standard_normal((40, 8))  # same distribution, row i tied to x's row i
        paired.append(mmd2_unbiased(x, copy, polynomial_kernel))
        k = polynomial_kernel
        biased.append(float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()))
        shifted.append(mmd2_unbiased(x, y + 0.5, rbf_kernel))
    for name, values in (("independent", independent), ("paired", paired)):
        mean, se = np.mean(values), np.std(values) / np.sqrt(len(values))
        assert abs(mean) < 3 * se, f"{name}: mean {mean:.4g}, standard error {se:.4g}"
    assert np.mean(biased) > 10 * np.std(biased) / np.sqrt(len(biased))
    assert min(shifted) > 0
    with pytest.raises(ValueError, match="two sets of the same size"):
        mmd2_unbiased(np.zeros((3, 2)), np.zeros((4, 2)), rbf_kernel)
