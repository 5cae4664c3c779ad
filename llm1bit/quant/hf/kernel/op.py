"""A `QuantLinear`'s forward as one torch custom op, `llm1bit::quant_linear`, for `torch.compile`.

Why: the layer's forward is Python that dynamo cannot trace (ctypes calls into the LUT kernel, numpy, the
`LLM1BIT_KERNEL` context variable, a layout built at first use); traced as is, every layer would break the
graph. As a custom op with a fake implementation (the output's shape and dtype), a compiled decode step sees
each layer as one opaque call and compiles everything around it (norms, rotary, attention over a static cache)
into one graph. At run time the op calls the layer's own eager forward (`QuantLinear.eager_forward`): the same
path, the same numbers, as an uncompiled call.

An op takes tensors and numbers, not modules, so each layer is named by an integer handle (`register`, in
`QuantLinear.__init__` and again on a copy) in a registry of weak references: the registry never keeps a
layer alive. `timing()` adds up the seconds spent inside the op, for a decode step's breakdown, where forward
hooks cannot run (inside a compiled graph)."""

from __future__ import annotations

import contextlib
import itertools
import time
import weakref
from collections.abc import Iterator
from typing import Any

import torch

_LAYERS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)
_SPENT: list[float] = []  # one accumulator while `timing()` is active, empty otherwise


def register(layer: Any) -> int:
    """A new handle for `layer` (an object with `eager_forward(x)`), held weakly."""
    handle = next(_HANDLES)
    _LAYERS[handle] = layer
    return handle


@contextlib.contextmanager
def timing() -> Iterator[list[float]]:
    """Inside the block, the seconds spent in `quant_linear` calls add up in the yielded list's one element."""
    if _SPENT:
        raise RuntimeError("op.timing() blocks do not nest")
    _SPENT.append(0.0)
    try:
        yield _SPENT
    finally:
        _SPENT.clear()


@torch.library.custom_op("llm1bit::quant_linear", mutates_args=())
def quant_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    """y = layer(x) for the `QuantLinear` registered as `handle` (its eager forward: the kernel or dense path)."""
    layer = _LAYERS.get(handle)
    if layer is None:
        raise RuntimeError(f"llm1bit::quant_linear: no live layer has handle {handle}")
    if not _SPENT:
        return layer.eager_forward(x)
    t = time.perf_counter()
    y = layer.eager_forward(x)
    _SPENT[0] += time.perf_counter() - t
    return y


@quant_linear.register_fake
def _(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))
