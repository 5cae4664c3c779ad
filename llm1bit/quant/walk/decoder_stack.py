"""Find a model's decoder layers and the linear layers inside them that get quantized.

The layout is read from the module structure: the decoder stack is the `nn.ModuleList` of
`config.num_hidden_layers` identical layers, and each layer's `nn.Linear` children must form one of the
layouts of `llm1bit.format.hf_names` (OPT, LLaMA-style incl. Gemma-2/3, Phi-3's fused qkv / gate_up, and
Mixtral / Qwen2-MoE / Qwen3-MoE with their fused experts, see `llm1bit.quant.hf.experts`); anything else is
refused with a message naming what was found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm1bit.errors import UserError
from llm1bit.format.hf_names import LAYOUT_LINEARS, MOE_LAYOUTS

if TYPE_CHECKING:
    from torch import nn


@dataclass
class DecoderStack:
    """Where the decoder layers live and which linears of each layer are quantized."""

    prefix: str  # module name of the ModuleList, e.g. "model.layers" or "model.decoder.layers"
    layers: nn.ModuleList
    layout: str  # a key of LAYOUT_LINEARS ("a+b" when the layers differ, e.g. Qwen2-MoE's mlp_only_layers)
    linears: tuple[str, ...]  # relative names inside layer 0 (expert slices "mlp.experts.down_proj.3")
    per_layer: tuple[tuple[str, ...], ...] = ()  # every layer's names; empty: all as `linears`
    experts: tuple[tuple[str, ...], ...] = ()  # per layer: relative names of its fused-experts modules

    def layer_name(self, index: int) -> str:
        return f"{self.prefix}.{index}"

    def layer_linears(self, index: int) -> tuple[str, ...]:
        return self.per_layer[index] if self.per_layer else self.linears

    def layer_experts(self, index: int) -> tuple[str, ...]:
        """Relative names of layer `index`'s experts modules (fused or already `QuantExperts`)."""
        return self.experts[index] if self.experts else ()

    def module_names(self) -> list[str]:
        """Full module names of every quantizable linear (and expert slice), layer by layer."""
        return [f"{self.prefix}.{i}.{rel}" for i in range(len(self.layers)) for rel in self.layer_linears(i)]


def _layer_linears(layer: nn.Module, linear: tuple[type, ...]) -> tuple[list[str], list[str], list[str]]:
    """(dense linear names, experts module names, expert slice names) of one decoder layer.

    Experts modules are fused transformers experts or `QuantExperts`; the direct nn.Linear children of a
    block that holds experts (the router `gate` when it is an nn.Linear, Qwen2-MoE's 1-output
    `shared_expert_gate`) are routing and keep their precision; custom router modules are not linears."""
    from llm1bit.quant.hf.experts import (
        QuantExperts,
        is_fused_experts,
        looks_like_experts,
        slice_names,
        unsupported_experts,
    )

    experts, slices = [], []
    for name, mod in layer.named_modules():
        if isinstance(mod, QuantExperts) or is_fused_experts(mod):
            experts.append(name)
            slices.extend(f"{name}.{s}" for s in slice_names(mod))
        elif looks_like_experts(mod):
            raise UserError(
                f"unsupported mixture-of-experts module {name} ({type(mod).__name__}): {unsupported_experts(mod)}"
            )
    routers = {
        f"{parent}.{child}" if parent else child
        for parent in (name.rpartition(".")[0] for name in experts)
        for child, mod in (layer.get_submodule(parent) if parent else layer).named_children()
        if isinstance(mod, linear)
    }
    inside = tuple(f"{name}." for name in experts)
    dense = [
        n
        for n, m in layer.named_modules()
        if isinstance(m, linear) and n not in routers and not n.startswith(inside)
    ]
    return dense, experts, slices


def find_decoder_stack(model: nn.Module) -> DecoderStack:
    """Locate the decoder layers and check their linear layers (or `QuantLinear`s) against the known layouts.

    Mixture-of-experts layers (Mixtral, Qwen2-MoE, Qwen3-MoE) list each expert's slices of the fused
    experts weights as their own linears, after the layout's dense linears."""
    from torch import nn

    from llm1bit.quant.hf.linear import QuantLinear

    linear = (nn.Linear, QuantLinear)

    n_layers = getattr(model.config, "num_hidden_layers", None)
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList)
        and len(mod) > 0
        and (n_layers is None or len(mod) == n_layers)
        and len({type(m) for m in mod}) == 1
        and any(isinstance(m, linear) for m in mod[0].modules())
    ]
    if len(candidates) != 1:
        found = ", ".join(n for n, _ in candidates) or "none"
        raise UserError(
            f"cannot find the decoder layers of {type(model).__name__}: expected one list of "
            f"{n_layers} identical layers, found {found}"
        )
    prefix, layers = candidates[0]
    layouts, per_layer, experts = [], [], []
    for i, layer in enumerate(layers):
        dense, layer_experts, slices = _layer_linears(layer, linear)
        layout = next(
            (
                name
                for name in LAYOUT_LINEARS
                if set(dense) == set(LAYOUT_LINEARS[name]) and (name in MOE_LAYOUTS) == bool(layer_experts)
            ),
            None,
        )
        if layout is None:
            if i:
                raise UserError(f"decoder layer {i} of {type(model).__name__} has linears {sorted(dense)}")
            extra = f" and experts {', '.join(layer_experts)}" if layer_experts else ""
            raise UserError(
                f"unsupported layer structure in {type(model).__name__}: linear layers {', '.join(dense)}"
                f"{extra}; supported: OPT ({', '.join(LAYOUT_LINEARS['opt'])}), LLaMA-style "
                f"({', '.join(LAYOUT_LINEARS['llama'])}), Phi-3 ({', '.join(LAYOUT_LINEARS['phi3'])}) and "
                "Mixtral / Qwen-MoE experts"
            )
        layouts.append(layout)
        per_layer.append(LAYOUT_LINEARS[layout] + tuple(slices))
        experts.append(tuple(layer_experts))
    kinds = list(dict.fromkeys(layouts))
    uniform = len(set(per_layer)) == 1
    return DecoderStack(
        prefix=prefix,
        layers=layers,
        layout="+".join(kinds),
        linears=per_layer[0],
        per_layer=() if uniform else tuple(per_layer),
        experts=tuple(experts) if any(experts) else (),
    )
