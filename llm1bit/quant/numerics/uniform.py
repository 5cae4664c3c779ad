"""Uniform asymmetric quantization (the `rtn` and `gptq` baselines), GPTQ's quantizer in numpy.

Per output row (and per group of `groupsize` input columns when > 0):
    xmin = min(min x, 0), xmax = max(max x, 0)   (both 0 -> -1, +1)
    scale = (xmax - xmin) / (2**bits - 1),  zero = round(-xmin / scale)
    q = clamp(round(x / scale) + zero, 0, 2**bits - 1),  x_hat = scale * (q - zero)
All float32, the same operations as `UniformCodes.dequantize`, so the solver's columns equal the
stored result bit for bit."""

from __future__ import annotations

import numpy as np

from llm1bit.quant.numerics.codes import UniformCodes


def uniform_params(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero) float32 per row of x (rows, m)."""
    maxq = np.float32(2**bits - 1)
    xmin = np.minimum(x.min(axis=1), np.float32(0))
    xmax = np.maximum(x.max(axis=1), np.float32(0))
    both = (xmin == 0) & (xmax == 0)
    xmin = np.where(both, np.float32(-1), xmin)
    xmax = np.where(both, np.float32(1), xmax)
    scale = ((xmax - xmin) / maxq).astype(np.float32)
    zero = np.round(-xmin / scale).astype(np.float32)
    return scale, zero


def uniform_quantize(
    x: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """(q uint8, x_hat float32) for x with broadcastable scale/zero."""
    maxq = np.float32(2**bits - 1)
    q = np.clip(np.round(x / scale) + zero, np.float32(0), maxq)
    return q.astype(np.uint8), (scale * (q - zero)).astype(np.float32)


def rtn(w: np.ndarray, bits: int, groupsize: int) -> UniformCodes:
    """Round-to-nearest, per row or per (row, group of `groupsize` columns). w is float32 (N, K)."""
    import torch

    n, k = w.shape
    gs = k if groupsize <= 0 else groupsize
    n_groups = -(-k // gs)
    scale = np.empty((n, n_groups), dtype=np.float32)
    zero = np.empty((n, n_groups), dtype=np.float32)
    qweight = np.empty((n, k), dtype=np.uint8)
    for g in range(n_groups):
        cols = slice(g * gs, min((g + 1) * gs, k))
        scale[:, g], zero[:, g] = uniform_params(w[:, cols], bits)
        qweight[:, cols] = uniform_quantize(w[:, cols], scale[:, g, None], zero[:, g, None], bits)[0]
    return UniformCodes(torch.from_numpy(qweight), torch.from_numpy(scale), torch.from_numpy(zero), gs)


class UniformColumns:
    """The GPTQ solver's column quantizer for uniform codes.

    Without act-order, the parameters of a group are computed when the solver reaches its first
    column, from the weights as they are then (error feedback included); GPTQ's code reads them from
    a copy that lacks the feedback of the columns already done in the current 128-column block, which
    only matters for groups that do not start a block. With act-order and groups ("static groups"),
    the parameters of each group of consecutive original columns are computed up front from the
    original weights, so the stored layout (groups of original columns) stays valid. (The reference's
    GPTQ class crashes with act-order, spec §9.6; here act-order simply works.)"""

    width = 1

    def __init__(
        self, n: int, k: int, bits: int, groupsize: int, perm: np.ndarray, w_orig: np.ndarray, static: bool
    ):
        self.bits = bits
        self.gs = k if groupsize <= 0 else groupsize
        self.perm = perm
        self.n_groups = -(-k // self.gs)
        self.scale = np.empty((self.n_groups, n), dtype=np.float32)
        self.zero = np.empty((self.n_groups, n), dtype=np.float32)
        self.qweight = np.empty((k, n), dtype=np.uint8)  # permuted column order
        self.static = static
        if self.static:
            for g in range(self.n_groups):
                cols = slice(g * self.gs, min((g + 1) * self.gs, k))
                self.scale[g], self.zero[g] = uniform_params(w_orig[:, cols], bits)

    def begin_slab(self, wt: np.ndarray, start: int, end: int) -> None:
        if not self.static and start % self.gs == 0:
            g = start // self.gs
            self.scale[g], self.zero[g] = uniform_params(wt[start : start + self.gs].T, bits=self.bits)

    def column(self, w: np.ndarray, j: int) -> np.ndarray:
        g = self.perm[j] // self.gs
        q, xhat = uniform_quantize(w, self.scale[g], self.zero[g], self.bits)
        self.qweight[j] = q
        return xhat

    def result(self) -> UniformCodes:
        import torch

        qweight = np.empty_like(self.qweight)
        qweight[self.perm] = self.qweight
        return UniformCodes(
            torch.from_numpy(np.ascontiguousarray(qweight.T)),
            torch.from_numpy(np.ascontiguousarray(self.scale.T)),
            torch.from_numpy(np.ascontiguousarray(self.zero.T)),
            self.gs,
        )
