"""What quantizing one linear layer produces: the codes as stored, and how to rebuild the weight.

`QuantizedWeight.dequantize()` is the single definition of the quantized weight: the solver
returns it, the packed format stores exactly its inputs, and a loaded `QuantLinear` calls it again in
its forward, so a reloaded weight equals the solver's output bit for bit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm1bit.quant.numerics.incoherence import LEGACY_BUTTERFLY, PHILOX_HADAMARD, Incoherence

__all__ = [
    "LEGACY_BUTTERFLY",
    "PHILOX_HADAMARD",
    "BinaryCodes",
    "Incoherence",
    "QuantizedWeight",
    "UniformCodes",
]

if TYPE_CHECKING:
    import torch


@dataclass
class BinaryCodes:
    """Binary-coding quantization: W[n, k] = sum_b scales[k // col_block, n // row_block, b] * codes[b, n, k].

    Produced by `shiftaddllm` (acc: col_block = 1, lat: col_block = 8) and by plain `bcq`.
    When the scales are additive powers of two, `scale_signs` / `scale_exps` hold their terms:
    scales == sum_t scale_signs[..., t] * 2.0 ** scale_exps[..., t] exactly (sign 0 = unused term)."""

    codes: torch.Tensor  # int8 (q, N, K), values +1 / -1 only
    scales: torch.Tensor  # float32 (ceil(K / col_block), ceil(N / row_block), q)
    col_block: int
    row_block: int
    scale_signs: torch.Tensor | None = None  # int8 (ceil(K/col_block), ceil(N/row_block), q, terms)
    scale_exps: torch.Tensor | None = None  # int8, same shape

    def dequantize(self) -> torch.Tensor:
        """float32 (N, K) weight, planes summed in order b = 0 .. q-1."""
        q, n, k = self.codes.shape
        scales = self.scales.repeat_interleave(self.col_block, dim=0)[:k]
        scales = scales.repeat_interleave(self.row_block, dim=1)[:, :n]  # (K, N, q)
        weight = None
        for b in range(q):
            plane = self.codes[b].float() * scales[:, :, b].T
            weight = plane if weight is None else weight + plane
        return weight


@dataclass
class UniformCodes:
    """Uniform asymmetric quantization (rtn / gptq): W[n, k] = scale[n, g] * (qweight[n, k] - zero[n, g]), g = k // groupsize."""

    qweight: torch.Tensor  # uint8 (N, K), values 0 .. 2**bits - 1
    scale: torch.Tensor  # float32 (N, n_groups)
    zero: torch.Tensor  # float32 (N, n_groups)
    groupsize: int  # columns per group (K when not grouped)

    def dequantize(self) -> torch.Tensor:
        k = self.qweight.shape[1]
        scale = self.scale.repeat_interleave(self.groupsize, dim=1)[:, :k]
        zero = self.zero.repeat_interleave(self.groupsize, dim=1)[:, :k]
        return scale * (self.qweight.float() - zero)


@dataclass
class QuantizedWeight:
    codes: BinaryCodes | UniformCodes
    incoherence: Incoherence | None = None
    error: float = (
        0.0  # 1/2 tr(E H E^T), E = W - Q in the original basis, H the calibration Hessian (0 without one)
    )

    def dequantize(self) -> torch.Tensor:
        """float32 (N, K) weight in the original basis; the one definition the solver and the loader share."""
        weight = self.codes.dequantize()
        if self.incoherence is not None:
            from llm1bit.quant.numerics.incoherence import undo_incoherence  # numpy, only when needed

            weight = undo_incoherence(weight, self.incoherence)
        return weight
