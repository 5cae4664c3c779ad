"""The one layer walk: calibration windows through a model's decoder stack, one decoder layer at a time
(GPTQ's `opt_sequential`, on transformers 5.x). `quantize` and the sensitivity measurement of `bits` both
consume `walk_layers`.

1. Capture the inputs of decoder layer 0: a forward pre-hook (with kwargs) on layer 0 records the hidden
   states, then stops the forward; the model runs with `use_cache=False`. Each layer gets the keyword
   arguments the model passes to that very layer (`capture_layer_kwargs`): Gemma-2/3 alternate
   sliding-window and global attention (different masks, and for Gemma-3 different rotary embeddings).
2. For each decoder layer, with only that layer on the device, the consumer gets a `LayerStep`:
   `hessians()` runs the layer once over every window with hooks accumulating H = sum_s X_s^T X_s
   (float32) per linear, expert slices from the tokens routed to them; its outputs are the unquantized
   layer's. `advance()` runs the layer again (after the consumer replaced its linears) so that the next
   layer sees the quantized layer's outputs. The next layer's inputs are the last outputs produced.

Only the decoder layers move to the device, one at a time, and back to the CPU after.

Compute precision (`dtype`, `resolve_dtype`): with bfloat16 the layer forwards run under autocast, so the
linears, attention and expert matmuls compute in bf16 (about 1.6x faster on a CPU with AVX512-BF16 / AMX,
and on CUDA) while the weights keep their precision (the solver quantizes the original weights, and norms
are never rounded), the residual stream and the stored inputs / outputs stay in the model dtype, and each
window's X^T X is taken in float32 from the inputs as the linear receives them and summed into float32
Hessians. float32 runs everything as the model is. The Hessians are float32 either way: the solver works
in float32 (spec §0), and float64 sums would double the memory of the biggest buffers of an MoE layer."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm1bit.quant.walk.decoder_stack import DecoderStack, find_decoder_stack

if TYPE_CHECKING:
    import torch
    from torch import nn


class _StopForward(Exception):
    """Raised by the layer-0 pre-hook once it has the inputs."""


def _move_outside_layers(model: nn.Module, stack: DecoderStack, device: str) -> None:
    """Move everything except the decoder layers (embeddings, norms, lm_head, rotary) to `device`."""
    parent_name, _, attr = stack.prefix.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    from torch import nn

    setattr(parent, attr, nn.ModuleList())
    try:
        model.to(device)
    finally:
        setattr(parent, attr, stack.layers)


def capture_inputs(
    model: nn.Module, stack: DecoderStack, windows: torch.Tensor, device: str
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Layer-0 inputs (n, seqlen, hidden) on `device` in the model dtype, and the layer kwargs."""
    import torch

    store: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        store["hidden"] = hidden
        if "kwargs" not in store:
            store["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    _move_outside_layers(model, stack, device)
    handle = stack.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    inputs = None
    try:
        with torch.no_grad():
            for i, window in enumerate(windows):
                try:
                    model(input_ids=window[None].to(device), use_cache=False)
                except _StopForward:
                    pass
                hidden = store.pop("hidden")
                if inputs is None:
                    inputs = torch.empty((len(windows), *hidden.shape[1:]), dtype=hidden.dtype, device=device)
                inputs[i] = hidden[0]
    finally:
        handle.remove()
        _move_outside_layers(model, stack, "cpu")
    return inputs, store["kwargs"]


def capture_layer_kwargs(
    model: nn.Module, stack: DecoderStack, window: torch.Tensor, device: str
) -> list[dict[str, Any]]:
    """The keyword arguments the model passes to each decoder layer (mask, rotary embeddings, ...), from
    one window with every layer swapped for a recorder that returns its input (nothing is computed)."""
    import torch
    from torch import nn

    store: list[dict[str, Any]] = []
    last = len(stack.layers) - 1

    class Recorder(nn.Module):
        """Stands in for decoder layer `index`; attributes the model's forward reads from its layers (e.g.
        transformers 5.0's Gemma-2/3 `attention_type`) come from the real layer."""

        def __init__(self, index: int, layer: nn.Module) -> None:
            super().__init__()
            self.index = index
            object.__setattr__(self, "_layer", layer)  # not a submodule: nothing is moved or counted twice

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(object.__getattribute__(self, "_layer"), name)

        def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            store.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
            if self.index == last:
                raise _StopForward
            return hidden_states

    parent_name, _, attr = stack.prefix.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    _move_outside_layers(model, stack, device)
    setattr(parent, attr, nn.ModuleList(Recorder(i, layer) for i, layer in enumerate(stack.layers)))
    try:
        with torch.no_grad():
            model(input_ids=window[None].to(device), use_cache=False)
    except _StopForward:
        pass
    finally:
        setattr(parent, attr, stack.layers)
        _move_outside_layers(model, stack, "cpu")
    if len(store) != len(stack.layers):
        raise RuntimeError(f"{type(model).__name__} called {len(store)} of its {len(stack.layers)} layers")
    return store


DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(dtype: str, device: str) -> str:
    """The compute precision of the calibration forwards: "float32" or "bfloat16".

    auto: bfloat16 where the device runs it well (CUDA with bf16 support; a CPU with AVX512-BF16 or AMX,
    where a SmolLM2 forward of 2048 tokens takes 0.6x the float32 time), else float32."""
    if dtype not in DTYPES:
        from llm1bit.errors import unknown_choice

        raise unknown_choice("dtype", dtype, DTYPES)
    if dtype != "auto":
        return dtype
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if _cpu_has_fast_bf16() else "float32"


def _cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo (Linux); elsewhere bf16 is emulated and slower, so no."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read(1 << 16).split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_precision(dtype: str | None, device: str):
    """A context manager running the forwards at `dtype`: autocast for bfloat16, nothing for float32/None."""
    import torch

    if dtype in (None, "float32"):
        return contextlib.nullcontext()
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype=getattr(torch, dtype))


def run_layer(
    layer: nn.Module,
    inputs: torch.Tensor,
    kwargs: dict[str, Any],
    out: torch.Tensor | None,
    dtype: str | None = None,
) -> torch.Tensor | None:
    """out[i] = layer(inputs[i]) for every sample, one at a time, at compute precision `dtype`; returns
    `out`. Quantized linears keep their dense weight for the duration (rebuilt once, not once per sample).
    A hook may end a sample's forward early by raising `_StopForward` (then out[i] is not written)."""
    import torch

    from llm1bit.quant.hf.linear import set_weight_cache

    device = str(inputs.device)
    set_weight_cache(layer, True)
    try:
        with torch.no_grad(), compute_precision(dtype, device):
            for i in range(inputs.shape[0]):
                try:
                    result = layer(inputs[i : i + 1], **kwargs)
                except _StopForward:
                    continue
                out[i] = (result[0] if isinstance(result, tuple) else result)[0]
    finally:
        set_weight_cache(layer, False)
    return out


def _hessian_hooks(linears: dict[str, nn.Module], hessians: dict[str, list]) -> list:
    """Hooks adding each input window's X^T X to `hessians[name]` = [float32 sum, count].

    X is taken in float32 (a bf16 input is exact in it) and X^T X added to the float32 sum in one GEMM;
    linears fed the very same input tensor (q/k/v, gate/up) share one product."""
    import torch

    last: list = [None, None]  # the most recent input tensor and its X^T X

    def make(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inp = args[0]
            if last[0] is not inp:
                x = inp.reshape(-1, inp.shape[-1]).to(torch.float32)
                with torch.autocast(x.device.type, enabled=False):
                    last[0], last[1] = inp, x.T @ x
            acc = hessians[name]
            if acc[0] is None:
                acc[0] = last[1].clone()
            else:
                acc[0] += last[1]
            acc[1] += 1

        return hook

    return [linears[name].register_forward_hook(make(name)) for name in linears]


def layer_hessians(
    layer: nn.Module,
    linears: dict[str, nn.Module],
    inputs: torch.Tensor,
    kwargs: dict[str, Any],
    out: torch.Tensor,
    experts: dict[str, nn.Module] | None = None,
    tokens: dict[str, int] | None = None,
    dtype: str | None = None,
    expert_group: Sequence[int] | None = None,
    stop_after_experts: bool = False,
) -> dict[str, torch.Tensor]:
    """One forward of `layer` over every sample (into `out`) with hooks on `linears`: each linear's
    H = sum_s X_s^T X_s / n_samples, float32.

    `experts` (relative name -> fused experts module) adds each expert slice ("mlp.experts.down_proj.3")
    with H summed over the tokens routed to that expert, divided by n_samples as well (zeros when none
    were), and fills `tokens` with each slice's routed token count; `expert_group` limits that to those
    experts (all by default), so only their Hessians are held. `stop_after_experts` ends each sample's
    forward once the experts modules have seen their inputs (nothing after them is needed)."""
    from llm1bit.quant.hf.experts import ExpertHessians

    hessians: dict[str, list] = {rel: [None, 0] for rel in linears}
    handles = _hessian_hooks(linears, hessians)
    recorders = {rel: ExpertHessians(module, expert_group) for rel, module in (experts or {}).items()}
    handles += [recorder.register() for recorder in recorders.values()]
    if stop_after_experts and recorders:
        remaining: list[str] = []

        def stop(rel: str):
            def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
                remaining.remove(rel)
                if not remaining:
                    raise _StopForward

            return hook

        def reset(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            remaining[:] = list(recorders)

        handles.append(layer.register_forward_pre_hook(reset, with_kwargs=True))
        handles += [experts[rel].register_forward_pre_hook(stop(rel), with_kwargs=True) for rel in recorders]
    try:
        run_layer(layer, inputs, kwargs, out, dtype)
    finally:
        for handle in handles:
            handle.remove()
    result = {rel: acc.div_(count) for rel, (acc, count) in hessians.items()}
    for rel, recorder in recorders.items():
        result.update({f"{rel}.{name}": h for name, h in recorder.hessians().items()})
        if tokens is not None:
            tokens.update({f"{rel}.{name}": n for name, n in recorder.slice_tokens().items()})
    return result


@dataclass
class ExpertSlice:
    """One expert's (out, in) weight inside a fused experts module, quantized like a linear without bias."""

    weight: torch.Tensor
    bias: None = None


def layer_targets(layer: nn.Module, rels: tuple[str, ...], experts: dict[str, nn.Module]) -> dict[str, Any]:
    """Relative name -> the nn.Linear, or the `ExpertSlice` of a fused experts module, to quantize."""
    from llm1bit.quant.hf.experts import expert_weights

    slices = {
        f"{rel}.{name}": ExpertSlice(weight)
        for rel, module in experts.items()
        for name, weight in expert_weights(module).items()
    }
    return {rel: slices[rel] if rel in slices else layer.get_submodule(rel) for rel in rels}


@dataclass
class LayerStep:
    """One decoder layer of the walk, on the device, valid until the next step (its buffers are reused)."""

    index: int
    name: str  # the layer's module name, e.g. "model.layers.3"
    layer: nn.Module
    targets: dict[str, Any]  # relative name -> nn.Linear (or QuantLinear) or ExpertSlice, in layout order
    experts: dict[str, nn.Module]  # relative name -> fused experts module
    inputs: torch.Tensor | None  # (n, seqlen, hidden) on the device; None without calibration windows
    outputs: torch.Tensor | None  # the same shape: this layer's outputs once `hessians` or `advance` ran
    kwargs: dict[str, Any]
    tokens: dict[str, int] = field(default_factory=dict)  # expert slice -> routed tokens (after `hessians`)
    forward_seconds: float = 0.0
    dtype: str | None = None  # compute precision of the forwards (None: the model's)
    _ran: bool = False

    def hessians(self, expert_group: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Relative name -> H / n_samples (float32) of every dense target and of the expert slices of
        `expert_group` (all experts by default), from one forward of the layer as it is."""
        dense = {rel: m for rel, m in self.targets.items() if not isinstance(m, ExpertSlice)}
        out = self._timed_hessians(dense, expert_group, stop_after_experts=False)
        self._ran = True
        return out

    def expert_hessians(self, expert_group: Sequence[int]) -> dict[str, torch.Tensor]:
        """The slices of `expert_group` only, from a forward that stops at the experts modules; the layer
        must still be unquantized up to them (its outputs are not written)."""
        return self._timed_hessians({}, expert_group, stop_after_experts=True)

    def _timed_hessians(
        self, dense: dict[str, Any], expert_group: Sequence[int] | None, stop_after_experts: bool
    ) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        out = layer_hessians(
            self.layer,
            dense,
            self.inputs,
            self.kwargs,
            self.outputs,
            self.experts,
            self.tokens,
            self.dtype,
            expert_group,
            stop_after_experts=stop_after_experts,
        )
        self.forward_seconds += time.perf_counter() - t0
        return out

    def advance(self) -> None:
        """Run the layer as it is now (quantized) over every window: its outputs feed the next layer."""
        t0 = time.perf_counter()
        run_layer(self.layer, self.inputs, self.kwargs, self.outputs, self.dtype)
        self.forward_seconds += time.perf_counter() - t0
        self._ran = True


def walk_layers(
    model: nn.Module,
    windows: torch.Tensor | None,
    device: str,
    stack: DecoderStack | None = None,
    dtype: str | None = None,
) -> Iterator[LayerStep]:
    """Every decoder layer of `model` in order as a `LayerStep`; with `windows` (n, seqlen) int64, each with
    its inputs, and the consumer must call `hessians()` or `advance()` (or both) before the next step.
    `dtype` ("float32" / "bfloat16", see `resolve_dtype`) is the compute precision of the layer forwards."""
    import torch

    stack = stack or find_decoder_stack(model)
    model.eval()
    inputs = outputs = None
    layer_kwargs: list[dict[str, Any]] = []
    if windows is not None:
        inputs, _ = capture_inputs(model, stack, windows, device)
        layer_kwargs = capture_layer_kwargs(model, stack, windows[0], device)
        outputs = torch.empty_like(inputs)
    for index, layer in enumerate(stack.layers):
        layer.to(device)
        experts = {rel: layer.get_submodule(rel) for rel in stack.layer_experts(index)}
        step = LayerStep(
            index=index,
            name=stack.layer_name(index),
            layer=layer,
            targets=layer_targets(layer, stack.layer_linears(index), experts),
            experts=experts,
            inputs=inputs,
            outputs=outputs,
            kwargs=layer_kwargs[index] if windows is not None else {},
            dtype=dtype,
        )
        yield step
        if windows is not None:
            if not step._ran:
                raise RuntimeError(f"walk_layers: layer {index} was neither measured nor advanced")
            inputs, outputs = outputs, inputs
        layer.to("cpu")
