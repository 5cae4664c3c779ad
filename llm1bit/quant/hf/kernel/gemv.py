"""y = x W^T + b for a binary-coded `QuantLinear` (`layer` below; this module never imports it), computed
by the LUT kernel from its packed tensors.

`LLM1BIT_KERNEL` (or `use_kernel`, which `--kernel` of `eval` and `bench` sets, and which wins) picks the path
of every binary-coded layer's forward:
  auto  (default) the kernel where it applies (CPU tensors, shiftaddllm / bcq codes, no autograd), the dense
        path elsewhere. Calls of more than `AUTO_MAX_TOKENS` rows (`AUTO_MAX_TOKENS_HALF` in bf16 / fp16:
        prefill, perplexity windows) take one dense matmul instead, where it is faster: the kernel's time grows with the rows (per
        row it reads tables, not weights), a matmul's hardly does. Its W is rebuilt for the call by the C
        library from the kernel's layout (`dense_weight`: tens of ms for 4096 x 11008, not the seconds of the
        Python rebuild) and dropped after: a layer the kernel serves never keeps a dense weight, whatever its
        weight cache (`set_weight_cache`, which now applies to the layers the kernel does not serve).
  lut   the kernel for every such call; a layer or CPU it cannot serve is a one-line error (`KernelRefused`)
  dense the dense rebuild (`QuantLinear`'s original forward)
`LLM1BIT_KERNEL_ISA=avx2` forces the AVX2 code on an AVX-512 CPU (tests, comparisons).

A layer the kernel has served keeps its codes only in the kernel's layout (`prepared_for` releases the
`codes` buffer of the `QuantLinear`, and a lat layer's `scale_terms` / `scales`; they are rebuilt from the
layout when asked for).

Acc incoherence (`llm1bit.quant.numerics.incoherence`): the stored weight is Q = U (W diag(s)) V^T, so
W x = U^T Q V (x / s): the activations are divided by s and rotated by V, the kernel applies Q, and its
output is rotated by U^T, all in float64 around the fp32 kernel; W itself is never formed."""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch

from llm1bit.errors import UserError, unknown_choice
from llm1bit.quant.device import KERNEL_MODES
from llm1bit.quant.hf.kernel import build
from llm1bit.quant.hf.kernel.layout import Prepared, Rotation, packed_codes, packed_scales, prepare

ISAS = {"avx2": 1, "avx512": 2}
# auto: calls of more rows (tokens) than this take one dense matmul on W rebuilt in C (`dense_weight`). Per row
# the kernel costs about the same at any batch size (4096 x 11008, 3 bits, 2 threads: ~0.5 ms a row, 63 ms at
# 128 rows); the rebuild costs ~25-45 ms once, a bf16 matmul (AMX / AVX512-BF16) 11 ms at 128 rows, an fp32
# one 47 ms (scripts/bench_gemv.py --batch 16,32,64,128,256 --rebuild): bf16 pays off above ~64 rows, fp32
# above ~256. Below these the kernel is the faster path, which is what batch 2-16 (and decode) get.
AUTO_MAX_TOKENS = 256
AUTO_MAX_TOKENS_HALF = 64  # bf16 / fp16 inputs
# below this many weight bits x rows, one thread: waking a helper costs ~20 us in a VM (measured: 1536 x 1536
# x 3 bits is break-even, 1536 -> 8960 gains 1.4x with 2 threads on a busy 2-core machine)
THREAD_MIN_WORK = 12_000_000
BINARY_FORMATS = ("binary", "binary-pot")
_ATTR = "_lut_prepared"


_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("llm1bit_kernel", default=None)


class KernelRefused(UserError, ValueError):
    """LLM1BIT_KERNEL=lut on a layer or machine the kernel cannot serve (one line, names the layer and why)."""


def kernel_mode() -> str:
    """auto, lut or dense: `use_kernel`'s mode where one is active (a command's --kernel), else LLM1BIT_KERNEL."""
    forced = _FORCED.get()
    if forced is not None:
        return forced
    mode = os.environ.get("LLM1BIT_KERNEL", "auto").strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise unknown_choice("LLM1BIT_KERNEL", mode, KERNEL_MODES)
    return mode


def mode_source() -> str:
    """How the mode was chosen, for refusals: '--kernel lut' or 'LLM1BIT_KERNEL=lut'."""
    forced = _FORCED.get()
    return f"--kernel {forced}" if forced is not None else f"LLM1BIT_KERNEL={kernel_mode()}"


@contextlib.contextmanager
def use_kernel(mode: str | None) -> Iterator[None]:
    """Force `mode` (auto|lut|dense) inside the block, over LLM1BIT_KERNEL (a command's --kernel); None: no-op."""
    if mode is None:
        yield
        return
    if mode not in KERNEL_MODES:
        raise unknown_choice("--kernel", mode, KERNEL_MODES)
    token = _FORCED.set(mode)
    try:
        yield
    finally:
        _FORCED.reset(token)


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
    held = (layer._buffers.get(name) for name in layer.packed_names)  # a released `codes` is on the CPU
    devices = {t.device.type for t in held if t is not None}
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
        f"{mode_source()}: layer {describe(layer, name)} cannot use the LUT kernel: {reason}"
    )


def require_lut(layer: torch.nn.Module, name: str | None = None, x: torch.Tensor | None = None) -> None:
    """Raise `KernelRefused` (one line naming the layer and why) unless the kernel serves this layer."""
    reason = layer_reason(layer, x)
    if reason is not None:
        raise refusal(layer, reason, name)


def _buffers_key(layer: torch.nn.Module) -> tuple:
    """What the layout depends on among the buffers the layer still holds (a released `codes` is the layout's)."""
    held = ((name, layer._buffers.get(name)) for name in layer.packed_names)
    return tuple((name, t.data_ptr(), _version(t), tuple(t.shape)) for name, t in held if t is not None)


def _version(t: torch.Tensor) -> int:
    """In-place writes bump it; inference tensors (made under torch.inference_mode) have none."""
    return -1 if t.is_inference() else t._version


def prepared_for(layer: torch.nn.Module) -> Prepared:
    """The layer's kernel layout, built at first use and rebuilt when its buffers change (load, `.to`). Once
    built, the layer's `codes` buffer is released: the layout holds the codes, once (`layout.packed_codes`
    gives them back); so are a lat layer's stored scales where the layout indexes them (`packed_scales`)."""
    key = _buffers_key(layer)
    cached = layer.__dict__.get(_ATTR)
    if cached is not None and cached.key == key:
        return cached
    tensors = layer.packed_tensors()  # rebuilt from the old layout if released
    layer.__dict__.pop(_ATTR, None)
    prepared = prepare(tensors, layer.meta)
    del tensors
    if hasattr(layer, "release_codes"):
        others = {}
        if prepared.scales_stored is not None:  # lat: the layout gives the stored scales back too
            others[prepared.scales_stored.name] = lambda: torch.from_numpy(packed_scales(prepared))
        layer.release_codes(lambda: torch.from_numpy(packed_codes(prepared)), others)
    prepared.key = _buffers_key(layer)
    layer.__dict__[_ATTR] = prepared
    return prepared


def drop_prepared(layer: torch.nn.Module) -> None:
    layer.__dict__.pop(_ATTR, None)


def dense_weight(prepared: Prepared, dtype: torch.dtype, threads: int | None = None) -> torch.Tensor:
    """W (N, K) in `dtype`, rebuilt by the C library from the kernel's layout (fp32 sums over the planes, as
    `BinaryCodes.dequantize`; bf16 rounded to nearest even, as torch's cast); acc layouts (rotations) are
    refused: their W is U^T Q V diag(1/s)."""
    if prepared.rescale is not None:
        raise ValueError("dense_weight does not rebuild rotated (acc incoherence) layers")
    lib = build.load()
    if lib is None:
        raise UserError(build.unavailable_reason() or "the LUT kernel is not available here")
    out_bf16 = dtype == torch.bfloat16
    w = torch.empty(prepared.n, prepared.k, dtype=torch.bfloat16 if out_bf16 else torch.float32)
    if prepared.n and prepared.k:
        threads = torch.get_num_threads() if threads is None else threads
        rc = lib.lib.llm1bit_lut_dequant(
            ctypes.byref(prepared.struct()), w.data_ptr(), prepared.k, int(out_bf16), threads
        )
        if rc != 0:
            raise RuntimeError(f"the LUT kernel's dense rebuild refused the call (code {rc})")
    return w if w.dtype == dtype else w.to(dtype)


def forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The kernel's output for `layer(x)`, or None where the dense path should run (LLM1BIT_KERNEL)."""
    mode = kernel_mode()
    if mode == "dense":
        return None
    many_rows = False
    if mode == "auto":
        if layer.meta.get("format") not in BINARY_FORMATS:
            return None
        half = x.dtype in (torch.bfloat16, torch.float16)
        limit = AUTO_MAX_TOKENS_HALF if half else AUTO_MAX_TOKENS
        many_rows = x.numel() > limit * max(1, x.shape[-1])
    prepared = layer.__dict__.get(_ATTR)
    fast = (  # a layer served before, an ordinary input: skip the full check (per-token overhead)
        prepared is not None
        and prepared.key == _buffers_key(layer)
        and x.device.type == "cpu"
        and x.is_floating_point()
        and x.shape[-1] == layer.in_features
        and not (x.requires_grad and torch.is_grad_enabled())
    )
    if not fast:
        reason = layer_reason(layer, x)
        if reason is not None:
            if mode == "lut":
                raise refusal(layer, reason)
            return None
        prepared = prepared_for(layer)
    if many_rows and prepared.rescale is None:
        weight = dense_weight(prepared, x.dtype)
        bias = None if layer.bias is None else layer.bias.to(x.dtype)
        return torch.nn.functional.linear(x.detach(), weight, bias)
    return lut_linear(prepared, x, layer.bias)


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
    if threads is None:
        threads = torch.get_num_threads()
    if n * k * prepared.q * m < THREAD_MIN_WORK:
        threads = 1
    if x.dtype == torch.bfloat16 and prepared.rescale is None and xf.is_contiguous():
        # bf16 in and out converted in C (the same bits as the fp32 path below, without its torch casts)
        y16 = torch.empty(m, n, dtype=torch.bfloat16)
        b32 = None if bias is None else bias.detach().to(torch.float32).contiguous()
        rc = lib.lib.llm1bit_lut_gemm_bf16(
            ctypes.byref(prepared.struct()),
            xf.data_ptr(),
            k,
            y16.data_ptr(),
            n,
            None if b32 is None else b32.data_ptr(),
            m,
            threads,
            isa_id,
        )
        _check(rc)
        return y16.reshape(*lead, n)
    if prepared.rescale is not None:
        x64 = xf.to(torch.float64).numpy() / prepared.rescale[None, :]
        x64 = rotate(lib, prepared.v, np.ascontiguousarray(x64), transpose=False)
        xf = torch.from_numpy(x64.astype(np.float32))
    else:
        xf = xf.to(torch.float32).contiguous()
    y = torch.empty(m, n, dtype=torch.float32)
    rc = lib.lib.llm1bit_lut_gemm(
        ctypes.byref(prepared.struct()), xf.data_ptr(), k, y.data_ptr(), n, m, threads, isa_id
    )
    _check(rc)
    if prepared.rescale is not None:
        y64 = rotate(lib, prepared.u, y.numpy().astype(np.float64), transpose=True)
        y = torch.from_numpy(y64.astype(np.float32))
    if bias is not None:
        y += bias.detach().to(torch.float32)
    return y.to(x.dtype).reshape(*lead, n)


def _check(rc: int) -> None:
    if rc == -2:
        raise MemoryError("the LUT kernel could not allocate its tables")
    if rc != 0:
        raise RuntimeError(f"the LUT kernel refused the call (code {rc})")


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


MAX_FUSED = 8  # layers one `llm1bit_lut_gemm_bf16_multi` call takes (MAXLAYERS in lut.c)
MAX_FUSED_ROWS = 16  # tokens per call (BLOCKM in lut.c)


class FusedLayers:
    """Several kernel-served lat layers that read the same input (q/k/v, gate/up of a decoder layer) as one
    call: x converted and its tables built once, one thread-pool job over the rows of all of them, the
    outputs side by side in one bf16 tensor. Each output has the same bits as the layer's own `lut_linear`.
    Built once for fixed layers (their layouts are taken now; a layer whose buffers change later needs a new
    one). `fusable` says why layers cannot be fused (None when they can)."""

    def __init__(self, prepared: list[Prepared], biases: list[torch.Tensor | None]) -> None:
        reason = fusable(prepared)
        if reason is not None:
            raise ValueError(reason)
        lib = build.load()
        assert lib is not None  # fusable checked it
        self.lib, self.isa = lib, forced_isa(lib)
        self.prepared = prepared  # keeps the arrays the structs point into alive
        self.k = prepared[0].k
        self.sizes = [p.n for p in prepared]
        self.n = sum(self.sizes)
        self.layers = (ctypes.POINTER(build.LutLayer) * len(prepared))(
            *(ctypes.pointer(p.struct()) for p in prepared)
        )
        self.count = len(prepared)
        if all(b is None for b in biases):
            self.bias = None
        else:
            parts = [
                torch.zeros(p.n) if b is None else b.detach().to(torch.float32).reshape(p.n)
                for p, b in zip(prepared, biases, strict=True)
            ]
            self.bias = torch.cat(parts).contiguous()
        self.work = self.n * self.k * prepared[0].q

    def __call__(self, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
        """x (..., K) bf16, at most MAX_FUSED_ROWS rows -> (..., sum of N) bf16, on `threads` (default:
        torch's, one below `THREAD_MIN_WORK`)."""
        lead = x.shape[:-1]
        xf = x.detach().reshape(-1, self.k)
        m = xf.shape[0]
        if x.dtype != torch.bfloat16 or not 1 <= m <= MAX_FUSED_ROWS or x.shape[-1] != self.k:
            raise ValueError(
                f"fused layers take 1-{MAX_FUSED_ROWS} bf16 rows of {self.k}, not {x.dtype} {tuple(x.shape)}"
            )
        if not xf.is_contiguous():
            xf = xf.contiguous()
        if threads is None:
            threads = torch.get_num_threads() if self.work * m >= THREAD_MIN_WORK else 1
        y = torch.empty(m, self.n, dtype=torch.bfloat16)
        _check(self.lib.lib.llm1bit_lut_gemm_bf16_multi(*self._args(xf, y, m, threads)))
        return y.reshape(*lead, self.n)

    def bind(self, x: torch.Tensor, y: torch.Tensor, threads: int) -> Callable[[], int]:
        """The call y = [W_0; W_1; ...] x for one row x, as a function of no arguments (its return code: 0
        when done) with every argument fixed: for a caller that runs the same layers on the same buffers every
        token (the lean decode step), ~1 us of Python a call. x (K) and y (sum of N) are contiguous bf16
        tensors the caller keeps alive."""
        if x.dtype != torch.bfloat16 or x.numel() != self.k or not x.is_contiguous():
            raise ValueError(
                f"bind takes one contiguous bf16 row of {self.k}, not {x.dtype} {tuple(x.shape)}"
            )
        if y.dtype != torch.bfloat16 or y.numel() != self.n or not y.is_contiguous():
            raise ValueError(
                f"bind writes one contiguous bf16 row of {self.n}, not {y.dtype} {tuple(y.shape)}"
            )
        return functools.partial(self.lib.lib.llm1bit_lut_gemm_bf16_multi, *self._args(x, y, 1, threads))

    def _args(self, x: torch.Tensor, y: torch.Tensor, m: int, threads: int) -> tuple:
        """`llm1bit_lut_gemm_bf16_multi`'s arguments for m rows of x into y."""
        bias = None if self.bias is None else self.bias.data_ptr()
        return (
            self.layers,
            self.count,
            x.data_ptr(),
            self.k,
            y.data_ptr(),
            self.n,
            bias,
            m,
            threads,
            self.isa,
        )


def pool_spin_us(us: int) -> int:
    """Let the kernel's helper threads poll `us` microseconds for the next call before they sleep (0: sleep
    at once, the default); returns the previous setting. For a caller that makes many small kernel calls in
    a row while nothing else runs (the lean decode step)."""
    lib = build.load()
    return 0 if lib is None else int(lib.lib.llm1bit_pool_spin_us(us))


def fusable(prepared: list[Prepared]) -> str | None:
    """Why these layouts cannot go through one `FusedLayers` call, or None."""
    if not 1 <= len(prepared) <= MAX_FUSED:
        return f"{len(prepared)} layers (1 to {MAX_FUSED} fuse)"
    if build.load() is None:
        return build.unavailable_reason() or "the LUT kernel is not available here"
    if any(p.mode != 0 or p.rescale is not None for p in prepared):
        return "only lat layouts (block scales, no rotation) fuse"
    if len({(p.k, p.kp) for p in prepared}) != 1:
        return "the layers read inputs of different widths"
    return None
