"""Speed on this machine against the bound the simulator predicts (`llm1bit bench`): time ~ bytes / bandwidth.

* `stream_bandwidth`  the memory bandwidth, measured on the spot: a streaming read of a buffer much larger
                      than the last-level cache, with the same thread count as the timed code.
* `bench_decode`      prefill and decode tokens/s of a model (folder, .gguf or quantized folder) through one
                      loop that keeps per-token overhead small (a static KV cache, one step per token, no
                      `generate` machinery; the step is the lean one of `lean_decode` for Llama-family
                      models, else transformers' forward, optionally compiled), the bytes each decode token
                      reads, the bound and the fraction of it reached; optionally the same for its bf16
                      baseline through the same loop.
* `bench_gemv`        one layer of a given shape on random codes: the LUT kernel against torch `F.linear` on
                      bf16 / fp32 weights and against the dense rebuild, every method rotating over at least
                      `MIN_SETS` weight sets (together at least twice the last-level cache), so no layer is
                      timed from the cache.

Timing rules everywhere: warm-up runs first, then the median of repeats."""

from __future__ import annotations

import collections
import ctypes
import functools
import gc
import inspect
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm1bit.errors import UserError, unknown_choice
from llm1bit.quant.device import DECODE_LOOPS

if TYPE_CHECKING:
    import torch
    from torch import nn

MIN_SETS = 8  # distinct weight sets in rotation per method (--gemv)
MAX_SETS = 512
GEMV_MODES = ("lat", "acc")
# inductor's own kernels in the compiled decode step run on one thread: at one token they touch a few thousand
# values, and an OpenMP region per fused kernel (3-4 a layer) costs more in thread hand-offs than it saves, most
# of all beside the LUT kernel's own threads on a busy 2-core machine
COMPILE_OPTIONS = {"cpp.threads": 1}
RESULT_FIELDS = (
    "decode_tokens_per_s",
    "prefill_tokens_per_s",
    "bytes_per_token",
    "bandwidth_gbps",
    "bound_tokens_per_s",
    "fraction_of_bound",
    "kernel",
    "threads",
    "cpu",
)


# ---------------------------------------------------------------- the machine


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def llc_bytes() -> int:
    """Size of the largest CPU cache (sysfs), else 32 MiB."""
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * unit)
        except ValueError:
            continue
    return best or 32 << 20


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def stream_bandwidth(threads: int, repeats: int = 5, nbytes: int | None = None) -> float:
    """Memory bandwidth in 1e9 B/s: a streaming read of an fp32 buffer of max(1 GiB, 2 x LLC) by `threads`
    threads (the kernel library's plain AVX-512 reader; torch's sum where the library is missing)."""
    import torch

    from llm1bit.quant.hf.kernel import build

    nbytes = nbytes or max(1 << 30, 2 * llc_bytes())
    buf = torch.ones(nbytes // 4)
    lib = build.load()
    if lib is not None:

        def read() -> None:
            lib.lib.llm1bit_stream_read(buf.data_ptr(), buf.numel(), threads)

    else:

        def read() -> None:
            buf.sum()

    with torch_threads(threads):
        seconds = median_time(read, repeats)
    return buf.numel() * 4 / seconds / 1e9


class torch_threads:
    """Set torch's intra-op threads inside the block, restore them after."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.before)


def rss_bytes() -> int:
    """Resident memory of this process now, after handing freed heap pages back (malloc_trim on glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- one layer (--gemv)


def parse_shape(text: str) -> tuple[int, int]:
    """'4096x11008' -> (4096, 11008): N (outputs) x K (inputs), as `--gemv` spells it."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        n, k = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"--gemv {text!r}: expected NxK, two positive integers, e.g. 4096x11008") from None
    if n < 1 or k < 1:
        raise UserError(f"--gemv {text!r}: N and K must be at least 1")
    return n, k


def packed_layer(n: int, k: int, q: int, mode: str, groupsize: int, seed: int) -> tuple[dict, dict]:
    """(tensors, meta) as `packing.pack` stores them for an N x K layer of `mode` (lat, acc or bcq), with
    random codes and random one-byte power-of-two scale terms (float scales for bcq)."""
    import torch

    from llm1bit.quant.hf.packing import encode_terms
    from llm1bit.quant.numerics.incoherence import rotation_key, rotations

    gen = torch.Generator().manual_seed(seed)
    if mode == "lat":
        col_block, row_block = 8, (-(-n // 8) if groupsize <= 0 else groupsize // 8)
    else:
        col_block, row_block = 1, (n if groupsize <= 0 else groupsize)
    shape = (-(-k // col_block), -(-n // row_block), q)
    tensors = {"codes": torch.randint(0, 256, (q, n, -(-k // 8)), generator=gen, dtype=torch.uint8)}
    meta: dict[str, Any] = {
        "format": "binary-pot",
        "bits": q,
        "shape": [n, k],
        "col_block": col_block,
        "row_block": row_block,
    }
    if mode == "bcq":
        tensors["scales"] = torch.rand(shape, generator=gen) * 0.01
        meta["format"] = "binary"
    else:
        signs = torch.randint(-1, 2, (*shape, 3), generator=gen).to(torch.int8)
        signs[..., 0] = 1
        exps = torch.randint(-12, -3, (*shape, 3), generator=gen).to(torch.int8)
        tensors["scale_terms"] = encode_terms(signs, exps)
        meta["apot_terms"] = 3
    if mode == "acc":
        key = rotation_key(seed, "bench")
        checksum = rotations(key, n, k).checksum
        tensors["incoherence_rescale"] = torch.rand(k, generator=gen) + 0.5
        tensors["incoherence_key"] = torch.tensor([w - (1 << 64) if w >= 1 << 63 else w for w in key])
        tensors["incoherence_sha256"] = torch.tensor(list(bytes.fromhex(checksum)), dtype=torch.uint8)
        meta["rotation_version"] = 2
        meta["rotation_sha256"] = checksum
    return tensors, meta


def check_gemv_args(wbits: int, groupsize: int, mode: str) -> None:
    if not 1 <= wbits <= 4:
        raise UserError(f"--wbits {wbits}: the kernel reads 1 to 4 code planes")
    if groupsize != -1 and (groupsize < 8 or groupsize % 8):
        raise UserError(f"--groupsize {groupsize}: -1 (one group) or a positive multiple of 8 (e.g. 128)")
    if mode not in GEMV_MODES:
        raise UserError(f"--mode {mode!r}: lat or acc")


def bench_gemv(
    n: int,
    k: int,
    wbits: int,
    groupsize: int = 128,
    mode: str = "lat",
    threads: int | None = None,
    repeats: int = 5,
    dense_repeats: int = 2,
    min_sets: int = MIN_SETS,
) -> dict[str, Any]:
    """One N x K layer at `wbits` planes, batch 1: the kernel's median time (`us`), its bandwidth for the
    layer's packed bytes (`gbps`, `fraction_of_bandwidth` of the streaming read measured here), against
    torch `F.linear` on contiguous bf16 and fp32 [N, K] weights (`bf16_us`, `fp32_us`) and the dense rebuild
    (`dense_us`: `QuantLinear` with the dense path, W rebuilt from the packed tensors on every call). Each
    method rotates over at least `min_sets` distinct weight sets spanning at least 2 x the LLC (at most
    `MAX_SETS`: small layers are served from the cache whatever one does); the rounds
    interleave the methods, so a busy neighbour slows all of them alike."""
    import torch
    import torch.nn.functional as F

    from llm1bit.quant.hf.kernel import build, lut_linear, prepare, use_kernel
    from llm1bit.quant.hf.linear import QuantLinear

    check_gemv_args(wbits, groupsize, mode)
    if build.load() is None:
        raise UserError(f"--gemv: {build.unavailable_reason() or 'the LUT kernel is not available here'}")
    threads = threads or default_threads()
    llc = llc_bytes()

    def sets_for(nbytes: int) -> int:  # a small layer would need millions to cover the LLC: 512 at most
        return max(min_sets, min(MAX_SETS, -(-2 * llc // max(1, nbytes))))

    bandwidth = stream_bandwidth(threads)
    first_tensors, first_meta = packed_layer(n, k, wbits, mode, groupsize, 0)
    packed_bytes = sum(t.numel() * t.element_size() for t in first_tensors.values())
    first = prepare(first_tensors, first_meta)
    layout_bytes = first.codes.nbytes + first.alpha.nbytes
    prepared = [first] + [
        prepare(*packed_layer(n, k, wbits, mode, groupsize, s)) for s in range(1, sets_for(layout_bytes))
    ]
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(1))
    calls: dict[str, list[Callable[[], Any]]] = {
        "lut": [lambda p=p: lut_linear(p, x, None, threads) for p in prepared]
    }
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        nbytes = n * k * torch.tensor([], dtype=dtype).element_size()
        xd = x.to(dtype)
        weights = [torch.randn(n, k).to(dtype) for _ in range(sets_for(nbytes))]
        calls[name] = [lambda w=w, xd=xd: F.linear(xd, w) for w in weights]
    dense_layers = [
        QuantLinear(None, None, packed=packed_layer(n, k, wbits, mode, groupsize, s)) for s in (0, 1)
    ]

    def dense_call(layer: QuantLinear) -> None:
        with torch.no_grad(), use_kernel("dense"):
            layer(x)

    times: dict[str, list[float]] = {name: [] for name in calls}
    dense_times: list[float] = []
    with torch_threads(threads), torch.inference_mode():
        for fns in calls.values():  # warm-up: every set once (page faults, first-call allocations)
            for fn in fns:
                fn()
        dense_call(dense_layers[0])
        for _ in range(repeats):
            for name, fns in calls.items():
                for fn in fns:
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        for r in range(dense_repeats):
            layer = dense_layers[r % len(dense_layers)]
            t = time.perf_counter()
            dense_call(layer)
            dense_times.append(time.perf_counter() - t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    us = med["lut"] * 1e6
    gbps = packed_bytes / med["lut"] / 1e9
    return {
        "shape": [n, k],
        "wbits": wbits,
        "groupsize": groupsize,
        "mode": mode,
        "us": us,
        "gbps": gbps,
        "fraction_of_bandwidth": gbps / bandwidth,
        "bandwidth_gbps": bandwidth,
        "bytes": packed_bytes,
        "layout_bytes": layout_bytes,
        "bf16_us": med["bf16"] * 1e6,
        "fp32_us": med["fp32"] * 1e6,
        "dense_us": statistics.median(dense_times) * 1e6,
        "vs_bf16": med["lut"] / med["bf16"],
        "vs_fp32": med["lut"] / med["fp32"],
        "speedup_vs_dense": statistics.median(dense_times) / med["lut"],
        "sets": {name: len(fns) for name, fns in calls.items()} | {"dense": len(dense_layers)},
        "repeats": repeats,
        "kernel": f"lut-{build.load().isa_name}",  # type: ignore[union-attr]
        "threads": threads,
        "cpu": cpu_name(),
    }


# ---------------------------------------------------------------- a model's decode


@dataclass
class TokenBytes:
    """Bytes one decode token reads: every weight once (lm_head once even when tied to the embedding, of
    which one row is read), and the KV cache at the mean context of the measured decode."""

    quantized_linears: int = 0  # packed bytes of the quantized linears (what `simulate --quantized` counts)
    other_linears: int = 0  # unquantized linears of the decoder (none after `llm1bit quantize`)
    lm_head: int = 0
    embedding_row: int = 0
    other: int = 0  # norms, biases, small buffers
    kv_cache: int = 0
    kv_context: float = 0.0  # the mean context the KV bytes are counted at
    detail: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return (
            self.quantized_linears
            + self.other_linears
            + self.lm_head
            + self.embedding_row
            + self.other
            + self.kv_cache
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantized_linears": self.quantized_linears,
            "other_linears": self.other_linears,
            "lm_head": self.lm_head,
            "embedding_row": self.embedding_row,
            "other": self.other,
            "kv_cache": self.kv_cache,
            "kv_context": self.kv_context,
            "total": self.total,
        }


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def kv_bytes_per_position(model: nn.Module, dtype: torch.dtype) -> int:
    """K and V of one position over all layers, in `dtype`, from the (text) config."""
    import torch

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * layers * kv_heads * int(head_dim) * torch.tensor([], dtype=dtype).element_size()


def token_bytes(model: nn.Module, context: float) -> TokenBytes:
    """What one decode token of `model` (as loaded, in its dtypes) reads, at a KV context of `context`."""
    from torch import nn

    from llm1bit.quant.hf.linear import QuantLinear

    out = TokenBytes(kv_context=context)
    seen: set[int] = set()
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    for module in model.modules():
        if isinstance(module, QuantLinear):
            out.quantized_linears += sum(_nbytes(t) for t in module.packed_tensors().values())
            if module.bias is not None:
                out.other += _nbytes(module.bias)
                seen.add(module.bias.data_ptr())
            continue
        own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for _, t in own:
            if t is None or t.data_ptr() in seen or t.device.type == "meta":
                continue
            seen.add(t.data_ptr())
            if module is head:
                out.lm_head += _nbytes(t)
            elif module is embedding:
                if head is not None and head.weight.data_ptr() == t.data_ptr():
                    out.lm_head += _nbytes(t)
                out.embedding_row += t.shape[-1] * t.element_size() if t.dim() == 2 else _nbytes(t)
            elif isinstance(module, nn.Linear):
                out.other_linears += _nbytes(t)
            else:
                out.other += _nbytes(t)
    # a tied lm_head seen through the embedding first was counted there; through the head first, it was
    # skipped at the embedding: add its row
    if embedding is not None and head is not None and embedding.weight.data_ptr() == head.weight.data_ptr():
        if out.embedding_row == 0:
            out.embedding_row = embedding.weight.shape[-1] * embedding.weight.element_size()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None:
        out.kv_cache = int(round(kv_bytes_per_position(model, dtype) * context))
    return out


def held_bytes(model: nn.Module) -> int:
    """Bytes the model holds for its weights: packed tensors of quantized linears (their codes in the kernel's
    layout where released) plus every other parameter and buffer, tied tensors once."""
    return _weight_bytes(model, _held_quantized)


def stored_bytes(model: nn.Module) -> int:
    """Bytes of the model as stored: the packed tensors of quantized linears (a released `codes` at its packed
    size) plus every other parameter and buffer in its current dtype, tied tensors once. What `held_bytes`
    is measured against: the target is to hold no more than this."""
    return _weight_bytes(model, _stored_quantized)


def _held_quantized(module: nn.Module, prepared: Any) -> int:
    held = (module._buffers.get(key) for key in module.packed_names)
    return sum(_nbytes(t) for t in held if t is not None) + (prepared.nbytes if prepared is not None else 0)


def _stored_quantized(module: nn.Module, prepared: Any) -> int:
    import numpy as np

    total = 0
    for key in module.packed_names:
        t = module._buffers.get(key)
        if t is not None:
            total += _nbytes(t)
        elif key == "codes":  # released: q planes x N rows x ceil(K / 8) bytes
            total += module.bits * module.out_features * -(-module.in_features // 8)
        elif prepared is not None and prepared.scales_stored is not None:  # released lat scales
            shape = prepared.scales_stored.shape
            total += int(np.prod(shape)) * (4 if prepared.scales_stored.name == "scales" else 1)
    return total


def _weight_bytes(model: nn.Module, quantized: Callable[[nn.Module, Any], int]) -> int:
    """Every parameter and buffer once (tied tensors once), a quantized linear's packed tensors counted by
    `quantized(module, its kernel layout or None)`, its bias as it is."""
    from llm1bit.quant.hf.kernel.gemv import _ATTR
    from llm1bit.quant.hf.linear import QuantLinear

    total, seen = 0, set()
    for module in model.modules():
        if isinstance(module, QuantLinear):
            total += quantized(module, module.__dict__.get(_ATTR))
            if module.bias is not None:
                total += _nbytes(module.bias)
                seen.add(module.bias.data_ptr())
            continue
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if t is None or t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += _nbytes(t)
    return total


def _folder_config(path: Path) -> Any:
    """The transformers config of a model folder (a quantized folder's base model config)."""
    from llm1bit.format.folder import is_quantized_folder, read_quantized_config
    from llm1bit.quant.hf.checkpoint import base_config

    if is_quantized_folder(path):
        return base_config(read_quantized_config(path)[0])
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def warm_runtime(path: Path) -> None:
    """Run a tiny random model of the folder's architecture (one layer, hidden size 64) through a prefill and
    two decode steps in bf16, so that the resident memory measured after this counts the model, not the one-time
    state of the runtime (lazily imported code, torch's and oneDNN's first-call setup, thread pools: ~15-25 MB
    on SmolLM2's run, which a bf16 model pays as well)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, StaticCache

    if not (path / "config.json").is_file():
        return
    try:
        config = _folder_config(path)
        config = copy.deepcopy(config)
        text = config.get_text_config()
        heads = 2
        for key, value in (("hidden_size", 64), ("intermediate_size", 128), ("num_hidden_layers", 1),
                           ("num_attention_heads", heads), ("num_key_value_heads", 1), ("head_dim", 32),
                           ("vocab_size", 256)):  # fmt: skip
            if hasattr(text, key):
                setattr(text, key, value)
        if hasattr(text, "layer_types") and text.layer_types:
            text.layer_types = text.layer_types[:1]
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):  # ids past the tiny vocabulary
            if getattr(text, key, None) is not None:
                setattr(text, key, 0)
        tiny = AutoModelForCausalLM.from_config(config).to(torch.bfloat16).eval()
        ids = torch.arange(1, 9)[None]
        with torch.inference_mode():
            cache = StaticCache(config=tiny.config, max_cache_len=12)
            out = step(tiny, ids, cache, 0)
            for i in range(2):
                out = step(tiny, out.logits[:, -1:].argmax(-1), cache, 8 + i)
        del tiny, cache, out
    except Exception:  # noqa: BLE001 -- any failure here loses only a cleaner measurement
        pass


def kernel_in_use(model: nn.Module) -> str:
    """'lut-<isa>' where the kernel served at least one layer, 'dense' where quantized layers used the dense
    path only, 'none' for a model without quantized layers."""
    from llm1bit.quant.hf.kernel import build
    from llm1bit.quant.hf.kernel.gemv import _ATTR
    from llm1bit.quant.hf.linear import QuantLinear

    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    if not layers:
        return "none"
    if any(_ATTR in m.__dict__ for m in layers):
        lib = build.load()
        return f"lut-{lib.isa_name}" if lib is not None else "lut"
    return "dense"


@dataclass
class DecodeTiming:
    prefill_s: float  # median seconds of one prefill of the prompt
    decode_s: float  # median seconds of one decode step
    steps: int  # decode steps timed


@functools.lru_cache(maxsize=16)
def _takes_cache(cls: type) -> bool:
    return "cache" in inspect.signature(cls.forward).parameters


def step(
    model: nn.Module, ids: torch.Tensor, cache: Any, start: int, forward: Callable[..., Any] | None = None
) -> Any:
    """One forward of `ids` (1, T) at positions start.. into `cache`, logits of the last position only
    (transformers 5 names the cache `cache`; earlier releases `past_key_values` with a `cache_position`);
    through `forward` (the model's compiled forward) where given."""
    import torch

    positions = torch.arange(start, start + ids.shape[1])
    kwargs: dict[str, Any] = {"input_ids": ids, "position_ids": positions[None], "use_cache": True}
    if _takes_cache(type(model)):
        kwargs["cache"] = cache
    else:
        kwargs["past_key_values"] = cache
        kwargs["cache_position"] = positions
    return (forward or model)(**kwargs, logits_to_keep=1)


@dataclass
class DecodeStep:
    """The loop's step for one model: prefill eager, each 1-token decode step through `forward` (the model,
    or its forward compiled into one graph), every cache `cache_len` positions long (a compiled step is
    specialised to the cache's shape: one length, no recompiles)."""

    model: Any
    cache_len: int
    forward: Callable[..., Any]
    loop: str  # "compiled" or "eager"
    compile_s: float | None = None  # the first compiled call (tracing, inductor, the C++ build): warm-up
    note: str | None = None  # why the loop is eager where a compiled one was asked for

    def new_cache(self) -> Any:
        from transformers import StaticCache

        return StaticCache(config=self.model.config, max_cache_len=self.cache_len)

    def prefill(self, ids: torch.Tensor, cache: Any) -> Any:
        return step(self.model, ids, cache, 0)

    def decode(self, token: torch.Tensor, cache: Any, start: int) -> Any:
        return step(self.model, token, cache, start, self.forward)


def decode_step(
    model: nn.Module, prompt: torch.Tensor, cache_len: int, compile_step: bool, loop: str = "hf"
) -> Any:
    """The step `decode_loop` times. loop: lean (`llm1bit.quant.eval.lean_decode.LeanStep`: the model's
    modules in a short loop of their own, the glue in C; a one-line error where the model cannot run it),
    hf (transformers' forward), auto (lean where the model can run it, else hf with a note saying why).
    compile_step (with hf only): `torch.compile(model.forward, fullgraph=True, dynamic=False)` (inductor, its
    kernels on one thread: `COMPILE_OPTIONS`; each `QuantLinear` one opaque `llm1bit::quant_linear` op),
    compiled here on a scratch cache and its time reported; where compiling fails, the eager step with a
    one-line note (never an error: the measurement stands either way, the result names its loop). Call inside
    `torch.inference_mode()`, as the loop runs: the compiled graph is specialised to it."""
    import torch

    from llm1bit.quant.eval import lean_decode

    if loop not in DECODE_LOOPS:
        raise unknown_choice("--loop", loop, DECODE_LOOPS)
    if compile_step and loop == "lean":
        raise UserError("--compile compiles transformers' forward (--loop hf); the lean step is not compiled")
    note = None
    if loop != "hf" and not compile_step:
        reason = lean_decode.unsupported(model, cache_len)
        if reason is None:
            return lean_decode.LeanStep(model, cache_len)
        if loop == "lean":
            raise UserError(f"--loop lean: this model cannot run the lean decode step: {reason}")
        note = f"the lean step does not run this model ({reason}); transformers' forward was timed"
    eager = DecodeStep(model, cache_len, model, "eager", note=note)
    if not compile_step:
        return eager
    try:
        compiled = torch.compile(model.forward, fullgraph=True, dynamic=False, options=dict(COMPILE_OPTIONS))
        stepper = DecodeStep(model, cache_len, compiled, "compiled")
        cache = stepper.new_cache()
        token = stepper.prefill(prompt, cache).logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        stepper.decode(token, cache, prompt.shape[1])
        stepper.compile_s = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001 - any failure of dynamo / inductor / the C++ build: measure eager
        import torch._dynamo

        torch._dynamo.reset()
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        eager.note = f"torch.compile failed ({type(exc).__name__}: {first}); the eager step was timed"
        return eager
    return stepper


def decode_loop(
    model: nn.Module, prompt: torch.Tensor, gen: int, repeats: int, stepper: DecodeStep | None = None
) -> DecodeTiming:
    """Prefill `prompt` (1, P) into a static KV cache, then `gen` steps of one token each (greedy), each one
    model forward with its cache position (`stepper`'s, the eager model by default): no `generate` machinery,
    no cache growth. One untimed warm-up run, then `repeats` timed runs; medians."""
    length = prompt.shape[1]
    stepper = stepper or DecodeStep(model, length + gen + 1, model, "eager")
    if stepper.cache_len < length + gen:
        raise ValueError(
            f"the step's cache holds {stepper.cache_len} positions, the loop needs {length + gen}"
        )
    prefill, steps = [], []
    for rep in range(repeats + 1):
        cache = stepper.new_cache()
        t0 = time.perf_counter()
        out = stepper.prefill(prompt, cache)
        token = out.logits[:, -1:].argmax(-1)
        t1 = time.perf_counter()
        for i in range(gen if rep else min(gen, 4)):
            s = time.perf_counter()
            out = stepper.decode(token, cache, length + i)
            token = out.logits[:, -1:].argmax(-1)
            if rep:
                steps.append(time.perf_counter() - s)
        if rep:
            prefill.append(t1 - t0)
    return DecodeTiming(statistics.median(prefill), statistics.median(steps), len(steps))


def time_breakdown(
    model: nn.Module, prompt: torch.Tensor, steps: int = 8, stepper: DecodeStep | None = None
) -> dict[str, float]:
    """Where one decode step's time goes (seconds per token, means over `steps` extra steps, not the timed
    ones): the quantized linears, the other linears (lm_head), the rest (attention, norms, rotary, Python and
    framework overhead). Eager step: forward hooks on the linears time them. Compiled step (no hook runs
    inside its graph): the quantized linears are timed inside their `llm1bit::quant_linear` ops; the other
    linears, fused into the graph, by calling each eagerly on one token's input after the steps."""
    from torch import nn

    from llm1bit.quant.hf.kernel import op
    from llm1bit.quant.hf.linear import QuantLinear

    length = prompt.shape[1]
    stepper = stepper or DecodeStep(model, length + steps + 1, model, "eager")
    steps = min(steps, stepper.cache_len - length)
    spent = {"quantized_linears": 0.0, "other_linears": 0.0}
    starts: dict[int, float] = {}

    def pre(module: nn.Module, args: Any) -> None:
        starts[id(module)] = time.perf_counter()

    def post(module: nn.Module, args: Any, output: Any) -> None:
        key = "quantized_linears" if isinstance(module, QuantLinear) else "other_linears"
        spent[key] += time.perf_counter() - starts.pop(id(module))

    if stepper.loop == "lean":
        return _lean_breakdown(stepper, prompt, steps)
    compiled = stepper.loop == "compiled"
    linears = [m for m in model.modules() if isinstance(m, QuantLinear | nn.Linear)]
    handles = []
    if not compiled:
        for module in linears:
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    per_step: list[dict[str, float]] = []
    try:
        cache = stepper.new_cache()
        out = stepper.prefill(prompt, cache)
        token = out.logits[:, -1:].argmax(-1)
        for i in range(steps):
            for key in spent:
                spent[key] = 0.0
            with op.timing() as in_ops:
                t = time.perf_counter()
                out = stepper.decode(token, cache, length + i)
                token = out.logits[:, -1:].argmax(-1)
                total = time.perf_counter() - t
                if compiled:
                    spent["quantized_linears"] = in_ops[0]
            per_step.append({**spent, "total": total})
    finally:
        for h in handles:
            h.remove()
    if compiled:
        other = sum(_eager_linear_s(m) for m in linears if not isinstance(m, QuantLinear))
        for s in per_step:
            s["other_linears"] = other
    for s in per_step:
        s["rest"] = s["total"] - s["quantized_linears"] - s["other_linears"]
    keys = ("quantized_linears", "other_linears", "rest", "total")
    return {key: statistics.fmean(s[key] for s in per_step) for key in keys}


def _lean_breakdown(stepper: Any, prompt: torch.Tensor, steps: int) -> dict[str, float]:
    """`time_breakdown` of the lean step: its own timer around each projection and the lm_head."""
    length = prompt.shape[1]
    cache = stepper.new_cache()
    out = stepper.prefill(prompt, cache)
    token = out.logits[:, -1:].argmax(-1)
    per_step = []
    try:
        for i in range(steps):
            stepper.timer = {"quantized_linears": 0.0, "other_linears": 0.0}
            t = time.perf_counter()
            out = stepper.decode(token, cache, length + i)
            token = out.logits[:, -1:].argmax(-1)
            total = time.perf_counter() - t
            per_step.append({**stepper.timer, "total": total})
    finally:
        stepper.timer = None
    for s in per_step:
        s["rest"] = s["total"] - s["quantized_linears"] - s["other_linears"]
    keys = ("quantized_linears", "other_linears", "rest", "total")
    return {key: statistics.fmean(s[key] for s in per_step) for key in keys}


def _eager_linear_s(module: nn.Module, repeats: int = 5) -> float:
    """Median seconds of `F.linear` with `module`'s (an nn.Linear's) weight and bias on one token's input in
    its dtype, after one warm-up call: the aten call a compiled graph makes, without the module's overhead."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(1, 1, module.in_features).to(module.weight.dtype)
    return median_time(lambda: F.linear(x, module.weight, module.bias), repeats)


def source_of(folder: Path, qc: dict[str, Any]) -> Path | None:
    """The model a quantized folder was made from (`quantization_config.source_model`), where it still exists:
    as recorded (absolute, or relative to the working directory), else relative to the folder's parent."""
    recorded = qc.get("source_model")
    if not recorded:
        return None
    path = Path(str(recorded)).expanduser()
    for candidate in (path, folder.parent / path) if not path.is_absolute() else (path,):
        if candidate.exists():
            return candidate
    return None


def dequantized_model(model: nn.Module) -> nn.Module:
    """`model` with every QuantLinear replaced by an nn.Linear holding its dequantized weight (in place)."""
    import torch
    from torch import nn

    from llm1bit.quant.hf.linear import QuantLinear

    for name, module in list(model.named_modules()):
        if not isinstance(module, QuantLinear):
            continue
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        with torch.no_grad():
            linear.weight = nn.Parameter(module.quantized.dequantize().to(torch.float32), requires_grad=False)
            if module.bias is not None:
                linear.bias = nn.Parameter(module.bias.detach().float().clone(), requires_grad=False)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, linear)
    return model


def check_decode_args(prompt_len: int, gen: int, threads: int | None, repeats: int) -> None:
    if prompt_len < 1:
        raise UserError(f"--prompt-len {prompt_len} must be at least 1")
    if gen < 1:
        raise UserError(f"--gen {gen} must be at least 1")
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads} must be at least 1")
    if repeats < 1:
        raise UserError(f"--repeats {repeats} must be at least 1")


def _measure(
    model: nn.Module,
    prompt: torch.Tensor,
    gen: int,
    repeats: int,
    bandwidth: float,
    threads: int,
    breakdown: bool,
    compile_step: bool = False,
    loop: str = "hf",
) -> dict[str, Any]:
    import torch

    tb = token_bytes(model, context=prompt.shape[1] + (gen - 1) / 2)
    with torch.inference_mode():
        stepper = decode_step(model, prompt, prompt.shape[1] + gen + 1, compile_step, loop)
        try:
            timing = decode_loop(model, prompt, gen, repeats, stepper)
            parts = time_breakdown(model, prompt, stepper=stepper) if breakdown else None
        finally:
            if stepper.loop == "compiled":  # free the graph (it holds the model's weights) for the next model
                import torch._dynamo

                torch._dynamo.reset()
    decode_tps = 1.0 / timing.decode_s
    bound = bandwidth * 1e9 / tb.total
    out = {
        "decode_tokens_per_s": decode_tps,
        "prefill_tokens_per_s": prompt.shape[1] / timing.prefill_s,
        "bytes_per_token": tb.total,
        "bandwidth_gbps": bandwidth,
        "bound_tokens_per_s": bound,
        "fraction_of_bound": decode_tps / bound,
        "kernel": kernel_in_use(model),
        "threads": threads,
        "cpu": cpu_name(),
        "bytes": tb.to_dict(),
        "decode_steps_timed": timing.steps,
        "loop": stepper.loop,
        "compile_s": stepper.compile_s,
    }
    if stepper.note:
        out["loop_note"] = stepper.note
    if stepper.loop == "lean":  # how its projections ran: lut (one fused kernel call), cat (one matmul), each
        out["lean_projections"] = dict(collections.Counter(stepper.kernels))
    if parts is not None:
        out["seconds_per_token"] = parts
    return out


def bench_decode(
    model_src: str,
    prompt_len: int = 128,
    gen: int = 64,
    threads: int | None = None,
    kernel: str | None = None,
    baseline: str | None = None,
    repeats: int = 3,
    breakdown: bool = True,
    compile_step: bool = False,
    loop: str = "auto",
) -> dict[str, Any]:
    """Prefill and decode speed of `model_src` in bf16 (its quantized linears through the path `kernel`
    picks), the bytes per decode token, the bandwidth measured here, the bound and the fraction of it; the
    resident memory while generating against the bytes the model holds. `baseline="bf16"`: the same for the
    folder's source model in bf16 (or its dequantized weights where the source is gone) through the same loop,
    and the ratios. loop and compile_step: which decode step runs (`decode_step`; each result's `loop` says
    which did, `compile_s` what compiling cost)."""
    import torch

    from llm1bit.format.folder import is_quantized_folder
    from llm1bit.quant.hf.kernel import use_kernel
    from llm1bit.quant.hf.linear import require_lut_model
    from llm1bit.quant.hf.loading import check_model_source, load_model

    check_decode_args(prompt_len, gen, threads, repeats)
    if loop not in DECODE_LOOPS:
        raise unknown_choice("--loop", loop, DECODE_LOOPS)
    if compile_step and loop == "lean":
        raise UserError("--compile compiles transformers' forward (--loop hf); the lean step is not compiled")
    if baseline not in (None, "bf16"):
        raise UserError(f"--baseline {baseline!r}: only bf16")
    check_model_source(model_src)
    threads = threads or default_threads()
    path = Path(model_src).expanduser()
    quantized = path.is_dir() and is_quantized_folder(path)
    result: dict[str, Any] = {
        "model": str(model_src),
        "prompt_len": prompt_len,
        "gen": gen,
        "dtype": "bfloat16",
    }
    with torch_threads(threads), use_kernel(kernel):
        bandwidth = stream_bandwidth(threads)
        import_architecture(path)
        rss_cold = rss_bytes()
        warm_runtime(path)
        rss_before = rss_bytes()
        model, tokenizer = load_model(model_src)
        del tokenizer
        model.to(torch.bfloat16)
        if kernel == "lut":
            require_lut_model(model)
        max_len = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        if max_len and prompt_len + gen + 1 > max_len:
            raise UserError(
                f"--prompt-len + --gen = {prompt_len + gen} exceeds the model's {max_len} positions"
            )
        prompt = torch.randint(
            0,
            model.config.get_text_config().vocab_size,
            (1, prompt_len),
            generator=torch.Generator().manual_seed(0),
        )
        result.update(
            _measure(model, prompt, gen, repeats, bandwidth, threads, breakdown, compile_step, loop)
        )
        held, stored = held_bytes(model), stored_bytes(model)
        rss = rss_bytes()
        result["memory"] = {
            "held_bytes": held,
            "stored_bytes": stored,
            "kv_cache_bytes": kv_bytes_per_position(model, torch.bfloat16) * (prompt_len + gen + 1),
            "runtime_warmup_bytes": rss_before - rss_cold,
            "rss_before_load_bytes": rss_before,
            "rss_generating_bytes": rss,
            "resident_over_held": (rss - rss_before) / held if held else None,
            "resident_over_stored": (rss - rss_before) / stored if stored else None,
        }
        del model
        gc.collect()  # what deleting the model gives back is what it held resident while generating
        result["memory"]["model_resident_bytes"] = rss - rss_bytes()
        result["memory"]["model_resident_over_stored"] = (
            result["memory"]["model_resident_bytes"] / stored if stored else None
        )
        if baseline == "bf16":
            label, base = _baseline_model(path, quantized, model_src)
            base.to(torch.bfloat16)
            with use_kernel("dense"):
                base_result = _measure(
                    base, prompt, gen, repeats, bandwidth, threads, breakdown, compile_step, loop
                )
            base_result["label"] = label
            result["baseline"] = base_result
            result["ratio"] = {
                "decode": result["decode_tokens_per_s"] / base_result["decode_tokens_per_s"],
                "prefill": result["prefill_tokens_per_s"] / base_result["prefill_tokens_per_s"],
                "bytes_per_token": base_result["bytes_per_token"] / result["bytes_per_token"],
            }
    return result


def import_architecture(path: Path) -> None:
    """Import the code a folder's model runs (its transformers modeling module, on the meta device: nothing
    allocated), so that the resident memory measured after loading counts the weights, not the code."""
    import torch
    from transformers import AutoModelForCausalLM

    if not (path / "config.json").is_file():
        return
    try:
        config = _folder_config(path)
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, ImportError):
        pass  # only a cleaner measurement is lost


def _baseline_model(path: Path, quantized: bool, model_src: str) -> tuple[str, nn.Module]:
    """(label, model) of the bf16 baseline: the source model, or the dequantized weights where it is gone."""
    from llm1bit.format.folder import read_quantized_config
    from llm1bit.quant.hf.loading import load_model

    if not quantized:
        model, _ = load_model(model_src)
        return f"bf16 {model_src} (the model itself)", model
    _, qc = read_quantized_config(path)
    source = source_of(path, qc)
    if source is not None:
        model, _ = load_model(str(source))
        return f"bf16 source model {source}", model
    model, _ = load_model(model_src)
    recorded = qc.get("source_model") or "not recorded"
    return f"bf16 dequantized weights of {model_src} (source {recorded} not found)", dequantized_model(model)
