"""Pooling ignores padding; normalization leaves unit vectors and zero rows alone."""

from __future__ import annotations

import numpy as np

from app.engine.pooling import normalize, pool


def test_mean_pooling_ignores_padding() -> None:
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(pool(hidden, mask, "mean"), [[2.0, 3.0]])


def test_cls_pooling_takes_the_first_token() -> None:
    hidden = np.arange(12, dtype=float).reshape(1, 3, 4)
    np.testing.assert_allclose(pool(hidden, np.ones((1, 3)), "cls"), [[0, 1, 2, 3]])


def test_normalize_scales_rows_and_keeps_zero_rows() -> None:
    out = normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
