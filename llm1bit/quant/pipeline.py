"""Layer-by-layer quantization of a causal LM (GPTQ's `opt_sequential`, on transformers 5.x).

1. Capture the inputs of decoder layer 0: a forward pre-hook (with kwargs) on layer 0 records the hidden
   states and the keyword arguments the model itself passes (causal mask, rotary position embeddings,
   position ids), then stops the forward. The model runs with `use_cache=False`.
2. For each decoder layer, with only that layer on the device: one forward of the unquantized layer with
   hooks accumulating H = sum_s X_s^T X_s (float64) per linear, then `quantize_weight` for every linear
   (H / n as float32), each replaced by a `QuantLinear`; a second forward of the quantized layer yields
   the next layer's inputs. Each layer gets the keyword arguments the model passes to that very layer
   (`capture_layer_kwargs`): Gemma-2/3 alternate sliding-window and global attention (different masks,
   and for Gemma-3 different rotary embeddings), so layer 0's are not right for every layer.
3. Mixture-of-experts layers (`llm1bit.quant.experts`): each expert's slices of the fused experts weights
   are quantized as their own matrices with a Hessian from the tokens routed to that expert, and the
   experts module becomes a `QuantExperts`. An expert slice that received fewer tokens than it has inputs
   gets the identity Hessian instead (see `FALLBACK`); the report lists it with every expert's tokens.

Methods without a Hessian (rtn, bcq) skip the forwards. Embeddings, norms and lm_head are untouched;
activations keep the model's dtype."""

from __future__ import annotations

import dataclasses
import difflib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm1bit.errors import UserError
from llm1bit.quant.config import QuantSpec
from llm1bit.quant.models import DecoderStack, find_decoder_stack

if TYPE_CHECKING:
    import torch
    from rich.console import Console
    from torch import nn

    from llm1bit.quant.result import QuantizedWeight

NEEDS_HESSIAN = ("gptq", "shiftaddllm")

# quantize_weight(weight (N, K) float32, hessian (K, K) float32 | None, spec) -> QuantizedWeight
Solver = Callable[["torch.Tensor", "torch.Tensor | None", QuantSpec], "QuantizedWeight"]


# Expert slices with fewer routed calibration tokens than inputs are quantized with H = I.
FALLBACK = "identity Hessian (round-to-nearest on the same grid): fewer routed tokens than inputs"


@dataclass
class SublayerReport:
    name: str
    bits: int
    shape: tuple[int, int]
    error: float
    seconds: float
    tokens: int | None = None  # expert slices: calibration tokens the router sent to this expert
    fallback: bool = False  # expert slices: quantized with the identity Hessian (too few tokens)


@dataclass
class LayerReport:
    index: int
    forward_seconds: float = 0.0
    solver_seconds: float = 0.0
    sublayers: list[SublayerReport] = field(default_factory=list)
    resumed: bool = False  # loaded from the resume cache

    @property
    def error(self) -> float:
        return sum(s.error for s in self.sublayers)

    def expert_tokens(self) -> dict[str, list[int]]:
        """Experts module name -> calibration tokens routed to each expert (they sum to tokens × top_k)."""
        out: dict[str, dict[int, int]] = {}
        for s in self.sublayers:
            if s.tokens is not None:
                module, _, expert = s.name.rpartition(".")
                out.setdefault(module.rpartition(".")[0], {})[int(expert)] = s.tokens
        return {module: [per[e] for e in sorted(per)] for module, per in out.items()}

    @property
    def fallbacks(self) -> list[str]:
        return [s.name for s in self.sublayers if s.fallback]


@dataclass
class QuantizeReport:
    layers: list[LayerReport] = field(default_factory=list)
    capture_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def forward_seconds(self) -> float:
        return self.capture_seconds + sum(layer.forward_seconds for layer in self.layers)

    @property
    def solver_seconds(self) -> float:
        return sum(layer.solver_seconds for layer in self.layers)

    @property
    def fallbacks(self) -> list[str]:
        """Expert slices quantized with the identity Hessian (`FALLBACK`)."""
        return [name for layer in self.layers for name in layer.fallbacks]

    def to_dict(self) -> dict[str, Any]:
        out = {
            "total_seconds": self.total_seconds,
            "forward_seconds": self.forward_seconds,
            "solver_seconds": self.solver_seconds,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
        }
        experts = {k: v for layer in self.layers for k, v in layer.expert_tokens().items()}
        if experts:
            out["expert_tokens"] = experts
            out["fallback"] = {"rule": FALLBACK, "modules": self.fallbacks}
        return out


class _StopForward(Exception):
    """Raised by the layer-0 pre-hook once it has the inputs."""


def check_device(device: str) -> str:
    """'cpu' or a CUDA device that exists; a one-line error otherwise."""
    import torch

    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {device}: no CUDA device is available on this machine (use --device cpu)"
            )
        return device
    raise UserError(f"unknown --device {device!r}; known: cpu, cuda")


def resolve_bits(names: list[str], wbits: int, bits_config: dict[str, int] | None) -> dict[str, int]:
    """Bits per module name: `bits_config` overrides `wbits`; unknown names and bad widths are errors.

    Expert slices are named one by one (`model.layers.0.mlp.experts.down_proj.3`); a name that stands for
    several of them (`...mlp.experts.down_proj`, `...mlp.experts`) sets them all, and a slice named as well
    overrides that whichever comes first in the file."""
    bits = dict.fromkeys(names, wbits)
    groups: dict[str, list[str]] = {}
    for name in names:
        head, _, tail = name.rpartition(".")
        if tail.isdigit():  # an expert slice: <experts>.<projection>.<expert>
            groups.setdefault(head, []).append(name)
            groups.setdefault(head.rpartition(".")[0], []).append(name)
    items = sorted((bits_config or {}).items(), key=lambda item: item[0] not in groups)
    for name, value in items:
        if name not in bits and name not in groups:
            close = difflib.get_close_matches(name, names, n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise UserError(f"bits config names unknown module {name!r}{hint}; e.g. {names[0]}")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
            raise UserError(f"bits config gives {name} {value!r} bits; allowed: an integer 1 to 8")
        for target in groups.get(name, [name]):
            bits[target] = value
    return bits


def read_bits_config(path: str) -> dict[str, int]:
    """{module name: bits} from a bits file {"layers": {name: bits or {"bits": bits}, ...}, ...}, read by the
    simulator's strict reader (a module named twice, an unknown key: one-line errors)."""
    from llm1bit.layer_bits import read_bits_file

    layers, _mode = read_bits_file(path)
    return layers  # type: ignore[return-value]


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


def run_layer(
    layer: nn.Module, inputs: torch.Tensor, kwargs: dict[str, Any], out: torch.Tensor
) -> torch.Tensor:
    """out[i] = layer(inputs[i]) for every sample, one at a time; returns `out`. Quantized linears keep
    their dense weight for the duration (rebuilt once, not once per sample)."""
    import torch

    from llm1bit.quant.linear import set_weight_cache

    set_weight_cache(layer, True)
    try:
        with torch.no_grad():
            for i in range(inputs.shape[0]):
                result = layer(inputs[i : i + 1], **kwargs)
                out[i] = (result[0] if isinstance(result, tuple) else result)[0]
    finally:
        set_weight_cache(layer, False)
    return out


def _hessian_hooks(linears: dict[str, nn.Module], hessians: dict[str, list]) -> list:
    """Hooks adding each input window's X^T X to `hessians[name]` = [float64 sum, count].

    The product is taken in float32 (BLAS-fast, ~1e-7 relative error) and summed in float64;
    linears fed the very same input tensor (q/k/v, gate/up) share one product."""
    import torch

    last: list = [None, None]  # the most recent input tensor and its X^T X

    def make(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inp = args[0]
            if last[0] is not inp:
                x = inp.reshape(-1, inp.shape[-1]).to(torch.float32)
                last[0], last[1] = inp, (x.T @ x).to(torch.float64)
            acc = hessians[name]
            if acc[0] is None:
                acc[0] = torch.zeros_like(last[1])
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
) -> dict[str, torch.Tensor]:
    """One forward of `layer` over every sample (into `out`) with hooks on `linears`: each linear's
    H = sum_s X_s^T X_s / n_samples, float64.

    `experts` (relative name -> fused experts module) adds each expert slice ("mlp.experts.down_proj.3")
    with H summed over the tokens routed to that expert, divided by n_samples as well (zeros when none
    were), and fills `tokens` with each slice's routed token count."""
    from llm1bit.quant.experts import ExpertHessians

    hessians: dict[str, list] = {rel: [None, 0] for rel in linears}
    handles = _hessian_hooks(linears, hessians)
    recorders = {rel: ExpertHessians(module) for rel, module in (experts or {}).items()}
    handles += [recorder.register() for recorder in recorders.values()]
    try:
        run_layer(layer, inputs, kwargs, out)
    finally:
        for handle in handles:
            handle.remove()
    result = {rel: acc.div_(count) for rel, (acc, count) in hessians.items()}
    for rel, recorder in recorders.items():
        result.update({f"{rel}.{name}": h for name, h in recorder.hessians().items()})
        if tokens is not None:
            tokens.update({f"{rel}.{name}": n for name, n in recorder.slice_tokens().items()})
    return result


def _to_cpu(obj: Any) -> Any:
    """A copy of a (nested) result dataclass with every tensor on the CPU."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: _to_cpu(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        )
    return obj


def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    windows: torch.Tensor | None = None,
    device: str = "cpu",
    bits_config: dict[str, int] | None = None,
    console: Console | None = None,
    solver: Solver | None = None,
    cache_dir: Path | None = None,
) -> QuantizeReport:
    """Quantize every decoder-layer linear of `model` in place (they become `QuantLinear`).

    `windows` (n, seqlen) int64 calibration tokens are needed for gptq and shiftaddllm. `console`
    shows a rich progress bar; `solver` defaults to `llm1bit.quant.solver.quantize_weight`. With
    `cache_dir`, each finished layer's codes are saved there, and layers already found there (from an
    interrupted run with the same settings) are loaded instead of quantized again."""
    import torch

    from llm1bit.quant.experts import needs_fallback
    from llm1bit.quant.linear import QuantLinear

    if solver is None:
        from llm1bit.quant.solver import quantize_weight as solver
    spec = spec.validate()
    device = check_device(device)
    stack = find_decoder_stack(model)
    bits = resolve_bits(stack.module_names(), spec.wbits, bits_config)
    specs = {b: spec.with_bits(b) for b in set(bits.values())}
    needs_hessian = spec.method in NEEDS_HESSIAN
    if needs_hessian and windows is None:
        raise UserError(f"--method {spec.method} needs calibration data (--calib FILE)")
    model.eval()
    report = QuantizeReport()
    start = time.perf_counter()

    inputs = outputs = None
    layer_kwargs: list[dict[str, Any]] = []
    if needs_hessian:
        inputs, _ = capture_inputs(model, stack, windows, device)
        layer_kwargs = capture_layer_kwargs(model, stack, windows[0], device)
        outputs = torch.empty_like(inputs)
        report.capture_seconds = time.perf_counter() - start

    progress = _progress(console)
    task = progress.add_task("quantizing", total=len(bits)) if progress else None
    try:
        if progress:
            progress.start()
        for index, layer in enumerate(stack.layers):
            layer_report = LayerReport(index)
            layer.to(device)
            kwargs = layer_kwargs[index] if needs_hessian else {}
            experts = {rel: layer.get_submodule(rel) for rel in stack.layer_experts(index)}
            linears = _layer_targets(layer, stack.layer_linears(index), experts)
            built: dict[str, nn.Module] = {}  # quantized expert slices, installed once a layer is done
            cache_file = cache_dir / f"layer-{index:04d}.safetensors" if cache_dir else None
            cached = load_layer_cache(cache_file) if cache_file and cache_file.is_file() else None
            if cached is not None:  # finished by an interrupted earlier run with the same settings
                layer_report.resumed = True
                for rel, (packed, sub) in cached.items():
                    module = QuantLinear(None, linears[rel].bias, linears[rel].weight.dtype, packed=packed)
                    _install(layer, rel, module, linears[rel], built)
                    layer_report.sublayers.append(sub)
                if progress:
                    progress.advance(task, len(cached))
            else:
                hessians: dict[str, torch.Tensor] = {}
                tokens: dict[str, int] = {}
                if needs_hessian:
                    t0 = time.perf_counter()
                    dense = {rel: m for rel, m in linears.items() if not isinstance(m, _ExpertSlice)}
                    hessians = layer_hessians(layer, dense, inputs, kwargs, outputs, experts, tokens)
                    layer_report.forward_seconds += time.perf_counter() - t0
                for rel, linear in linears.items():
                    name = f"{stack.layer_name(index)}.{rel}"
                    if progress:
                        progress.update(task, description=f"layer {index + 1}/{len(stack.layers)} {rel}")
                    routed = hessians.pop(rel) if needs_hessian else None
                    fallback = rel in tokens and needs_fallback(tokens[rel], linear.weight.shape[1])
                    t0 = time.perf_counter()
                    weight = linear.weight.detach().to(torch.float32)
                    module_spec = specs[bits[name]].for_module(name)
                    with torch.no_grad():
                        if fallback:  # FALLBACK: too few routed tokens for a full-rank Hessian
                            quantized = solve_fallback(solver, weight, routed, module_spec)
                        else:
                            hessian = None if routed is None else routed.to(torch.float32)
                            quantized = solver(weight, hessian, module_spec)
                            del hessian
                    quantized = _to_cpu(quantized)
                    seconds = time.perf_counter() - t0
                    del routed
                    module = QuantLinear(quantized, linear.bias, linear.weight.dtype, bits[name])
                    _install(layer, rel, module, linear, built)
                    layer_report.sublayers.append(
                        SublayerReport(
                            name,
                            bits[name],
                            tuple(weight.shape),
                            float(quantized.error),
                            seconds,
                            tokens.get(rel),
                            fallback,
                        )
                    )
                    layer_report.solver_seconds += seconds
                    if progress:
                        progress.advance(task)
            _install_experts(layer, experts, built)
            if cached is None and cache_file is not None:
                save_layer_cache(cache_file, layer, list(linears), layer_report)
            if needs_hessian:
                t0 = time.perf_counter()
                run_layer(layer, inputs, kwargs, outputs)
                inputs, outputs = outputs, inputs
                layer_report.forward_seconds += time.perf_counter() - t0
            layer.to("cpu")
            report.layers.append(layer_report)
    finally:
        if progress:
            progress.stop()
    report.total_seconds = time.perf_counter() - start
    return report


@dataclass
class _ExpertSlice:
    """One expert's (out, in) weight inside a fused experts module, quantized like a linear without bias."""

    weight: torch.Tensor
    bias: None = None


def _layer_targets(layer: nn.Module, rels: tuple[str, ...], experts: dict[str, nn.Module]) -> dict[str, Any]:
    """Relative name -> the nn.Linear, or the `_ExpertSlice` of a fused experts module, to quantize."""
    from llm1bit.quant.experts import expert_weights

    slices = {
        f"{rel}.{name}": _ExpertSlice(weight)
        for rel, module in experts.items()
        for name, weight in expert_weights(module).items()
    }
    return {rel: slices[rel] if rel in slices else layer.get_submodule(rel) for rel in rels}


def _install(layer: nn.Module, rel: str, module: nn.Module, target: Any, built: dict[str, nn.Module]) -> None:
    """Put a quantized linear in place now, or keep an expert slice in `built` for `_install_experts`."""
    if isinstance(target, _ExpertSlice):
        built[rel] = module
    else:
        _replace(layer, rel, module)


def _install_experts(layer: nn.Module, experts: dict[str, nn.Module], built: dict[str, nn.Module]) -> None:
    """Swap each fused experts module for a `QuantExperts` of its quantized slices (`built`)."""
    from llm1bit.quant.experts import QuantExperts

    for rel, module in experts.items():
        n = module.gate_up_proj.shape[0]
        gate_up = [built.pop(f"{rel}.gate_up_proj.{e}") for e in range(n)]
        down = [built.pop(f"{rel}.down_proj.{e}") for e in range(n)]
        _replace(layer, rel, QuantExperts(module, gate_up, down))


def solve_fallback(
    solver: Solver, weight: torch.Tensor, routed: torch.Tensor, spec: QuantSpec
) -> QuantizedWeight:
    """FALLBACK for an expert slice with too few routed tokens: the solver with the identity Hessian
    (round-to-nearest on the same grid); its .error is then 1/2 tr(E H E^T) against the routed Hessian the
    slice did get, in the units of every other layer. `bits` (sensitivity) quantizes such slices the same way."""
    import torch

    quantized = solver(weight, torch.eye(weight.shape[1], dtype=torch.float32), spec)
    e = weight.to(torch.float64) - quantized.dequantize().to(torch.float64).to(weight.device)
    error = 0.5 * float(torch.sum((e @ routed.to(device=weight.device, dtype=torch.float64)) * e))
    return dataclasses.replace(quantized, error=error)


def _replace(layer: nn.Module, rel: str, module: nn.Module) -> None:
    """Put `module` at relative name `rel` inside `layer`, on the layer's device."""
    parent_name, _, child = rel.rpartition(".")
    device = next(layer.parameters()).device
    setattr(layer.get_submodule(parent_name) if parent_name else layer, child, module.to(device))


def save_layer_cache(path: Path, layer: nn.Module, rels: list[str], layer_report: LayerReport) -> None:
    """Packed codes of one finished decoder layer plus its report, written atomically."""
    import json

    from safetensors.torch import save_file

    from llm1bit.atomic import atomic_path

    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, Any] = {}
    for rel, sub in zip(rels, layer_report.sublayers, strict=True):
        module = layer.get_submodule(rel)
        tensors.update({f"{rel}.{key}": t.detach().cpu() for key, t in module.packed_tensors().items()})
        entries[rel] = {"meta": module.meta, "report": dataclasses.asdict(sub)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"llm1bit": json.dumps(entries)})


def load_layer_cache(path: Path) -> dict[str, tuple[tuple[dict, dict], SublayerReport]]:
    """{relative module name: ((packed tensors, meta), its report)} as `save_layer_cache` wrote them."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        entries = json.loads(f.metadata()["llm1bit"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    own: dict[str, dict] = {}
    for key, t in tensors.items():
        rel, _, suffix = key.rpartition(".")
        own.setdefault(rel, {})[suffix] = t
    out = {}
    for rel, entry in entries.items():
        report = entry["report"]
        report["shape"] = tuple(report["shape"])
        out[rel] = ((own[rel], entry["meta"]), SublayerReport(**report))
    return out


def _progress(console: Console | None):
    if console is None:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def summary_table(report: QuantizeReport):
    """A rich table: one row per decoder layer (bits, summed solver error, seconds), and totals.

    Mixture-of-experts models add the calibration tokens routed per expert (min / median / max over the
    layer's experts) and the number of expert slices on the fallback; the caption names those slices."""
    import statistics

    from rich.table import Table

    experts = any(layer.expert_tokens() for layer in report.layers)
    table = Table(title="per-layer summary", show_footer=True)
    table.add_column("layer", footer="total")
    table.add_column("bits")
    table.add_column("error", justify="right", footer=f"{sum(r.error for r in report.layers):.4g}")
    if experts:
        table.add_column("tokens/expert min/med/max", justify="right")
        table.add_column("fallback", justify="right", footer=str(len(report.fallbacks)))
    table.add_column("forward s", justify="right", footer=f"{report.forward_seconds:.1f}")
    table.add_column("solver s", justify="right", footer=f"{report.solver_seconds:.1f}")
    for layer in report.layers:
        widths = sorted({s.bits for s in layer.sublayers})
        cells = [str(layer.index), "/".join(map(str, widths)), f"{layer.error:.4g}"]
        if experts:
            counts = [n for per in layer.expert_tokens().values() for n in per]
            tokens = f"{min(counts)}/{statistics.median(counts):g}/{max(counts)}" if counts else "-"
            cells += [tokens, str(len(layer.fallbacks))]
        cells += [f"{layer.forward_seconds:.1f}", f"{layer.solver_seconds:.1f}"]
        table.add_row(*cells)
    fallbacks = report.fallbacks
    if fallbacks:
        shown = ", ".join(fallbacks[:8]) + (f" and {len(fallbacks) - 8} more" if len(fallbacks) > 8 else "")
        table.caption = f"{FALLBACK}: {shown}"
    return table
