"""The LUT kernel (`lut.c`): built with the system C compiler at first use, cached and loaded by
`llm1bit.quant.native` (`<cache>/kernels/<hash>/liblut.so`); here its ctypes signatures and ISA. The library holds
both instruction sets (per-function `target` attributes, no -march=native) and reports which one this CPU runs
(`llm1bit_isa`), so a cache shared between machines stays valid.

No compiler, a failed build or a CPU without AVX2: `load()` returns None after one warning, and the callers
take the dense path."""

from __future__ import annotations

import ctypes
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from llm1bit.quant import native

SOURCE = Path(__file__).with_name("lut.c")
ABI_VERSION = 3
ISA_NAMES = {0: "none", 1: "avx2", 2: "avx512"}


class LutLayer(ctypes.Structure):
    """Mirror of `lut_layer` in lut.c."""

    _fields_ = [
        ("mode", ctypes.c_int32),
        ("q", ctypes.c_int32),
        ("k", ctypes.c_int32),
        ("kp", ctypes.c_int32),
        ("n", ctypes.c_int32),
        ("groups", ctypes.c_int32),
        ("nrb", ctypes.c_int32),
        ("indexed", ctypes.c_int32),
        ("codes", ctypes.c_void_p),
        ("alpha", ctypes.c_void_p),
        ("rows", ctypes.c_void_p),
        ("group_rb", ctypes.c_void_p),
        ("alpha_index", ctypes.c_void_p),
    ]


_P, _I, _F, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_long
_LAYER = ctypes.POINTER(LutLayer)
# The C functions' result and argument types (lut.c's declarations; _P: any pointer, bf16 data as uint16)
SIGNATURES: dict[str, tuple[type, list]] = {
    "llm1bit_isa": (_I, []),
    "llm1bit_bf16_isa": (_I, []),
    "llm1bit_lut_gemm": (_I, [_LAYER, _P, _I, _P, _I, _I, _I, _I]),
    "llm1bit_lut_gemm_bf16": (_I, [_LAYER, _P, _I, _P, _I, _P, _I, _I, _I]),
    "llm1bit_lut_gemm_bf16_multi": (_I, [ctypes.POINTER(_LAYER), _I, _P, _I, _P, _I, _P, _I, _I, _I]),
    "llm1bit_lut_dequant": (_I, [_LAYER, _P, _I, _I, _I]),
    "llm1bit_hadamard": (_I, [_P, _P, _I, _I, _I, _P, _I, _I]),
    "llm1bit_stream_read": (_F, [_P, ctypes.c_size_t, _I]),
    "llm1bit_bf16_gemv": (_I, [_P, _I, _I, _I, _P, _P, _I, _I]),
    "llm1bit_add_rmsnorm_bf16": (_I, [_P, _P, _P, _F, _I, _P]),
    "llm1bit_silu_mul_bf16": (_I, [_P, _I, _P]),
    "llm1bit_attn_decode_bf16": (_I, [_P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _F, _P]),
    "llm1bit_f32_bias_to_bf16": (_I, [_P, _P, _I, _P]),
    "llm1bit_pool_spin_us": (_L, [_L]),
}


@dataclass(frozen=True)
class Library:
    lib: ctypes.CDLL
    path: Path
    isa: int  # best instruction set this CPU runs: 1 avx2, 2 avx512
    bf16_isa: int = 0  # the bf16 GEMV's: 1 avx2, 2 avx512f, 3 avx512bf16 (`vdpbf16ps`)

    @property
    def isa_name(self) -> str:
        return ISA_NAMES[self.isa]


@lru_cache(maxsize=1)
def load() -> Library | None:
    """The compiled kernel (built on first use), or None with one warning when it cannot be had here."""
    from llm1bit.errors import warn

    reason = unavailable_reason()
    if reason is None:
        try:
            return _load()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            reason = f"could not build the LUT kernel ({exc})"
    warn(f"{reason}; quantized layers use the dense path")
    return None


def unavailable_reason() -> str | None:
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the LUT kernel needs an x86-64 CPU (this is {platform.machine()})"
    if not SOURCE.exists():
        return f"the LUT kernel's source {SOURCE.name} is missing from this installation"
    if native.compiler() is None:
        return "no C compiler (cc, gcc or $CC) found to build the LUT kernel"
    return None


def _load() -> Library:
    lib, path = native.load_library(SOURCE, "liblut", ("llm1bit_abi_version", ABI_VERSION), SIGNATURES)
    isa = int(lib.llm1bit_isa())
    if isa == 0:
        raise RuntimeError("this CPU has neither AVX-512 nor AVX2 with FMA")
    return Library(lib, path, isa, int(lib.llm1bit_bf16_isa()))
