"""Layer-by-layer quantization of a causal LM (GPTQ's `opt_sequential`, on transformers 5.x).

1. Capture the inputs of decoder layer 0: a forward pre-hook (with kwargs) on layer 0 records the hidden
   states and the keyword arguments the model itself passes (causal mask, rotary position embeddings,
   position ids), then stops the forward. The model runs with `use_cache=False`.
2. For each decoder layer, with only that layer on the device: one forward of the unquantized layer with
   hooks accumulating H = sum_s X_s^T X_s (float64) per linear, then `quantize_weight` for every linear
   (H / n as float32), each replaced by a `QuantLinear`; a second forward of the quantized layer yields
   the next layer's inputs.

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


@dataclass
class SublayerReport:
    name: str
    bits: int
    shape: tuple[int, int]
    error: float
    seconds: float


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_seconds": self.total_seconds,
            "forward_seconds": self.forward_seconds,
            "solver_seconds": self.solver_seconds,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
        }


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
    """Bits per module name: `bits_config` overrides `wbits`; unknown names and bad widths are errors."""
    bits = dict.fromkeys(names, wbits)
    for name, value in (bits_config or {}).items():
        if name not in bits:
            close = difflib.get_close_matches(name, names, n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise UserError(f"bits config names unknown module {name!r}{hint}; e.g. {names[0]}")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
            raise UserError(f"bits config gives {name} {value!r} bits; allowed: an integer 1 to 8")
        bits[name] = value
    return bits


def read_bits_config(path: str) -> dict[str, int]:
    """{module name: bits} from a JSON file {"layers": {name: bits or {"bits": bits}, ...}, ...}."""
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"bits config {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read bits config {path}: {exc}") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, dict) or not layers:
        raise UserError(f'bits config {path} needs a non-empty "layers" object {{"<module name>": bits}}')
    return {name: value.get("bits") if isinstance(value, dict) else value for name, value in layers.items()}


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


def run_layer(
    layer: nn.Module, inputs: torch.Tensor, kwargs: dict[str, Any], out: torch.Tensor
) -> torch.Tensor:
    """out[i] = layer(inputs[i]) for every sample, one at a time; returns `out`."""
    import torch

    with torch.no_grad():
        for i in range(inputs.shape[0]):
            result = layer(inputs[i : i + 1], **kwargs)
            out[i] = (result[0] if isinstance(result, tuple) else result)[0]
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
) -> dict[str, torch.Tensor]:
    """One forward of `layer` over every sample (into `out`) with hooks on `linears`: each linear's
    H = sum_s X_s^T X_s / n_samples, float64."""
    hessians: dict[str, list] = {rel: [None, 0] for rel in linears}
    handles = _hessian_hooks(linears, hessians)
    try:
        run_layer(layer, inputs, kwargs, out)
    finally:
        for handle in handles:
            handle.remove()
    return {rel: acc.div_(count) for rel, (acc, count) in hessians.items()}


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

    inputs = outputs = kwargs = None
    if needs_hessian:
        inputs, kwargs = capture_inputs(model, stack, windows, device)
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
            linears = {rel: layer.get_submodule(rel) for rel in stack.linears}
            cache_file = cache_dir / f"layer-{index:04d}.safetensors" if cache_dir else None
            cached = load_layer_cache(cache_file) if cache_file and cache_file.is_file() else None
            if cached is not None:  # finished by an interrupted earlier run with the same settings
                layer_report.resumed = True
                for rel, (quantized, sub) in cached.items():
                    _replace(
                        layer,
                        rel,
                        QuantLinear(quantized, linears[rel].bias, linears[rel].weight.dtype, sub.bits),
                    )
                    layer_report.sublayers.append(sub)
                if progress:
                    progress.advance(task, len(cached))
            else:
                hessians: dict[str, torch.Tensor] = {}
                if needs_hessian:
                    t0 = time.perf_counter()
                    hessians = layer_hessians(layer, linears, inputs, kwargs, outputs)
                    layer_report.forward_seconds += time.perf_counter() - t0
                for rel, linear in linears.items():
                    name = f"{stack.layer_name(index)}.{rel}"
                    if progress:
                        progress.update(task, description=f"layer {index + 1}/{len(stack.layers)} {rel}")
                    hessian = hessians.pop(rel).to(torch.float32) if needs_hessian else None
                    t0 = time.perf_counter()
                    weight = linear.weight.detach().to(torch.float32)
                    with torch.no_grad():
                        quantized = _to_cpu(solver(weight, hessian, specs[bits[name]]))
                    seconds = time.perf_counter() - t0
                    del hessian
                    _replace(layer, rel, QuantLinear(quantized, linear.bias, linear.weight.dtype, bits[name]))
                    layer_report.sublayers.append(
                        SublayerReport(name, bits[name], tuple(weight.shape), float(quantized.error), seconds)
                    )
                    layer_report.solver_seconds += seconds
                    if progress:
                        progress.advance(task)
                if cache_file is not None:
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
    from llm1bit.quant.packing import pack

    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, Any] = {}
    for rel, sub in zip(rels, layer_report.sublayers, strict=True):
        packed, meta = pack(layer.get_submodule(rel).quantized, sub.bits)
        tensors.update({f"{rel}.{key}": t for key, t in packed.items()})
        entries[rel] = {"meta": meta, "report": dataclasses.asdict(sub)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"llm1bit": json.dumps(entries)})


def load_layer_cache(path: Path) -> dict[str, tuple[QuantizedWeight, SublayerReport]]:
    import json

    from safetensors import safe_open

    from llm1bit.quant.packing import unpack

    with safe_open(str(path), "pt") as f:
        entries = json.loads(f.metadata()["llm1bit"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    out = {}
    for rel, entry in entries.items():
        own = {key[len(rel) + 1 :]: t for key, t in tensors.items() if key.startswith(f"{rel}.")}
        report = entry["report"]
        report["shape"] = tuple(report["shape"])
        out[rel] = (unpack(own, entry["meta"]), SublayerReport(**report))
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
    """A rich table: one row per decoder layer (bits, summed solver error, seconds), and totals."""
    from rich.table import Table

    table = Table(title="per-layer summary", show_footer=True)
    table.add_column("layer", footer="total")
    table.add_column("bits")
    table.add_column("error", justify="right", footer=f"{sum(r.error for r in report.layers):.4g}")
    table.add_column("forward s", justify="right", footer=f"{report.forward_seconds:.1f}")
    table.add_column("solver s", justify="right", footer=f"{report.solver_seconds:.1f}")
    for layer in report.layers:
        widths = sorted({s.bits for s in layer.sublayers})
        table.add_row(
            str(layer.index),
            "/".join(map(str, widths)),
            f"{layer.error:.4g}",
            f"{layer.forward_seconds:.1f}",
            f"{layer.solver_seconds:.1f}",
        )
    return table
