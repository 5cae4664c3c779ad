"""The unquantized linears of a quantized model (lm_head above all) in decode: a bf16 x bf16 -> fp32 GEMV in
the kernel's C library (`llm1bit_bf16_gemv`), because torch's bf16 GEMV reads its weight at half the memory
bandwidth (Qwen2.5-1.5B's 467 MB lm_head: 26 ms a token at 2 threads, ~18 GB/s).

`attach(model)` turns the model's plain `nn.Linear` modules into `GemvLinear` (a subclass: same parameters,
state_dict and pickling), whose forward takes the C path for a call of one row (a decode step) when the
kernel is on (`kernel_mode()` auto or lut), the input and the weight are bf16 on the CPU, the weight has at
least `MIN_WEIGHTS` elements and no gradient is needed; every other call (prefill, fp32, a GPU, the dense
mode, tracing by torch.compile) is `F.linear`, as before. The loaders of quantized folders attach it.

Numerics: each product of two bf16 values is exact in fp32; the products are summed in fp32 (per SIMD lane,
then across lanes), the bias added in fp32 and the result rounded once to bf16, as torch's bf16 linear does
(its summation order differs). AVX512-BF16 (`vdpbf16ps`, which flushes denormals to zero) where the CPU has
it, else AVX-512F or AVX2 widening bf16 to fp32; `LLM1BIT_KERNEL_ISA=avx2` forces the AVX2 code."""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from llm1bit.errors import UserError
from llm1bit.quant.hf.kernel import build

BF16_ISAS = {"avx2": 1, "avx512": 2, "avx512bf16": 3}
# below this many weights a torch call is as fast (a ctypes call and the pool cost ~10 us)
MIN_WEIGHTS = 1 << 20
# below this many weights one thread: waking a helper costs more than it saves
THREAD_MIN_WEIGHTS = 1 << 22


def bf16_isa(lib: build.Library) -> int:
    """The GEMV's instruction set: the CPU's best, or AVX2 under LLM1BIT_KERNEL_ISA=avx2."""
    forced = os.environ.get("LLM1BIT_KERNEL_ISA", "").strip().lower()
    return min(lib.bf16_isa, BF16_ISAS["avx2"]) if forced == "avx2" else lib.bf16_isa


def gemv_bf16(
    x: torch.Tensor, weight: torch.Tensor, threads: int | None = None, isa: int | str | None = None
) -> torch.Tensor:
    """weight (N, K) bf16 times one bf16 row x (K elements, any leading shape of size 1) -> fp32 (N,)."""
    lib = build.load()
    if lib is None:
        raise UserError(build.unavailable_reason() or "the LUT kernel's library is not available here")
    isa_id = bf16_isa(lib) if isa is None else (BF16_ISAS[isa] if isinstance(isa, str) else int(isa))
    if not 1 <= isa_id <= lib.bf16_isa:
        raise UserError(
            f"bf16 GEMV isa {isa}: this CPU runs at most {lib.bf16_isa} (1 avx2, 2 avx512, 3 avx512bf16)"
        )
    n, k = weight.shape
    if weight.dtype != torch.bfloat16 or x.dtype != torch.bfloat16:
        raise ValueError(f"gemv_bf16 takes bf16 tensors, not {x.dtype} x {weight.dtype}")
    if x.numel() != k:
        raise ValueError(f"gemv_bf16 takes one row of {k} features, not {tuple(x.shape)}")
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    xf = x.detach().reshape(k).contiguous()
    y = torch.empty(n, dtype=torch.float32)
    if threads is None:
        threads = torch.get_num_threads() if n * k >= THREAD_MIN_WEIGHTS else 1
    rc = lib.lib.llm1bit_bf16_gemv(
        weight.data_ptr(), n, k, weight.stride(0), xf.data_ptr(), y.data_ptr(), threads, isa_id
    )
    if rc != 0:
        raise RuntimeError(f"the bf16 GEMV refused the call (code {rc})")
    return y


def takes_c_path(w: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether a linear of weight `w` runs the C GEMV on `x` (see the module docstring)."""
    from llm1bit.quant.hf.kernel.gemv import kernel_mode

    return (
        x.dtype == torch.bfloat16
        and w.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and w.device.type == "cpu"
        and w.dim() == 2
        and x.numel() == w.shape[1]
        and w.numel() >= MIN_WEIGHTS
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        and kernel_mode() != "dense"
        and build.load() is not None
    )


def bf16_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, threads: int | None = None
) -> torch.Tensor:
    """F.linear(x, weight, bias), through the C GEMV where `takes_c_path` says so (on `threads`, torch's
    count by default)."""
    if not takes_c_path(weight, x):
        return F.linear(x, weight, bias)
    y = gemv_bf16(x, weight, threads)
    if bias is not None:
        y += bias.detach().to(torch.float32)
    return y.to(torch.bfloat16).reshape(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("llm1bit::bf16_linear", mutates_args=())
def bf16_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: UP045
    """`bf16_linear` as one opaque op for torch.compile (dynamo cannot trace its ctypes call)."""
    return bf16_linear(x, weight, bias)


@bf16_linear_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: UP045
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


class GemvLinear(nn.Linear):
    """nn.Linear whose single-row bf16 calls on the CPU run the C GEMV (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # a decode-shaped call: one op in the graph; else traced F.linear
            one_row = x.dtype == torch.bfloat16 and x.numel() == self.in_features
            no_grad = not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            if one_row and self.weight.dtype == torch.bfloat16 and no_grad:
                return torch.ops.llm1bit.bf16_linear(x, self.weight, self.bias)
            return F.linear(x, self.weight, self.bias)
        return bf16_linear(x, self.weight, self.bias)


def attach(model: nn.Module) -> int:
    """Make every plain `nn.Linear` of `model` a `GemvLinear` (in place); returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = GemvLinear
            count += 1
    return count
