"""Per-layer sensitivity for mixed-bit allocation (design §6.1): the criterion and measured errors.

`walk_fp_blocks` runs the calibration windows through the *unquantized* model layer by layer (the layer
walk of `llm1bit.quant.walk.layers`, with no quantization in between) and
yields every decoder layer with its linears' Hessians H = sum_s X_s^T X_s / n (float64). Each layer runs
with the keyword arguments the model passes to that very layer (`capture_layer_kwargs`: Gemma-2/3 global
layers have other masks and rotary embeddings than the sliding ones). Mixture-of-experts layers list each
expert slice of the fused experts weights (`model.layers.0.mlp.experts.down_proj.3`) as its own linear with
the Hessian from the tokens routed to it, as the quantize pipeline does.

`criterion` is the reference's score S_l = ||Z||_F * std(Z)^2 with Z = W / d (column j divided by
d_j), d = diag(chol(H^-1) upper) after the GPTQ fix-up (dead inputs, 1 % damping), all in float64,
no incoherence processing. The division of H by n only rescales every layer's d by the same factor,
so the ranking is that of the reference (which does not divide).

`measure_layers` computes the criterion of every linear and, for the layers asked for, at each
candidate width:
- the true reparameterization error (what the paper's criterion predicts and its Kendall tau is
  measured against): `QuantizedWeight.error` of `quantize_weight`, 1/2 tr((W - Q) H (W - Q)^T) in the
  layer's own output units (original basis, calibration Hessian; the same for every method and mode);
- the relative decoder-output error (`output_error`): what that quantized weight does to the residual
  stream, in units shared by all sublayers and blocks. The reparameterization error of a q_proj and of
  a down_proj are not comparable (on SmolLM2-135M its Kendall tau with the perplexity cost of the layer
  is 0.18); the output error's is 0.78. `output_gains` turns it into a per-layer factor.
Both use the FP model's Hessians and inputs (not the sequentially quantized inputs of a real run).

An expert slice with fewer routed tokens than inputs (`llm1bit.quant.hf.experts.needs_fallback`) is measured
the way the pipeline quantizes it: with the identity Hessian (`llm1bit.quant.numerics.column_solver.FALLBACK`), its error
against the routed Hessian it did get. Its criterion is that of its routed Hessian (0 for an expert never
routed to). `LayerSensitivity.fallback` marks it; the fits, gains and Kendall taus leave it out (its error
is not the Hessian quantizer's that the criterion predicts) and the report lists it."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from llm1bit.errors import UserError
from llm1bit.quant.numerics.methods import QuantSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

TINY = 1e-30  # floor of errors before taking logs


@dataclass
class LinearInfo:
    """One decoder linear of the FP model with its calibration Hessian."""

    name: str  # full module name, as `quantize --bits-config` expects
    block: int  # decoder layer index
    sublayer: str  # relative name inside the decoder layer, e.g. "self_attn.q_proj"
    weight: torch.Tensor  # (N, K) float32
    hessian: torch.Tensor  # (K, K) float64, sum X^T X / n_samples (expert slices: over their routed tokens)
    tokens: int | None = None  # expert slices: calibration tokens routed to the expert
    fallback: bool = False  # expert slices: too few tokens, quantized with the identity Hessian (FALLBACK)


@dataclass
class LayerSensitivity:
    name: str
    block: int
    sublayer: str
    shape: tuple[int, int]
    criterion: float
    errors: dict[int, float] = field(
        default_factory=dict
    )  # bits -> reparameterization error (1/2 tr(E H E^T), original units)
    output_errors: dict[int, float] = field(default_factory=dict)  # bits -> `output_error` (when measured)
    tokens: int | None = None  # expert slices: calibration tokens routed to the expert
    fallback: bool = False  # expert slices measured with the identity Hessian (pipeline FALLBACK)

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "block": self.block,
            "sublayer": self.sublayer,
            "shape": list(self.shape),
            "params": self.params,
            "criterion": self.criterion,
            "measured_errors": {str(b): e for b, e in sorted(self.errors.items())},
            "output_errors": {str(b): e for b, e in sorted(self.output_errors.items())},
            **({"tokens": self.tokens, "fallback": self.fallback} if self.tokens is not None else {}),
        }


def criterion(weight, hessian, percdamp: float = 0.01) -> float:
    """S = ||Z||_F * std(Z)^2, Z = W / d, d = diag(chol(H^-1) upper) after the GPTQ fix-up, float64."""
    import torch

    from llm1bit.quant.numerics.column_solver import gptq_fixup

    w_t = torch.as_tensor(weight).detach().to("cpu", torch.float64, copy=True)
    h_t = torch.as_tensor(hessian).detach().to("cpu", torch.float64, copy=True)
    gptq_fixup(w_t, h_t, percdamp)  # dead inputs: H_jj = 1, W[:, j] = 0; then the damping
    w = w_t.numpy()
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # small factorizations: pool workers only spin (see llm1bit.quant.numerics.column_solver)
    try:
        lower = torch.linalg.cholesky(h_t)
        upper = torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
    except RuntimeError as exc:  # torch.linalg.LinAlgError is a RuntimeError
        raise UserError(f"a Hessian is not positive definite even after damping ({exc})") from exc
    finally:
        torch.set_num_threads(threads)
    d = torch.diagonal(upper).numpy()
    z = w / d[None, :]
    return float(np.linalg.norm(z) * np.var(z, ddof=1))


@dataclass
class BlockInfo:
    """One decoder layer of the FP model after its calibration forward: what measuring errors needs."""

    index: int
    layer: nn.Module  # on the device
    inputs: torch.Tensor  # (n, seqlen, hidden) the layer's FP inputs
    outputs: torch.Tensor  # (n, seqlen, hidden) its FP outputs
    kwargs: dict  # the layer's other call arguments (masks, rotary embeddings)
    linears: list[LinearInfo]


def walk_fp_blocks(model: nn.Module, windows: torch.Tensor, device: str = "cpu") -> Iterator[BlockInfo]:
    """Every decoder layer of the FP model in order, with its linears' Hessians from `windows` (n, seqlen):
    the layer walk (`llm1bit.quant.walk.layers`) with no quantization in between, so the one forward per
    layer that gives the Hessians also gives the next layer's inputs. The yielded block is valid until the
    next step (its buffers are then reused)."""
    import torch

    from llm1bit.quant.device import check_device
    from llm1bit.quant.hf.experts import needs_fallback
    from llm1bit.quant.walk.layers import ExpertSlice, walk_layers

    for step in walk_layers(model, windows, check_device(device)):
        hessians = step.hessians()
        infos = []
        for rel, target in step.targets.items():
            if isinstance(
                target, ExpertSlice
            ):  # a copy: output_error swaps the fused tensor, never this view
                weight = target.weight.detach().to("cpu", torch.float32, copy=True)
            else:
                weight = target.weight.detach().to("cpu", torch.float32)
            count = step.tokens.get(rel)
            infos.append(
                LinearInfo(
                    name=f"{step.name}.{rel}",
                    block=step.index,
                    sublayer=rel,
                    weight=weight,
                    hessian=hessians.pop(rel).cpu(),
                    tokens=count,
                    fallback=count is not None and needs_fallback(count, weight.shape[1]),
                )
            )
        yield BlockInfo(step.index, step.layer, step.inputs, step.outputs, step.kwargs, infos)


@contextlib.contextmanager
def swapped_weight(layer: nn.Module, sublayer: str, weight: torch.Tensor) -> Iterator[None]:
    """`sublayer` of `layer` computes with `weight` inside the block: a linear's weight, or one expert's
    slice of a fused experts tensor ("mlp.experts.down_proj.3"; the fused tensor is swapped for a copy
    with that slice replaced, the original is never written to)."""
    head, _, tail = sublayer.rpartition(".")
    if tail.isdigit():  # expert slice: <experts module>.<fused parameter>.<expert>
        module_name, _, param_name = head.rpartition(".")
        param = getattr(layer.get_submodule(module_name), param_name)
        original = param.data
        replaced = original.clone()
        replaced[int(tail)] = weight.to(original.device, original.dtype)
    else:
        param = layer.get_submodule(sublayer).weight
        original = param.data
        replaced = weight.to(original.device, original.dtype)
    param.data = replaced
    try:
        yield
    finally:
        param.data = original


def output_error(block: BlockInfo, sublayer: str, weight: torch.Tensor, windows: int | None = None) -> float:
    """Relative error the decoder layer's output takes when linear `sublayer` has `weight` instead of its own:
    sum over tokens t of ||y_t' - y_t||^2 / ||y_t||^2 (y = the layer's FP output, the residual stream),
    averaged over the first `windows` calibration windows (all for None).

    Every later layer and the final norm read the residual stream through an RMSNorm, so an error counts
    relative to the token's residual norm (which spans orders of magnitude: attention-sink tokens); and
    errors of every sublayer are in the same units, those of q/k having passed through the softmax, v
    through o_proj, gate/up through down_proj. On SmolLM2-135M its Kendall tau with the perplexity
    increase of quantizing that one layer is 0.78, the solver's loss 0.18 (`scripts/bench_layer_nll.py`)."""
    import torch

    from llm1bit.quant.walk.layers import run_layer

    m = block.inputs.shape[0] if windows is None else max(1, min(windows, block.inputs.shape[0]))
    with swapped_weight(block.layer, sublayer, weight):
        out = run_layer(block.layer, block.inputs[:m], block.kwargs, torch.empty_like(block.inputs[:m]))
    reference = block.outputs[:m].to(torch.float64)
    diff = (out.to(torch.float64) - reference).square().sum(-1)
    norm = reference.square().sum(-1).clamp_min(torch.finfo(torch.float64).tiny)
    return float((diff / norm).sum()) / m


def quantize_layer(weight, hessian, spec: QuantSpec):
    """quantize_weight of `weight` with `spec` (H passed as float32, as the pipeline does): its QuantizedWeight,
    whose .error is 1/2 tr(E H E^T) in the layer's own units."""
    import torch

    from llm1bit.quant.numerics.column_solver import quantize_weight

    with torch.no_grad():
        return quantize_weight(weight, hessian.to(torch.float32), spec)


def quantize_info(info: LinearInfo, spec: QuantSpec):
    """`quantize_layer` of one linear as the pipeline quantizes it: an expert slice on the fallback with the
    identity Hessian, its .error then 1/2 tr(E H E^T) against the routed Hessian it did get."""
    if not info.fallback:
        return quantize_layer(info.weight, info.hessian, spec)
    from llm1bit.quant.numerics.column_solver import solve_fallback

    return solve_fallback(quantize_layer, info.weight, info.hessian, spec)


def measure_layers(
    model: nn.Module,
    windows: torch.Tensor,
    spec: QuantSpec,
    candidates: Sequence[int],
    measure: Callable[[int, LinearInfo], bool] | bool = True,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    output: bool = True,
    output_windows: int | None = 16,
) -> tuple[list[LayerSensitivity], dict[str, float]]:
    """Criterion of every decoder linear and, for the layers where `measure(position, info)` is true (all for
    True, none for False), the reparameterization error at each candidate width and, with `output`, the
    relative decoder-output error (`output_error` on the first `output_windows` windows). Returns the
    layers and timings."""
    specs = {b: spec.with_bits(b) for b in candidates}
    layers: list[LayerSensitivity] = []
    timings = {"walk_seconds": 0.0, "criterion_seconds": 0.0, "measure_seconds": 0.0, "output_seconds": 0.0}
    start = time.perf_counter()
    t_inner = 0.0
    position = 0
    for block in walk_fp_blocks(model, windows, device):
        for info in block.linears:
            t0 = time.perf_counter()
            layer = LayerSensitivity(
                info.name,
                info.block,
                info.sublayer,
                tuple(info.weight.shape),
                criterion(info.weight, info.hessian),
                tokens=info.tokens,
                fallback=info.fallback,
            )
            t1 = time.perf_counter()
            timings["criterion_seconds"] += t1 - t0
            wanted = measure(position, info) if callable(measure) else measure
            if wanted:
                if progress:
                    progress(f"measuring {info.name}")
                for b, s in specs.items():
                    quantized = quantize_info(info, s.for_module(info.name))
                    layer.errors[b] = float(quantized.error)
                    if output:
                        t2 = time.perf_counter()
                        layer.output_errors[b] = output_error(
                            block, info.sublayer, quantized.dequantize(), output_windows
                        )
                        timings["output_seconds"] += time.perf_counter() - t2
            timings["measure_seconds"] += time.perf_counter() - t1
            t_inner += time.perf_counter() - t0
            layers.append(layer)
            position += 1
    timings["walk_seconds"] = time.perf_counter() - start - t_inner
    return layers, timings


def output_gains(layers: Sequence[LayerSensitivity]) -> list[float]:
    """Each layer's gain from reparameterization error to relative decoder-output error: the geometric mean
    over its measured widths of output_error / error. A layer measured without output errors takes the
    log-linear interpolation over blocks of the measured layers of its sublayer (their geometric mean when
    none), so a `--fit-layers` subset still gives every layer a gain. All 1.0 when nothing has output errors.
    Expert slices on the fallback count as unmeasured (their error is not the Hessian quantizer's)."""
    logs: dict[int, float] = {}
    for i, layer in enumerate(layers):
        if layer.fallback:
            continue
        ratios = [
            math.log(max(layer.output_errors[b], TINY) / max(layer.errors[b], TINY))
            for b in layer.output_errors
            if b in layer.errors
        ]
        if ratios:
            logs[i] = sum(ratios) / len(ratios)
    if not logs:
        return [1.0] * len(layers)
    overall = sum(logs.values()) / len(logs)
    out = []
    for i, layer in enumerate(layers):
        if i in logs:
            out.append(math.exp(logs[i]))
            continue
        known = sorted((layers[j].block, v) for j, v in logs.items() if layers[j].sublayer == layer.sublayer)
        if not known:
            out.append(math.exp(overall))
            continue
        xs, ys = zip(*known, strict=True)
        out.append(math.exp(float(np.interp(layer.block, xs, ys))))
    return out


def measured_positions(total: int, count: int | None) -> set[int]:
    """`count` layer positions spread evenly over 0..total-1 (both ends included); all for None or >= total."""
    if count is None or count >= total:
        return set(range(total))
    if count < 1:
        return set()
    return {int(round(p)) for p in np.linspace(0, total - 1, count)}


def kendall_taus(
    layers: Sequence[LayerSensitivity],
    per_param: bool = False,
    predicted: dict[str, dict[int, float]] | None = None,
) -> dict[int, dict[str, float]]:
    """Kendall tau-b (scipy) between the criterion and the measured error at each width, over the measured
    layers; with `per_param`, the error divided by the layer's parameter count; with `predicted`
    ({name: {bits: predicted error}}), that width's predicted error instead of the criterion.
    {bits: {tau, pvalue, layers}}."""
    from scipy.stats import kendalltau

    widths = sorted({b for layer in layers for b in layer.errors})
    out = {}
    for b in widths:
        rows = [layer for layer in layers if b in layer.errors]
        crit = [predicted[layer.name][b] if predicted else layer.criterion for layer in rows]
        err = [layer.errors[b] / (layer.params if per_param else 1) for layer in rows]
        if len(rows) < 2:
            out[b] = {"tau": float("nan"), "pvalue": float("nan"), "layers": len(rows)}
            continue
        result = kendalltau(crit, err)
        out[b] = {"tau": float(result.statistic), "pvalue": float(result.pvalue), "layers": len(rows)}
    return out
