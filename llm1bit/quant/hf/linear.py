"""QuantLinear: a linear layer that holds only its packed codes and computes through them.

Its buffers are exactly the tensors `llm1bit.quant.hf.packing.pack` stores for the layer (bit-packed code
planes, one-byte power-of-two scale terms, uniform scales and zeros, incoherence data), under the same
names as in `model.safetensors`, so `load_state_dict` and transformers' loader fill them directly. Each
forward rebuilds the dense weight (`packing.unpack(...).dequantize()`, the one definition shared with the
solver), uses it and drops it: resident memory is the packed bytes plus one layer's dense weight while it
computes. `set_weight_cache(model, True)` keeps the dense weights for speed instead, at the memory of
the original layers. Binary-coded layers (shiftaddllm, bcq) on the CPU skip all that: `forward` hands
them to the LUT kernel (`llm1bit.quant.hf.kernel`), which reads the packed planes directly, in its own
order. Such a layer then holds its codes once: the kernel's layout keeps them and the `codes` buffer (and a
lat layer's scale terms) is released (`release_codes`), rebuilt bit for bit from the layout when something
asks for it (`state_dict`, `packed_tensors`, the dense path, a move to another device), never kept twice.
Under `torch.compile` the layer is one custom op (`llm1bit::quant_linear`, `kernel/op.py`) that runs the same
eager forward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llm1bit.quant.numerics.codes import BinaryCodes, QuantizedWeight, UniformCodes

# safetensors' dtype names (as in a file's header) -> torch dtypes, for the shells the loaders fill
SAFETENSORS_DTYPES = {
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}


class QuantLinear(nn.Module):
    """y = x W^T + b with W rebuilt from the packed tensors held as buffers: on every call, or once with the
    weight cache on (`set_cache`)."""

    def __init__(
        self,
        quantized: QuantizedWeight | None,
        bias: torch.Tensor | None,
        dtype: torch.dtype = torch.float32,
        bits: int | None = None,
        *,
        packed: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
    ) -> None:
        """From a solver's `quantized` weight (packed here), or from `packed` = (tensors, meta) as stored."""
        super().__init__()
        from llm1bit.quant.hf.packing import pack

        if packed is None:
            if quantized is None:
                raise ValueError("QuantLinear needs a quantized weight or its packed tensors")
            packed = pack(quantized, bits if bits is not None else code_bits(quantized))
        tensors, meta = packed
        self.meta = {key: value for key, value in meta.items() if key != "tensors"}
        self.out_features, self.in_features = (int(n) for n in meta["shape"])
        self.bits = int(meta["bits"])
        self.compute_dtype = dtype
        self.packed_names = tuple(tensors)
        for key, tensor in tensors.items():
            self.register_buffer(key, tensor)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.cache_weight = False
        self._weight: torch.Tensor | None = None
        # buffers released while the kernel's layout holds their bits (`codes`, lat's scales): name -> rebuild
        self._released: dict[str, Callable[[], torch.Tensor]] = {}
        self.op_handle = _register(self)  # names this layer to `llm1bit::quant_linear` (torch.compile)

    @classmethod
    def shell(cls, meta: dict[str, Any], bias: bool, dtype: torch.dtype, device: str = "meta") -> QuantLinear:
        """An empty layer for a loader to fill: buffers named and shaped as `meta["tensors"]` lists them
        ({name: [safetensors dtype, shape]}, from the file's header), on `device` (meta: nothing allocated)."""
        specs = meta.get("tensors")
        if not specs:
            raise ValueError("a QuantLinear shell needs meta['tensors'] (names, dtypes and shapes)")
        tensors = {
            key: torch.empty(shape, dtype=SAFETENSORS_DTYPES[dtype_name], device=device)
            for key, (dtype_name, shape) in specs.items()
        }
        layer = cls(None, None, dtype, packed=(tensors, meta))
        if bias:
            layer.bias = nn.Parameter(
                torch.empty(layer.out_features, dtype=dtype, device=device), requires_grad=False
            )
        return layer

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        """The packed tensors as stored; a released one is rebuilt (a new tensor, not kept)."""
        out = {}
        for key in self.packed_names:
            tensor = self._buffers.get(key)
            if tensor is None and key in self._released:
                tensor = self._released[key]()
            out[key] = tensor
        return out

    @property
    def codes_released(self) -> bool:
        return "codes" in self._released

    def release_codes(
        self, source: Callable[[], torch.Tensor], others: dict[str, Callable[[], torch.Tensor]] | None = None
    ) -> None:
        """Drop the `codes` buffer (and the buffers named in `others`), whose bits another holder (the kernel's
        layout) keeps; `source()` (`others[name]()`) rebuilds it. Why: a layer the kernel serves must not hold
        its codes, or its scales, twice."""
        if "codes" in self._buffers and self._buffers["codes"] is not None:
            self._buffers["codes"] = None
            self._released["codes"] = source
            for key, rebuild in (others or {}).items():
                if self._buffers.get(key) is not None:
                    self._buffers[key] = None
                    self._released[key] = rebuild
            # the loaders' tensors are views of the file, mapped into memory: the pages of the released codes
            # stay resident while any view of the mapping lives, so the few small tensors kept get their own
            with torch.inference_mode(False):  # ordinary tensors (version counters), even when called inside
                for key in self.packed_names:
                    tensor = self._buffers.get(key)
                    if tensor is not None and tensor.device.type == "cpu":
                        self._buffers[key] = tensor.clone()

    def restore_codes(self) -> None:
        """Put the released buffers back (from their holder) and forget the holder's layout."""
        for key, rebuild in self._released.items():
            self._buffers[key] = rebuild()
        self._released = {}
        from llm1bit.quant.hf.kernel.gemv import drop_prepared

        drop_prepared(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A copy (deepcopy, pickle) is another layer: its own op handle, not the original's."""
        super().__setstate__(state)
        self.op_handle = _register(self)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for key, rebuild in self._released.items():
            destination[prefix + key] = rebuild()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self._released:
            self.restore_codes()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def quantized(self) -> QuantizedWeight:
        """The codes as the solver produced them, unpacked from the buffers (a new object each time)."""
        from llm1bit.quant.hf.packing import unpack

        return unpack(self.packed_tensors(), self.meta)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight in the layer's dtype: rebuilt on each access unless the cache is on."""
        if self._weight is not None:
            return self._weight
        weight = self.quantized.dequantize().to(self.compute_dtype)
        if self.cache_weight:
            self._weight = weight
        return weight

    def set_cache(self, on: bool) -> None:
        self.cache_weight = on
        if not on:
            self._weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and not (x.requires_grad and torch.is_grad_enabled()):
            # one opaque op for dynamo, which cannot trace the kernel's Python (the op has no backward: a
            # gradient takes the traced path below, graph breaks and all)
            return torch.ops.llm1bit.quant_linear(x, self.op_handle, self.out_features)
        return self.eager_forward(x)

    def eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The computation itself (uncompiled calls, and `llm1bit::quant_linear` at run time)."""
        from llm1bit.quant.hf.kernel import forward as lut_forward

        y = lut_forward(self, x)  # binary codes on the CPU: the LUT kernel, no dense W (LLM1BIT_KERNEL)
        if y is not None:
            return y
        weight = self.weight
        if weight.device != x.device:
            weight = weight.to(x.device)
        return F.linear(x, weight.to(x.dtype), self.bias)

    def _apply(self, fn, recurse=True):
        """`.to(device)` moves the packed tensors; a dtype cast (`.half()`, `.to(torch.bfloat16)`) changes
        only the compute dtype and the bias: scales stay float32, as stored, so the weights stay exact.
        Released codes stay with the kernel's layout unless the layer leaves the CPU."""
        if self._released and fn(torch.empty(0, dtype=torch.uint8)).device.type != "cpu":
            self.restore_codes()
        packed = {key: self._buffers[key] for key in self.packed_names if self._buffers.get(key) is not None}
        super()._apply(fn, recurse)
        for key, before in packed.items():
            after = getattr(self, key)
            if after.dtype != before.dtype:
                setattr(self, key, before.to(after.device))
        if self.bias is not None:
            self.compute_dtype = self.bias.dtype
        elif packed:
            probe = fn(torch.empty(0, dtype=self.compute_dtype))
            self.compute_dtype = probe.dtype
        if self._weight is not None:
            self._weight = fn(self._weight)
        return self

    def extra_repr(self) -> str:
        inc = ", incoherence" if any(k.startswith("incoherence") for k in self.packed_names) else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"{self.meta['format']}{inc}"
        )


def _register(layer: QuantLinear) -> int:
    from llm1bit.quant.hf.kernel.op import register

    return register(layer)


def set_weight_cache(model: nn.Module, on: bool) -> None:
    """Keep (on) or drop (off) the dense weight of every QuantLinear of `model`."""
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.set_cache(on)


def code_bits(quantized: QuantizedWeight) -> int:
    """Bits per weight of the codes: binary planes q, or the uniform grid's bit width."""
    codes = quantized.codes
    if isinstance(codes, BinaryCodes):
        return int(codes.codes.shape[0])
    if isinstance(codes, UniformCodes):
        top = int(codes.qweight.max().item()) if codes.qweight.numel() else 0
        return max(1, top.bit_length())
    raise TypeError(f"unknown codes {type(codes).__name__}")


def require_lut_model(model: torch.nn.Module) -> None:
    """`require_lut` for every binary-coded QuantLinear of `model` (with its module name), e.g. before a run
    with LLM1BIT_KERNEL=lut; the first refusal is raised."""
    from llm1bit.quant.hf.kernel import require_lut

    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            require_lut(module, name)
