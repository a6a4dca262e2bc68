"""Attention rollout and aggregation on a worked example small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine.models.attention import aggregate, rollout

# (layers=2, heads=2, n=2, n=2): each row is a probability distribution over 2 tokens.
MAPS = np.array(
    [
        [  # layer 0
            [[1 / 2, 1 / 2], [1 / 2, 1 / 2]],
            [[1 / 2, 1 / 2], [0, 1]],
        ],
        [  # layer 1
            [[1, 0], [1, 0]],
            [[0, 1], [1, 0]],
        ],
    ]
)

# Heads averaged, per layer:
#   layer 0: ([[1/2, 1/2], [1/2, 1/2]] + [[1/2, 1/2], [0, 1]]) / 2 = [[1/2, 1/2], [1/4, 3/4]]
#   layer 1: ([[1, 0], [1, 0]] + [[0, 1], [1, 0]]) / 2             = [[1/2, 1/2], [1, 0]]
MEAN = np.array([[[1 / 2, 1 / 2], [1 / 4, 3 / 4]], [[1 / 2, 1 / 2], [1, 0]]])

# Plus the identity (the residual path), rows renormalized:
#   A0 = [[3/2, 1/2], [1/4, 7/4]] / 2 = [[3/4, 1/4], [1/8, 7/8]]
#   A1 = [[3/2, 1/2], [1,   1  ]] / 2 = [[3/4, 1/4], [1/2, 1/2]]
# Rollout = A1 @ A0 (the first layer rightmost):
#   row 0: [3/4*3/4 + 1/4*1/8, 3/4*1/4 + 1/4*7/8] = [18/32 + 1/32, 6/32 + 7/32] = [19/32, 13/32]
#   row 1: [1/2*3/4 + 1/2*1/8, 1/2*1/4 + 1/2*7/8] = [6/16 + 1/16, 2/16 + 7/16]  = [7/16, 9/16]
ROLLOUT = np.array([[19 / 32, 13 / 32], [7 / 16, 9 / 16]])

# The other order, A0 @ A1, would give row 0 = [3/4*3/4 + 1/4*1/2, 3/4*1/4 + 1/4*1/2]
# = [11/16, 5/16]: the test tells the two apart.
WRONG_ORDER_ROW_0 = np.array([11 / 16, 5 / 16])


def test_rollout_of_the_worked_example() -> None:
    result = rollout(MAPS)
    assert result.shape == (2, 2)
    np.testing.assert_allclose(result, ROLLOUT, rtol=0, atol=1e-12)
    assert not np.allclose(result[0], WRONG_ORDER_ROW_0)


def test_rollout_of_float32_maps_is_computed_in_float64() -> None:
    result = rollout(MAPS.astype(np.float32))
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, ROLLOUT, rtol=0, atol=1e-12)  # dyadic: exact in both


def test_rollout_of_one_layer_is_its_residual_corrected_mean() -> None:
    # Layer 0 alone: A0 from the worked example.
    np.testing.assert_allclose(
        rollout(MAPS[:1]), [[3 / 4, 1 / 4], [1 / 8, 7 / 8]], rtol=0, atol=1e-12
    )


def test_rollout_divides_by_the_row_sums_not_by_two() -> None:
    # Rows summing to 2, not 1: mean + I = [[1, 1], [1, 1]] + I = [[2, 1], [1, 2]], rows / 3.
    np.testing.assert_allclose(
        rollout(np.ones((1, 1, 2, 2))),
        [[2 / 3, 1 / 3], [1 / 3, 2 / 3]],
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    ("how", "expected"),
    [("none", MAPS), ("mean", MEAN), ("rollout", ROLLOUT)],
)
def test_aggregate(how, expected: np.ndarray) -> None:
    result = aggregate(MAPS, how)
    assert result.shape == expected.shape
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-12)
