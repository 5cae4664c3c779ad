"""CPU kernel for binary-coded layers: y = x W^T from the packed bit planes and scales, W never built.

* `lut.c`     the C kernel (AVX-512 / AVX2 table lookups, pthreads; acc rotations in float64)
* `build`     compile with the system C compiler at first use, cache by source + flags + compiler, ctypes
* `layout`    the kernel's layout of one layer, built once from its packed tensors (`packed_codes` inverts it:
              a served layer keeps its codes only there)
* `gemv`      `lut_linear` (the computation), `forward` (QuantLinear's hook, LLM1BIT_KERNEL=auto|lut|dense, or
              `use_kernel`, which a command's --kernel sets), `dense_weight` (W rebuilt in C for calls of many
              rows), `require_lut` (the one-line refusal;
              `llm1bit.quant.hf.linear.require_lut_model` applies it to a whole model)
* `op`        `llm1bit::quant_linear`: a `QuantLinear` as one custom op, so `torch.compile` compiles around it
* `bf16`      the unquantized linears of a quantized model (lm_head): decode calls through a bf16 GEMV in C
              (`GemvLinear`, which the loaders `attach`; `llm1bit::bf16_linear` under torch.compile)"""

from llm1bit.quant.hf.kernel.gemv import (
    AUTO_MAX_TOKENS,
    KERNEL_MODES,
    KernelRefused,
    dense_weight,
    forward,
    kernel_mode,
    layer_reason,
    lut_linear,
    prepared_for,
    require_lut,
    use_kernel,
)
from llm1bit.quant.hf.kernel.layout import Prepared, packed_codes, prepare

__all__ = [
    "AUTO_MAX_TOKENS",
    "KERNEL_MODES",
    "KernelRefused",
    "Prepared",
    "dense_weight",
    "forward",
    "kernel_mode",
    "layer_reason",
    "lut_linear",
    "packed_codes",
    "prepare",
    "prepared_for",
    "require_lut",
    "use_kernel",
]
