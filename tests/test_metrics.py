"""Metric functions against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quant.judge.metrics import sqnr_db


def test_sqnr_matches_hand_computation() -> None:
    ref = np.array([3.0, 4.0])  # signal power 25
    test = np.array([3.0, 3.5])  # noise power 0.25
    assert sqnr_db(ref, test) == pytest.approx(20.0)


def test_sqnr_matches_reference_on_random_data() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 77, 32)).astype(np.float32)
    test = ref + rng.normal(scale=0.01, size=ref.shape).astype(np.float32)
    expected = 10 * math.log10(sum(float(x) ** 2 for x in ref.ravel()) / sum(float(x) ** 2 for x in (ref - test).ravel()))
    assert sqnr_db(ref, test) == pytest.approx(expected, rel=1e-6)


def test_sqnr_edge_cases() -> None:
    assert sqnr_db(np.ones(3), np.ones(3)) == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        sqnr_db(np.ones(3), np.ones(4))
