"""Additive powers of two (spec §2): scales that a shifter can apply.

    PoT(v)     = sign(v) * 2 ** round(log2 |v|)         rounding in the log domain, half to even
    APoT(v, t) = s_1 + ... + s_t,  s_1 = PoT(v),  s_j = PoT(v - (s_1 + ... + s_{j-1}))

The threshold between 2**k and 2**(k+1) is the geometric midpoint 2**(k + 0.5), not 1.5 * 2**k.
A zero residual has log2 = -inf and gives the term 0 (stored as sign 0, exponent 0).

Everything is float32 like the reference. For float32 inputs in the normal range every partial sum
is exactly representable: v - s is exact by Sterbenz's lemma (s is within a factor 2 of v) and a
multiple of the last bit of v, so no term is finer than that bit. `apot` nevertheless returns the
value rebuilt from its (sign, exponent) terms, so `values == sum_t signs * 2.0 ** exps` holds by
construction; a term whose exponent does not fit int8 (only for subnormal residuals, below 2**-128)
is dropped rather than stored wrongly."""

from __future__ import annotations

import numpy as np

EXP_MIN = -128
EXP_MAX = 127


def pot_exponent(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sign, exponent) of PoT(v) for a float32 array: sign in {-1, 0, 1} (int8), exponent int32.

    The exponent is round(log2|v|) evaluated in float32 and rounded half to even; where v == 0 the
    sign is 0 and the exponent is reported as 0."""
    v = np.asarray(v, dtype=np.float32)
    sign = np.sign(v).astype(np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.round(np.log2(np.abs(v)))
    e = np.where(sign != 0, e, 0.0)
    return sign, e.astype(np.int32)


def pot(v: np.ndarray) -> np.ndarray:
    """PoT(v) = sign(v) * 2 ** round(log2 |v|), float32 (0 where v == 0)."""
    sign, e = pot_exponent(v)
    return (sign.astype(np.float32) * np.ldexp(np.float32(1.0), e)).astype(np.float32)


def apot(v: np.ndarray, terms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """APoT(v, terms) for a float32 array of any shape.

    Returns (values float32, signs int8 (..., terms), exps int8 (..., terms)) with
    values == sum_t signs[..., t] * 2.0 ** exps[..., t] exactly."""
    if terms < 1:
        raise ValueError(f"apot needs at least one term, got {terms}")
    v = np.asarray(v, dtype=np.float32)
    signs = np.zeros(v.shape + (terms,), dtype=np.int8)
    exps = np.zeros(v.shape + (terms,), dtype=np.int8)
    acc = np.zeros(v.shape, dtype=np.float64)  # running sum of the kept terms; exact in float64
    s = np.zeros(v.shape, dtype=np.float32)
    for t in range(terms):
        r = v - s  # float32, exact (see module docstring)
        sign, e = pot_exponent(r)
        if np.any((sign != 0) & (e > EXP_MAX)):
            raise ValueError("scale too large for an int8 power-of-two exponent")
        sign = np.where(e < EXP_MIN, 0, sign).astype(np.int8)  # subnormal residual: drop the term
        e = np.where(sign != 0, e, 0)
        signs[..., t] = sign
        exps[..., t] = e.astype(np.int8)
        acc += sign.astype(np.float64) * np.ldexp(1.0, e)
        s = acc.astype(np.float32)
    return s, signs, exps


def apot_value(signs: np.ndarray, exps: np.ndarray) -> np.ndarray:
    """Rebuild float32 values from (signs, exps) terms (last axis), summed exactly in float64."""
    terms = signs.astype(np.float64) * np.ldexp(1.0, exps.astype(np.int32))
    return terms.sum(axis=-1).astype(np.float32)
