"""Uniform asymmetric quantization (the `rtn` and `gptq` baselines), GPTQ's quantizer in torch.

Per output row (and per group of `groupsize` input columns when > 0):
    xmin = min(min x, 0), xmax = max(max x, 0)   (both 0 -> -1, +1)
    scale = (xmax - xmin) / (2**bits - 1),  zero = round(-xmin / scale)
    q = clamp(round(x / scale) + zero, 0, 2**bits - 1),  x_hat = scale * (q - zero)
All float32 on the weight's device, the same operations as `UniformCodes.dequantize`, so the solver's
columns equal the stored result bit for bit."""

from __future__ import annotations

import torch

from llm1bit.quant.numerics.codes import UniformCodes


def uniform_params(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) float32 per row of x (rows, m)."""
    maxq = float(2**bits - 1)
    xmin = x.min(dim=1).values.clamp(max=0.0)
    xmax = x.max(dim=1).values.clamp(min=0.0)
    both = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both, -1.0, xmin)
    xmax = torch.where(both, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.round(-xmin / scale)
    return scale, zero


def uniform_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q uint8, x_hat float32) for x with broadcastable scale/zero."""
    q = torch.clamp(torch.round(x / scale) + zero, 0.0, float(2**bits - 1))
    return q.to(torch.uint8), scale * (q - zero)


def rtn(w: torch.Tensor, bits: int, groupsize: int) -> UniformCodes:
    """Round-to-nearest, per row or per (row, group of `groupsize` columns). w is float32 (N, K)."""
    n, k = w.shape
    gs = k if groupsize <= 0 else groupsize
    n_groups = -(-k // gs)
    scale = torch.empty((n, n_groups), dtype=torch.float32, device=w.device)
    zero = torch.empty((n, n_groups), dtype=torch.float32, device=w.device)
    qweight = torch.empty((n, k), dtype=torch.uint8, device=w.device)
    for g in range(n_groups):
        cols = slice(g * gs, min((g + 1) * gs, k))
        scale[:, g], zero[:, g] = uniform_params(w[:, cols], bits)
        qweight[:, cols] = uniform_quantize(w[:, cols], scale[:, g, None], zero[:, g, None], bits)[0]
    return UniformCodes(qweight, scale, zero, gs)


class UniformColumns:
    """The GPTQ solver's column quantizer for uniform codes.

    Without act-order, the parameters of a group are computed when the solver reaches its first
    column, from the weights as they are then, with the error feedback of every column before it (the
    loop ends its lazy blocks there); GPTQ's code reads them from a copy that lacks the feedback of
    the columns already done in the current 128-column block, which only matters for groups that do
    not start a block. With act-order and groups ("static groups"), the parameters of
    each group of consecutive original columns are computed up front from the original weights, so the
    stored layout (groups of original columns) stays valid. (The reference's GPTQ class crashes with
    act-order, spec §9.6; here act-order simply works.)"""

    width = 1

    def __init__(
        self, n: int, k: int, bits: int, groupsize: int, perm: list[int], w_orig: torch.Tensor, static: bool
    ):
        self.bits = bits
        self.gs = k if groupsize <= 0 else groupsize
        self.perm = perm
        self.n_groups = -(-k // self.gs)
        device = w_orig.device
        self.scale = torch.empty((self.n_groups, n), dtype=torch.float32, device=device)
        self.zero = torch.empty((self.n_groups, n), dtype=torch.float32, device=device)
        self.qweight = torch.empty((k, n), dtype=torch.uint8, device=device)  # permuted column order
        self.static = static
        if self.static:
            for g in range(self.n_groups):
                cols = slice(g * self.gs, min((g + 1) * self.gs, k))
                self.scale[g], self.zero[g] = uniform_params(w_orig[:, cols], bits)

    def reads(self, start: int) -> int:
        return self.gs if not self.static and start % self.gs == 0 else 0

    def begin_slab(self, rows: torch.Tensor, start: int, end: int) -> None:
        g = start // self.gs
        self.scale[g], self.zero[g] = uniform_params(rows.T, bits=self.bits)

    def column(self, w: torch.Tensor, j: int) -> torch.Tensor:
        g = self.perm[j] // self.gs
        q, xhat = uniform_quantize(w, self.scale[g], self.zero[g], self.bits)
        self.qweight[j] = q
        return xhat

    def result(self) -> UniformCodes:
        perm = torch.tensor(self.perm, device=self.qweight.device)
        qweight = torch.empty_like(self.qweight)
        qweight[perm] = self.qweight
        return UniformCodes(
            qweight.T.contiguous(), self.scale.T.contiguous(), self.zero.T.contiguous(), self.gs
        )
