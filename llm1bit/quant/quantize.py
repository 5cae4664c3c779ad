"""Layer-by-layer quantization of a causal LM (GPTQ's `opt_sequential`, on transformers 5.x).

The walk (`llm1bit.quant.walk.layers`) gives each decoder layer with its inputs; here each of its linears gets
`quantize_weight` with its Hessian (H / n as float32) and is replaced by a `QuantLinear`, then the quantized
layer runs again so the next layer sees its outputs. Mixture-of-experts layers (`llm1bit.quant.hf.experts`):
each expert's slices of the fused experts weights are quantized as their own matrices with a Hessian from
the tokens routed to that expert, and the experts module becomes a `QuantExperts`. An expert slice that
received fewer tokens than it has inputs gets the identity Hessian instead (see
`llm1bit.quant.numerics.column_solver.FALLBACK`); the report lists it with every expert's tokens. Finished
layers are cached, so an interrupted run resumes.

Methods without a Hessian (rtn, bcq) skip the forwards. Embeddings, norms and lm_head are untouched;
the forwards run at the compute precision `dtype` (`llm1bit.quant.walk.layers.resolve_dtype`: bf16 autocast
where the device runs it well), the residual stream and the weights the solver sees keep the model's dtype.

Memory of an MoE layer: its expert Hessians (float32) are built and consumed a bounded group of experts at a
time (`expert_group`; by default as many as fit EXPERT_HESSIAN_BUDGET bytes): the first group comes from the
layer's forward with the dense Hessians, each later group from a forward that stops at the experts module
(the dense linears are installed only after the last group, so every group sees the unquantized layer)."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm1bit.errors import UserError
from llm1bit.quant.numerics.column_solver import FALLBACK
from llm1bit.quant.numerics.methods import QuantSpec
from llm1bit.quant.walk.decoder_stack import find_decoder_stack

if TYPE_CHECKING:
    import torch
    from rich.console import Console
    from torch import nn

    from llm1bit.quant.numerics.codes import QuantizedWeight

# quantize_weight(weight (N, K) float32, hessian (K, K) float32 | None, spec) -> QuantizedWeight
Solver = Callable[["torch.Tensor", "torch.Tensor | None", QuantSpec], "QuantizedWeight"]

# Bytes of float32 expert Hessians an MoE layer may hold at once (the default expert group size): a
# Mixtral-8x7B expert needs 4 * (4096^2 + 14336^2) bytes = 0.89 GB, so two experts at a time.
EXPERT_HESSIAN_BUDGET = 2 * 2**30


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
    expert_group: int = 0  # experts whose Hessians were held at once (0: no experts)

    @property
    def weights(self) -> int:
        return sum(s.shape[0] * s.shape[1] for s in self.sublayers)

    @property
    def weights_per_second(self) -> float:
        """Quantized weights per second of this layer's forwards and solver (0 for a resumed layer)."""
        seconds = self.forward_seconds + self.solver_seconds
        return self.weights / seconds if seconds > 0 and not self.resumed else 0.0

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
    dtype: str = "float32"  # compute precision of the calibration forwards

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
            "dtype": self.dtype,
            "layers": [
                {**dataclasses.asdict(layer), "weights_per_second": layer.weights_per_second}
                for layer in self.layers
            ],
        }
        experts = {k: v for layer in self.layers for k, v in layer.expert_tokens().items()}
        if experts:
            out["expert_tokens"] = experts
            out["fallback"] = {"rule": FALLBACK, "modules": self.fallbacks}
        return out


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
    dtype: str = "float32",
    expert_group: int | None = None,
) -> QuantizeReport:
    """Quantize every decoder-layer linear of `model` in place (they become `QuantLinear`).

    `windows` (n, seqlen) int64 calibration tokens are needed for gptq and shiftaddllm. `console`
    shows a rich progress bar (weights/s of the last layer, ETA); `solver` defaults to
    `llm1bit.quant.numerics.column_solver.quantize_weight`. With `cache_dir`, each finished layer's codes are
    saved there, and layers already found there (from an interrupted run with the same settings) are loaded
    instead of quantized again. `dtype` is the forwards' compute precision ("auto", "float32", "bfloat16");
    `expert_group` the number of experts whose Hessians are held at once (None: EXPERT_HESSIAN_BUDGET)."""
    import torch

    from llm1bit.quant.device import check_device
    from llm1bit.quant.hf.experts import needs_fallback
    from llm1bit.quant.hf.linear import QuantLinear
    from llm1bit.quant.numerics.column_solver import solve_fallback
    from llm1bit.quant.walk.layers import ExpertSlice, resolve_dtype, walk_layers

    if solver is None:
        from llm1bit.quant.numerics.column_solver import quantize_weight as solver
    spec = spec.validate()
    device = check_device(device)
    dtype = resolve_dtype(dtype, device)
    if expert_group is not None and expert_group < 1:
        raise UserError(f"expert group {expert_group} must be at least 1")
    stack = find_decoder_stack(model)
    bits = resolve_bits(stack.module_names(), spec.wbits, bits_config)
    specs = {b: spec.with_bits(b) for b in set(bits.values())}
    needs_hessian = spec.info.needs_hessian
    if needs_hessian and windows is None:
        raise UserError(f"--method {spec.method} needs calibration data (--calib FILE)")
    report = QuantizeReport(dtype=dtype)
    start = time.perf_counter()
    walk = walk_layers(model, windows if needs_hessian else None, device, stack, dtype)

    progress = _progress(console)
    total_weights = _count_weights(model, stack)
    task = progress.add_task("quantizing", total=total_weights, rate="") if progress else None
    try:
        if progress:
            progress.start()
        for step in walk:
            if step.index == 0:  # the walk captured layer 0's inputs before its first step
                report.capture_seconds = time.perf_counter() - start if needs_hessian else 0.0
            index, layer, linears = step.index, step.layer, step.targets
            layer_report = LayerReport(index)
            built: dict[str, nn.Module] = {}  # quantized modules installed once a layer is done
            cache_file = cache_dir / f"layer-{index:04d}.safetensors" if cache_dir else None
            cached = load_layer_cache(cache_file) if cache_file and cache_file.is_file() else None
            if cached is not None:  # finished by an interrupted earlier run with the same settings
                layer_report.resumed = True
                for rel, (packed, sub) in cached.items():
                    module = QuantLinear(None, linears[rel].bias, linears[rel].weight.dtype, packed=packed)
                    _install(layer, rel, module, linears[rel], built)
                    layer_report.sublayers.append(sub)
                if progress:  # the ETA counts only the weights still to quantize
                    done = sum(s.shape[0] * s.shape[1] for _, s in cached.values())
                    total_weights -= done
                    progress.update(task, total=total_weights)
            else:
                groups = _expert_groups(step.experts, expert_group) if needs_hessian else []
                layer_report.expert_group = len(groups[0]) if groups else 0
                defer = len(groups) > 1  # later groups' forwards must see the unquantized layer
                hessians = step.hessians(groups[0] if groups else None) if needs_hessian else {}
                pending = groups[1:]
                tokens = step.tokens
                for rel in _solve_order(linears, groups):
                    linear = linears[rel]
                    name = f"{step.name}.{rel}"
                    if progress:
                        progress.update(task, description=f"layer {index + 1}/{len(stack.layers)} {rel}")
                    while needs_hessian and rel not in hessians and pending:
                        hessians.update(step.expert_hessians(pending.pop(0)))
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
                    if defer and not isinstance(linear, ExpertSlice):
                        built[rel] = module
                    else:
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
                        progress.advance(task, weight.numel())
                order = {rel: i for i, rel in enumerate(linears)}  # the report in layout order
                layer_report.sublayers.sort(key=lambda sub: order[sub.name[len(step.name) + 1 :]])
            _install_experts(layer, step.experts, built)
            for rel in list(built):  # deferred dense linears
                _replace(layer, rel, built.pop(rel))
            if cached is None and cache_file is not None:
                save_layer_cache(cache_file, layer, list(linears), layer_report)
            if needs_hessian:
                step.advance()
            layer_report.forward_seconds = step.forward_seconds
            report.layers.append(layer_report)
            if progress and not layer_report.resumed:
                progress.update(task, rate=f"{layer_report.weights_per_second / 1e6:.2f} M weights/s")
    finally:
        walk.close()
        if progress:
            progress.stop()
    report.total_seconds = time.perf_counter() - start
    return report


def _count_weights(model: nn.Module, stack) -> int:
    """Weights of every linear (and expert slice) the walk will quantize."""
    from llm1bit.quant.hf.experts import expert_weights, is_fused_experts

    total = 0
    for index, layer in enumerate(stack.layers):
        for rel in stack.layer_linears(index):
            head, _, tail = rel.rpartition(".")
            if tail.isdigit():  # an expert slice: counted with its experts module below
                continue
            total += layer.get_submodule(rel).weight.numel()
        for rel in stack.layer_experts(index):
            module = layer.get_submodule(rel)
            if is_fused_experts(module):
                total += sum(w.numel() for w in expert_weights(module).values())
    return total


def _expert_groups(experts: dict[str, nn.Module], size: int | None) -> list[list[int]]:
    """Expert indices in groups whose float32 Hessians are held together ([] for a dense layer)."""
    from llm1bit.quant.hf.experts import expert_weights

    if not experts:
        return []
    module = next(iter(experts.values()))
    weights = expert_weights(module)
    n = len(weights) // 2
    if size is None:
        per_expert = 4 * sum(w.shape[1] ** 2 for w in weights.values()) * len(experts) / n
        size = max(1, int(EXPERT_HESSIAN_BUDGET // max(per_expert, 1)))
    size = min(size, n)
    return [list(range(e, min(e + size, n))) for e in range(0, n, size)]


def _solve_order(linears: dict[str, Any], groups: list[list[int]]) -> list[str]:
    """Dense targets in layout order, then expert slices group by group (so one group is held at a time)."""
    if len(groups) <= 1:
        return list(linears)

    def key(rel: str) -> tuple[int, int]:
        head, _, tail = rel.rpartition(".")
        if not tail.isdigit():
            return (-1, 0)
        expert = int(tail)
        return (next(i for i, g in enumerate(groups) if expert in g), 0)

    return sorted(linears, key=key)  # stable: layout order within a group


def _install(layer: nn.Module, rel: str, module: nn.Module, target: Any, built: dict[str, nn.Module]) -> None:
    """Put a quantized linear in place now, or keep an expert slice in `built` for `_install_experts`."""
    from llm1bit.quant.walk.layers import ExpertSlice

    if isinstance(target, ExpertSlice):
        built[rel] = module
    else:
        _replace(layer, rel, module)


def _install_experts(layer: nn.Module, experts: dict[str, nn.Module], built: dict[str, nn.Module]) -> None:
    """Swap each fused experts module for a `QuantExperts` of its quantized slices (`built`)."""
    from llm1bit.quant.hf.experts import QuantExperts

    for rel, module in experts.items():
        n = module.gate_up_proj.shape[0]
        gate_up = [built.pop(f"{rel}.gate_up_proj.{e}") for e in range(n)]
        down = [built.pop(f"{rel}.down_proj.{e}") for e in range(n)]
        _replace(layer, rel, QuantExperts(module, gate_up, down))


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
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
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
    table.add_column("M weights/s", justify="right")
    for layer in report.layers:
        widths = sorted({s.bits for s in layer.sublayers})
        cells = [str(layer.index), "/".join(map(str, widths)), f"{layer.error:.4g}"]
        if experts:
            counts = [n for per in layer.expert_tokens().values() for n in per]
            tokens = f"{min(counts)}/{statistics.median(counts):g}/{max(counts)}" if counts else "-"
            cells += [tokens, str(len(layer.fallbacks))]
        rate = layer.weights_per_second
        cells += [
            f"{layer.forward_seconds:.1f}",
            f"{layer.solver_seconds:.1f}",
            f"{rate / 1e6:.3f}" if rate else "resumed",
        ]
        table.add_row(*cells)
    fallbacks = report.fallbacks
    if fallbacks:
        shown = ", ".join(fallbacks[:8]) + (f" and {len(fallbacks) - 8} more" if len(fallbacks) > 8 else "")
        table.caption = f"{FALLBACK}: {shown}"
    return table


def resume_folder(
    out: Path, model_src: str, spec, windows, layer_bits: dict[str, int] | None, dtype: str = "float32"
) -> Path:
    """Hidden folder beside `out` for finished layers, keyed by everything that decides their codes
    (the compute precision of the forwards included)."""
    from llm1bit.version import __version__

    digest = hashlib.sha256()
    source = Path(model_src)
    stamp = [str(source.resolve()), source.stat().st_mtime_ns] if source.exists() else [model_src]
    settings = {"model": stamp, "spec": spec.to_dict(), "bits": layer_bits, "version": __version__}
    if dtype != "float32":  # float32 keeps the key of folders from before --dtype
        settings["dtype"] = dtype
    digest.update(json.dumps(settings, sort_keys=True).encode())
    if windows is not None:
        digest.update(windows.numpy().tobytes())
    return out.parent / f".{out.name}.resume-{digest.hexdigest()[:16]}.partial"
