"""QuantLinear: a linear layer that computes through its stored codes.

The reference torch path dequantizes the codes once (`QuantizedWeight.dequantize()`, the one definition
shared with the solver), casts to the activation dtype and caches the result as a non-persistent buffer
`weight`; a shift-and-add or LUT kernel would replace `forward` and read `quantized` directly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm1bit.quant.result import BinaryCodes, QuantizedWeight, UniformCodes


class QuantLinear(nn.Module):
    """y = x W^T + b with W rebuilt from `quantized` (codes + scales [+ incoherence])."""

    def __init__(
        self,
        quantized: QuantizedWeight,
        bias: torch.Tensor | None,
        dtype: torch.dtype = torch.float32,
        bits: int | None = None,
    ) -> None:
        super().__init__()
        self.quantized = quantized
        weight = quantized.dequantize()
        self.out_features, self.in_features = weight.shape
        self.bits = bits if bits is not None else code_bits(quantized)
        self.register_buffer("weight", weight.to(device="cpu", dtype=dtype), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        kind = type(self.quantized.codes).__name__
        inc = ", incoherence" if self.quantized.incoherence is not None else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, {kind}{inc}"
        )


def code_bits(quantized: QuantizedWeight) -> int:
    """Bits per weight of the codes: binary planes q, or the uniform grid's bit width."""
    codes = quantized.codes
    if isinstance(codes, BinaryCodes):
        return int(codes.codes.shape[0])
    if isinstance(codes, UniformCodes):
        top = int(codes.qweight.max().item()) if codes.qweight.numel() else 0
        return max(1, top.bit_length())
    raise TypeError(f"unknown codes {type(codes).__name__}")
