"""y = x W^T + b for a binary-coded `QuantLinear` (`layer` below; this module never imports it), computed
by the LUT kernel from its packed tensors.

`LLM1BIT_KERNEL` picks the path of every binary-coded layer's forward:
  auto  (default) the kernel where it applies (CPU tensors, shiftaddllm / bcq codes, no autograd), the dense
        path elsewhere; also the dense path for calls of more than `AUTO_MAX_TOKENS` rows (16 in bf16 / fp16)
        on a layer whose dense weight cache is on (`set_weight_cache`): there a cached matmul beats the
        kernel, whose time grows with the rows, while rebuilding W (seconds for 4096 x 11008) never pays
  lut   the kernel for every such call; a layer or CPU it cannot serve is a one-line error (`KernelRefused`)
  dense the dense rebuild (`QuantLinear`'s original forward)
`LLM1BIT_KERNEL_ISA=avx2` forces the AVX2 code on an AVX-512 CPU (tests, comparisons).

Acc incoherence (`llm1bit.quant.numerics.incoherence`): the stored weight is Q = U (W diag(s)) V^T, so
W x = U^T Q V (x / s): the activations are divided by s and rotated by V, the kernel applies Q, and its
output is rotated by U^T, all in float64 around the fp32 kernel; W itself is never formed."""

from __future__ import annotations

import ctypes
import os

import numpy as np
import torch

from llm1bit.errors import UserError, unknown_choice
from llm1bit.quant.hf.kernel import build
from llm1bit.quant.hf.kernel.layout import Prepared, Rotation, prepare

KERNEL_MODES = ("auto", "lut", "dense")
ISAS = {"avx2": 1, "avx512": 2}
# auto, layers with the dense weight cache on: calls of more rows (tokens) than this take the cached matmul.
# Per token the kernel costs about the same at any batch size; measured at 4096 -> 11008, 3 bits, 2 threads
# (scripts/bench_gemv.py --batch 1,4,16,64,256): a cached bf16 matmul (AMX / AVX512-BF16) catches up at about
# 16 rows, a cached fp32 one between 64 and 256.
AUTO_MAX_TOKENS = 64
AUTO_MAX_TOKENS_HALF = 16  # bf16 / fp16 compute dtype
# below this many weight bits x rows, one thread: waking a helper costs ~20 us in a VM (measured: 1536 x 1536
# x 3 bits is break-even, 1536 -> 8960 gains 1.4x with 2 threads on a busy 2-core machine)
THREAD_MIN_WORK = 12_000_000
BINARY_FORMATS = ("binary", "binary-pot")
_ATTR = "_lut_prepared"


class KernelRefused(UserError, ValueError):
    """LLM1BIT_KERNEL=lut on a layer or machine the kernel cannot serve (one line, names the layer and why)."""


def kernel_mode() -> str:
    mode = os.environ.get("LLM1BIT_KERNEL", "auto").strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise unknown_choice("LLM1BIT_KERNEL", mode, KERNEL_MODES)
    return mode


def forced_isa(lib: build.Library) -> int:
    name = os.environ.get("LLM1BIT_KERNEL_ISA", "").strip().lower()
    if not name:
        return lib.isa
    if name not in ISAS:
        raise unknown_choice("LLM1BIT_KERNEL_ISA", name, tuple(ISAS))
    if ISAS[name] > lib.isa:
        raise UserError(f"LLM1BIT_KERNEL_ISA={name}: this CPU runs only {lib.isa_name}")
    return ISAS[name]


def layer_reason(layer: torch.nn.Module, x: torch.Tensor | None = None) -> str | None:
    """Why the kernel cannot serve this layer (and input), or None when it can. Builds the kernel if needed."""
    fmt = layer.meta.get("format")
    if fmt not in BINARY_FORMATS:
        return f"its codes are {fmt} (rtn / gptq grids), the kernel reads binary codes (shiftaddllm, bcq)"
    devices = {t.device.type for t in layer.packed_tensors().values()}
    if x is not None:
        devices.add(x.device.type)
    if devices != {"cpu"}:
        return f"its tensors are on {', '.join(sorted(devices - {'cpu'}))}, the kernel runs on the CPU"
    if x is not None and x.requires_grad and torch.is_grad_enabled():
        return "its input requires a gradient and the kernel has no backward"
    if x is not None and x.shape[-1] != layer.in_features:
        return f"the input has {x.shape[-1]} features, the layer {layer.in_features}"
    if x is not None and not x.is_floating_point():
        return f"its input is {x.dtype}"
    if build.load() is None:  # warns once, with the reason
        return build.unavailable_reason() or "the LUT kernel could not be built or run here (see the warning)"
    return None


def describe(layer: torch.nn.Module, name: str | None = None) -> str:
    what = f"{layer.out_features}x{layer.in_features} {layer.meta.get('format')} {layer.bits}-bit"
    return f"{name} ({what})" if name else f"QuantLinear {what}"


def refusal(layer: torch.nn.Module, reason: str, name: str | None = None) -> KernelRefused:
    return KernelRefused(
        f"LLM1BIT_KERNEL=lut: layer {describe(layer, name)} cannot use the LUT kernel: {reason}"
    )


def require_lut(layer: torch.nn.Module, name: str | None = None, x: torch.Tensor | None = None) -> None:
    """Raise `KernelRefused` (one line naming the layer and why) unless the kernel serves this layer."""
    reason = layer_reason(layer, x)
    if reason is not None:
        raise refusal(layer, reason, name)


def prepared_for(layer: torch.nn.Module) -> Prepared:
    """The layer's kernel layout, built at first use and rebuilt when its buffers change (load, `.to`)."""
    tensors = layer.packed_tensors()
    key = tuple((name, t.data_ptr(), t._version, tuple(t.shape)) for name, t in tensors.items())
    cached = layer.__dict__.get(_ATTR)
    if cached is not None and cached.key == key:
        return cached
    layer.__dict__.pop(_ATTR, None)
    prepared = prepare(tensors, layer.meta)
    prepared.key = key
    layer.__dict__[_ATTR] = prepared
    return prepared


def drop_prepared(layer: torch.nn.Module) -> None:
    layer.__dict__.pop(_ATTR, None)


def forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The kernel's output for `layer(x)`, or None where the dense path should run (LLM1BIT_KERNEL)."""
    mode = kernel_mode()
    if mode == "dense":
        return None
    if mode == "auto":
        if layer.meta.get("format") not in BINARY_FORMATS:
            return None
        if layer.cache_weight:
            half = layer.compute_dtype in (torch.bfloat16, torch.float16)
            limit = AUTO_MAX_TOKENS_HALF if half else AUTO_MAX_TOKENS
            if x.numel() > limit * max(1, x.shape[-1]):
                return None
    reason = layer_reason(layer, x)
    if reason is not None:
        if mode == "lut":
            raise refusal(layer, reason)
        return None
    return lut_linear(prepared_for(layer), x, layer.bias)


def lut_linear(
    prepared: Prepared,
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    threads: int | None = None,
    isa: int | str | None = None,
) -> torch.Tensor:
    """x (..., K) -> (..., N) in x's dtype, through the kernel (fp32 tables and accumulation)."""
    lib = build.load()
    if lib is None:
        raise UserError(build.unavailable_reason() or "the LUT kernel is not available here")
    isa_id = forced_isa(lib) if isa is None else (ISAS[isa] if isinstance(isa, str) else int(isa))
    if isa_id > lib.isa:
        raise UserError(f"this CPU runs only {lib.isa_name}")
    n, k = prepared.n, prepared.k
    if x.shape[-1] != k:
        raise ValueError(f"input has {x.shape[-1]} features, the layer {k}")
    lead = x.shape[:-1]
    xf = x.detach().reshape(-1, k)
    m = xf.shape[0]
    if m == 0 or n == 0:
        out = torch.zeros(*lead, n, dtype=x.dtype)
        return out if bias is None else out + bias.to(x.dtype)
    if prepared.rescale is not None:
        x64 = xf.to(torch.float64).numpy() / prepared.rescale[None, :]
        x64 = rotate(lib, prepared.v, np.ascontiguousarray(x64), transpose=False)
        xf = torch.from_numpy(x64.astype(np.float32))
    else:
        xf = xf.to(torch.float32).contiguous()
    if threads is None:
        threads = torch.get_num_threads()
    if n * k * prepared.q * m < THREAD_MIN_WORK:
        threads = 1
    y = torch.empty(m, n, dtype=torch.float32)
    rc = lib.lib.llm1bit_lut_gemm(
        ctypes.byref(prepared.struct()), xf.data_ptr(), k, y.data_ptr(), n, m, threads, isa_id
    )
    if rc == -2:
        raise MemoryError("the LUT kernel could not allocate its tables")
    if rc != 0:
        raise RuntimeError(f"the LUT kernel refused the call (code {rc})")
    if prepared.rescale is not None:
        y64 = rotate(lib, prepared.u, y.numpy().astype(np.float64), transpose=True)
        y = torch.from_numpy(y64.astype(np.float32))
    if bias is not None:
        y += bias.detach().to(torch.float32)
    return y.to(x.dtype).reshape(*lead, n)


def rotate(lib: build.Library, rot: Rotation, x: np.ndarray, transpose: bool) -> np.ndarray:
    """Each row of x (m, n) float64 times M (transpose False) or M^T (True), M the rotation factor."""
    if rot.perms is None:  # legacy butterfly: numpy on (n, m)
        f = rot.factor.apply_t if transpose else rot.factor.apply
        return np.ascontiguousarray(f(np.ascontiguousarray(x.T)).T)
    x = np.ascontiguousarray(x, dtype=np.float64)
    stages = rot.perms.shape[0]
    rc = lib.lib.llm1bit_hadamard(
        rot.perms.ctypes.data,
        rot.flips.ctypes.data,
        stages,
        rot.n,
        int(transpose),
        x.ctypes.data,
        rot.n,
        x.shape[0],
    )
    if rc != 0:
        raise MemoryError("the rotation kernel could not allocate its buffer")
    return x
