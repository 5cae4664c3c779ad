"""Additive powers of two (spec §2): scales that a shifter can apply.

    PoT(v)     = sign(v) * 2 ** round(log2 |v|)         rounding in the log domain
    APoT(v, t) = s_1 + ... + s_t,  s_1 = PoT(v),  s_j = PoT(v - (s_1 + ... + s_{j-1}))

The threshold between 2**k and 2**(k+1) is the geometric midpoint 2**(k + 0.5), not 1.5 * 2**k.
A zero residual has log2 = -inf and gives the term 0 (stored as sign 0, exponent 0).

The reference evaluates log2 in float32; here round(log2|v|) is decided exactly (see
`pot_exponent`), which can differ from a float32 log2 only for values within an ulp of 2**(k+0.5).
The solver's torch path (`apot_values`, `apot_split`) decides it on the float32 bits instead: with
|v| = 1.f * 2**E, PoT(|v|) = 2**(E+1) iff 1.f >= sqrt 2, i.e. iff the 23-bit mantissa field is at
least POT_MANTISSA = ceil((sqrt 2 - 1) * 2**23), so adding 2**23 - POT_MANTISSA to the bits carries
into the exponent exactly then; masking the exponent field leaves the power of two. That is the same
rule for every normal float32 (tested against `apot`); a subnormal residual (below 2**-126) rounds to
2**-126 or 0 there, where `apot` keeps exponents down to -128.
Scales are float32 like the reference. For float32 inputs in the normal range every partial sum
is exactly representable: v - s is exact by Sterbenz's lemma (s is within a factor 2 of v) and a
multiple of the last bit of v, so no term is finer than that bit. `apot` nevertheless returns the
value rebuilt from its (sign, exponent) terms, so `values == sum_t signs * 2.0 ** exps` holds by
construction; a term whose exponent does not fit int8 (only for subnormal residuals, below 2**-128)
is dropped rather than stored wrongly."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

EXP_MIN = -128
EXP_MAX = 127


def pot_exponent(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sign, exponent) of PoT(v): sign in {-1, 0, 1} (int8), exponent int32 (0 where v == 0).

    The exponent is round(log2|v|) computed exactly: with |v| = m * 2**e, m in [0.5, 1), it is e when
    m >= 2**-0.5 (i.e. m*m >= 0.5, exact in float64 for a float32 mantissa) and e - 1 otherwise.
    log2|v| is irrational at the midpoint, so the half-to-even rule never applies."""
    v = np.asarray(v, dtype=np.float64)
    m, e = np.frexp(np.abs(v))
    e = e - (m * m < 0.5)
    sign = np.sign(v).astype(np.int8)
    return sign, np.where(sign != 0, e, 0).astype(np.int32)


def pot(v: np.ndarray) -> np.ndarray:
    """PoT(v) = sign(v) * 2 ** round(log2 |v|), float32 (0 where v == 0)."""
    sign, e = pot_exponent(v)
    return (sign * np.ldexp(1.0, e)).astype(np.float32)


def apot(v: np.ndarray, terms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """APoT(v, terms) for a float32 array of any shape.

    Returns (values float32, signs int8 (..., terms), exps int8 (..., terms)) with
    values == sum_t signs[..., t] * 2.0 ** exps[..., t] exactly."""
    if terms < 1:
        raise ValueError(f"apot needs at least one term, got {terms}")
    v = np.asarray(v, dtype=np.float32).astype(np.float64)
    signs = np.empty(v.shape + (terms,), dtype=np.float64)
    exps = np.empty(v.shape + (terms,), dtype=np.int64)
    s = np.zeros(v.shape, dtype=np.float64)  # sum of the terms so far, exact in float64
    for t in range(terms):
        r = v - s
        m, e = np.frexp(r)
        e -= m * m < 0.5
        sign = np.sign(r)
        s += sign * np.ldexp(1.0, e)  # r == 0: sign 0, term 0
        signs[..., t] = sign
        exps[..., t] = e
    exps[signs == 0] = 0
    if exps.size and (exps.min() < EXP_MIN or exps.max() > EXP_MAX):
        return _apot_careful(v, terms)
    return s.astype(np.float32), signs.astype(np.int8), exps.astype(np.int8)


def _apot_careful(v: np.ndarray, terms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`apot` when an exponent leaves the int8 range: a subnormal residual term is dropped; too large is an error."""
    signs = np.zeros(v.shape + (terms,), dtype=np.int8)
    exps = np.zeros(v.shape + (terms,), dtype=np.int8)
    s = np.zeros(v.shape, dtype=np.float64)
    for t in range(terms):
        sign, e = pot_exponent(v - s)
        if np.any((sign != 0) & (e > EXP_MAX)):
            raise ValueError("scale too large for an int8 power-of-two exponent")
        sign = np.where(e < EXP_MIN, 0, sign).astype(np.int8)
        e = np.where(sign != 0, e, 0)
        signs[..., t] = sign
        exps[..., t] = e
        s += sign * np.ldexp(1.0, e)
    return s.astype(np.float32), signs, exps


def apot_scalar(v: float, terms: int) -> tuple[float, tuple[int, ...], tuple[int, ...]]:
    """`apot` of one float32-representable value with Python floats (the solver's per-column fast path).

    Gives the same value, signs and exponents as `apot`."""
    frexp, ldexp = math.frexp, math.ldexp
    s = 0.0
    signs = [0] * terms
    exps = [0] * terms
    r = v
    for t in range(terms):
        if r == 0.0:
            break  # every later residual is 0 too
        m, e = frexp(r)  # r = m * 2**e, 0.5 <= |m| < 1
        if m * m < 0.5:
            e -= 1
        if e < EXP_MIN or e > EXP_MAX:
            if e > EXP_MAX:
                raise ValueError("scale too large for an int8 power-of-two exponent")
            break  # subnormal residual: dropped, and so would every later one be
        if r > 0:
            s += ldexp(1.0, e)
            signs[t] = 1
        else:
            s -= ldexp(1.0, e)
            signs[t] = -1
        exps[t] = e
        r = v - s  # exact: both are float32-representable and close (module docstring)
    return s, tuple(signs), tuple(exps)


def apot_value(signs: np.ndarray, exps: np.ndarray) -> np.ndarray:
    """Rebuild float32 values from (signs, exps) terms (last axis), summed exactly in float64."""
    terms = signs.astype(np.float64) * np.ldexp(1.0, exps.astype(np.int32))
    return terms.sum(axis=-1).astype(np.float32)


# ceil((sqrt(2) - 1) * 2**23): the smallest mantissa field of a value >= sqrt(2) * 2**E
POT_MANTISSA = 3474676
_EXP_FIELD = 0x7F800000


@lru_cache(maxsize=16)
def _bit_constants(device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """0-d int32 tensors (cheaper operands than Python integers): the carry offset and the exponent mask."""
    return (
        torch.tensor(0x800000 - POT_MANTISSA, dtype=torch.int32, device=device),
        torch.tensor(_EXP_FIELD, dtype=torch.int32, device=device),
    )


def _pot_abs(r: torch.Tensor) -> torch.Tensor:
    """PoT(|r|) of a float32 tensor on its device, from its bits (module docstring); 0 where r == 0."""
    carry, mask = _bit_constants(r.device)
    return torch.bitwise_and(r.abs().view(torch.int32) + carry, mask).view(torch.float32)


@lru_cache(maxsize=16)
def _sign_exp_mask(device: torch.device | str) -> torch.Tensor:
    """0-d int32 tensor: the sign and exponent fields of a float32."""
    return torch.tensor(-(1 << 31) | _EXP_FIELD, dtype=torch.int32, device=device)


def _pot(r: torch.Tensor) -> torch.Tensor:
    """PoT(r) with its sign: `_pot_abs` on the magnitude bits with the sign bit kept (the carry never reaches
    the sign bit of a finite value), two integer operations; 0 where r == 0 (-0.0 for -0.0)."""
    carry, _ = _bit_constants(r.device)
    return torch.bitwise_and(r.view(torch.int32) + carry, _sign_exp_mask(r.device)).view(torch.float32)


def apot_values(v: torch.Tensor, terms: int) -> torch.Tensor:
    """APoT(v, terms) values of a float32 tensor (the solver's rounds): the same values as `apot`."""
    s = _pot(v)
    for _ in range(1, terms):
        r = v - s  # exact (module docstring)
        s = s + _pot(r)
    return s


def apot_split(v: torch.Tensor, terms: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`apot` of a float32 tensor on its device: (values float32, signs int8 (..., terms), exps int8 (..., terms))."""
    if terms < 1:
        raise ValueError(f"apot needs at least one term, got {terms}")
    s = torch.zeros_like(v)
    signs, exps = [], []
    for _ in range(terms):
        r = v - s
        p = _pot_abs(r)
        used = p > 0
        signs.append(torch.where(used, torch.sign(r), 0.0).to(torch.int8))
        exps.append(torch.where(used, (p.view(torch.int32) >> 23) - 127, 0).to(torch.int8))
        s = s + torch.copysign(p, r)
    return s, torch.stack(signs, -1), torch.stack(exps, -1)
