"""Additive powers of two: exact sums of signed powers of two, geometric-midpoint rounding, zero terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm1bit.quant.numerics.apot import (
    apot,
    apot_scalar,
    apot_split,
    apot_value,
    apot_values,
    pot,
    pot_exponent,
)


def _values(seed: int = 0, count: int = 5000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = np.abs(rng.standard_normal(count)) * 10.0 ** rng.integers(-8, 4, count)
    return np.concatenate([v, [0.0, 1.0, 0.75, 1.5, 3.0, 2.0**-20, 1e-38]]).astype(np.float32)


@pytest.mark.parametrize("terms", [1, 2, 3, 5])
def test_values_are_exact_sums_of_signed_powers_of_two(terms: int) -> None:
    v = _values()
    values, signs, exps = apot(v, terms)
    assert values.dtype == np.float32 and signs.dtype == np.int8 and exps.dtype == np.int8
    assert signs.shape == v.shape + (terms,)
    assert set(np.unique(signs)) <= {-1, 0, 1}
    exact = (signs.astype(np.float64) * np.ldexp(1.0, exps.astype(np.int32))).sum(-1)
    assert np.array_equal(values.astype(np.float64), exact)  # float32 value == the real-number sum
    assert np.array_equal(apot_value(signs, exps), values)
    assert ((signs != 0).sum(-1) <= terms).all()
    assert (signs[..., 0] >= 0).all()  # the first term of a non-negative scale is positive (or 0 for 0)


def test_more_terms_approximate_better() -> None:
    v = _values(1)
    errors = [np.abs(apot(v, t)[0].astype(np.float64) - v).sum() for t in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("k", [-30, -7, -1, 0, 3, 20])
def test_pot_threshold_is_the_geometric_midpoint(k: int) -> None:
    mid = np.float32(2.0 ** (k + 0.5))  # the float32 nearest to the irrational midpoint
    below = mid if float(mid) < 2.0 ** (k + 0.5) else np.nextafter(mid, np.float32(0))
    above = np.nextafter(below, np.float32(np.inf))
    assert pot(np.array([below]))[0] == np.float32(2.0**k)
    assert pot(np.array([above]))[0] == np.float32(2.0 ** (k + 1))
    # between the geometric (1.414) and the arithmetic (1.5) midpoint: rounds up in the log domain
    assert pot(np.array([np.float32(1.45 * 2.0**k)]))[0] == np.float32(2.0 ** (k + 1))
    assert pot(np.array([np.float32(-1.45 * 2.0**k)]))[0] == np.float32(-(2.0 ** (k + 1)))
    assert pot(np.array([np.float32(1.40 * 2.0**k)]))[0] == np.float32(2.0**k)


def test_zero_residual_gives_a_zero_term() -> None:
    values, signs, exps = apot(np.array([0.0, 0.25, 0.75, 1.5], dtype=np.float32), 3)
    assert values.tolist() == [0.0, 0.25, 0.75, 1.5]
    assert signs.tolist() == [[0, 0, 0], [1, 0, 0], [1, -1, 0], [1, -1, 0]]
    assert exps.tolist() == [
        [0, 0, 0],
        [-2, 0, 0],
        [0, -2, 0],
        [1, -1, 0],
    ]  # 0.75 = 2^0 - 2^-2; 1.5 = 2^1 - 2^-1
    assert pot_exponent(np.array([0.0]))[0].tolist() == [0]


def test_second_terms_can_be_negative() -> None:
    _, signs, _ = apot(_values(2), 3)
    assert (signs[..., 1] == -1).any() and (signs[..., 1] == 1).any()


def test_scalar_path_equals_the_array_path() -> None:
    v = _values(3, 2000)
    for terms in (1, 3, 4):
        values, signs, exps = apot(v, terms)
        for i, x in enumerate(v):
            s, sg, ex = apot_scalar(float(x), terms)
            assert np.float32(s) == values[i] and sg == tuple(signs[i]) and ex == tuple(exps[i])


def test_out_of_range_exponents() -> None:
    values, signs, exps = apot(np.array([2.0**-140], dtype=np.float32), 2)  # subnormal: no int8 exponent
    assert values[0] == 0 and (signs == 0).all()
    with pytest.raises(ValueError):
        apot(np.array([3.0e38], dtype=np.float32), 1)  # rounds to 2**128
    with pytest.raises(ValueError):
        apot(np.array([1.0], dtype=np.float32), 0)


@pytest.mark.parametrize("terms", [1, 3, 4])
def test_torch_path_from_the_bits_equals_the_reference(terms: int) -> None:
    """The solver's `apot_split` / `apot_values` (exponent from the float32 bits) equal `apot` for normal floats,
    at the geometric midpoints too."""
    k = np.arange(-30, 21)
    mid = np.float32(2.0 ** (k + 0.5))
    v = np.concatenate(
        [_values(4), mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(np.inf))]
    )
    v = np.concatenate([v, -v]).astype(np.float32)
    values, signs, exps = apot(v, terms)
    t_values, t_signs, t_exps = apot_split(torch.from_numpy(v), terms)
    assert np.array_equal(t_values.numpy(), values)
    assert np.array_equal(t_signs.numpy(), signs) and np.array_equal(t_exps.numpy(), exps)
    assert np.array_equal(apot_values(torch.from_numpy(v), terms).numpy(), values)
