"""Mixture-of-experts layers: fused expert weights quantized one expert at a time.

In transformers 5 the experts of Mixtral, Qwen2-MoE and Qwen3-MoE live in one module (`MixtralExperts`,
`Qwen2MoeExperts`, `Qwen3MoeExperts`, all `@use_experts_implementation`) holding two 3-D parameters,
`gate_up_proj` [E, 2·ff, d] (gate rows first, then up rows) and `down_proj` [E, d, ff], and called as
`experts(hidden_states [T, d], top_k_index [T, k], top_k_weights [T, k])`. Each expert's slice is its
own matrix: it sees only the tokens the router sends it, so it gets its own Hessian from those tokens
(`ExpertHessians`) and its own codes. The quantized module is a `QuantExperts` whose `gate_up_proj` /
`down_proj` are `nn.ModuleList`s of `QuantLinear`, one per expert, so every slice has a module name
(`model.layers.0.mlp.experts.gate_up_proj.3`) that the checkpoint stores and `--bits-config` names.

The router (`mlp.gate`) and the norms are not touched. Only the layout above is supported (concatenated
gate/up, not transposed, no bias, no post-expert norm); `unsupported_experts` says why another is not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from llm1bit.errors import UserError

if TYPE_CHECKING:
    from llm1bit.quant.hf.linear import QuantLinear

PROJECTIONS = ("gate_up_proj", "down_proj")


def _fused_params(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    gate_up = getattr(module, "gate_up_proj", None)
    down = getattr(module, "down_proj", None)
    if (
        isinstance(gate_up, torch.Tensor)
        and isinstance(down, torch.Tensor)
        and gate_up.ndim == down.ndim == 3
    ):
        return gate_up, down
    return None


def looks_like_experts(module: nn.Module) -> bool:
    """A module holding 3-D expert weights directly (supported layout or not)."""
    return any(p.ndim == 3 for p in module.parameters(recurse=False))


def unsupported_experts(module: nn.Module) -> str | None:
    """Why a module with 3-D expert weights cannot be quantized here, or None when it can."""
    params = _fused_params(module)
    if params is None:
        names = [n for n, p in module.named_parameters(recurse=False) if p.ndim == 3]
        return f"3-D expert weights {', '.join(names)} (expected gate_up_proj and down_proj)"
    gate_up, down = params
    flags = {"has_bias": False, "is_transposed": False, "is_concatenated": True, "has_gate": True}
    flags["has_post_expert_norm"] = False
    wrong = [f"{k}={getattr(module, k)}" for k, v in flags.items() if getattr(module, k, v) != v]
    if wrong:
        return f"experts layout {', '.join(wrong)}"
    e, two_ff, d = gate_up.shape
    if down.shape != (e, d, two_ff // 2) or two_ff % 2:
        return f"expert shapes gate_up_proj {list(gate_up.shape)}, down_proj {list(down.shape)}"
    if getattr(module, "num_experts", e) != e or not callable(getattr(module, "act_fn", None)):
        return "experts without num_experts / act_fn"
    return None


def is_fused_experts(module: nn.Module) -> bool:
    """A transformers experts module (Mixtral / Qwen2-MoE / Qwen3-MoE style) this package can quantize."""
    return (
        not isinstance(module, QuantExperts)
        and _fused_params(module) is not None
        and (unsupported_experts(module) is None)
    )


def expert_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Relative slice name ("gate_up_proj.3") -> that expert's (out, in) weight, a view of the fused tensor."""
    gate_up, down = _fused_params(module)
    out = {f"gate_up_proj.{e}": gate_up[e] for e in range(gate_up.shape[0])}
    out.update({f"down_proj.{e}": down[e] for e in range(down.shape[0])})
    return out


def slice_names(module: nn.Module) -> tuple[str, ...]:
    """Relative names of the expert slices of a fused or quantized experts module, by projection then expert."""
    n = module.num_experts if isinstance(module, QuantExperts) else _fused_params(module)[0].shape[0]
    return tuple(f"{proj}.{e}" for proj in PROJECTIONS for e in range(n))


class QuantExperts(nn.Module):
    """The experts of one MoE block computing through per-expert `QuantLinear`s.

    Same call and math as the transformers experts module it replaces (its eager forward): for every
    expert that the router picked for some token, act(gate)·up of those tokens, then down, weighted by
    the routing weights and summed into the output with `index_add_`."""

    def __init__(self, like: nn.Module, gate_up: Sequence[QuantLinear], down: Sequence[QuantLinear]) -> None:
        super().__init__()
        if len(gate_up) != len(down):
            raise ValueError(f"{len(gate_up)} gate_up_proj and {len(down)} down_proj experts")
        self.num_experts = len(gate_up)
        self.hidden_dim = gate_up[0].in_features
        self.intermediate_dim = down[0].in_features
        self.act_fn = like.act_fn
        self.gate_up_proj = nn.ModuleList(gate_up)
        self.down_proj = nn.ModuleList(down)

    @classmethod
    def shell(
        cls, experts_module: nn.Module, metas: dict[str, dict[str, Any]], dtype: torch.dtype
    ) -> QuantExperts:
        """Empty per-expert `QuantLinear` shells for reloading: `metas` maps relative names ("gate_up_proj.3")
        to their quantization_config module entries; every slice of `experts_module` must be there."""
        from llm1bit.quant.hf.linear import QuantLinear

        names = slice_names(experts_module)
        missing = [n for n in names if n not in metas]
        extra = sorted(set(metas) - set(names))
        if missing or extra:
            what = f"missing {', '.join(missing[:4])}" if missing else f"unknown {', '.join(extra[:4])}"
            raise UserError(f"quantization_config does not match the experts module ({what})")
        linears = {n: QuantLinear.shell(metas[n], bias=False, dtype=dtype) for n in names}
        e = len(names) // 2
        return cls(
            experts_module,
            [linears[f"gate_up_proj.{i}"] for i in range(e)],
            [linears[f"down_proj.{i}"] for i in range(e)],
        )

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        final_hidden_states = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
            expert_mask = expert_mask.permute(2, 1, 0)
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit:
            expert_idx = int(expert_idx[0])
            if expert_idx == self.num_experts:
                continue
            top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
            current_state = hidden_states[token_idx]
            gate, up = self.gate_up_proj[expert_idx](current_state).chunk(2, dim=-1)
            current = self.down_proj[expert_idx](self.act_fn(gate) * up)
            current = current * top_k_weights[token_idx, top_k_pos, None]
            final_hidden_states.index_add_(0, token_idx, current.to(final_hidden_states.dtype))
        return final_hidden_states

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden_dim={self.hidden_dim}, intermediate_dim={self.intermediate_dim}"


class ExpertHessians:
    """Per-expert H = sum X^T X over the tokens routed to each expert, from a forward pre-hook.

    The hook reads the experts module's inputs (hidden states and the router's `top_k_index`); for
    expert e, gate_up_proj.e sees the hidden states of its tokens and down_proj.e sees act(gate)·up of
    them, recomputed here with the module's own (unquantized) weights in the activation dtype, so the
    hook works whatever experts implementation (eager, grouped_mm) the forward itself uses. Products
    are taken and summed in float32, as for the dense linears; `tokens[e]` counts the tokens routed to
    e (they sum to tokens × top_k, over all experts whichever are recorded).

    `experts` names the experts whose Hessians are recorded (all by default): the pipeline records a
    bounded group at a time, so an MoE layer holds group size × one expert's float32 Hessians (a
    Mixtral-8x7B down_proj expert: 14336² × 4 bytes = 0.82 GB; all eight in float64 were 13 GB)."""

    def __init__(self, module: nn.Module, experts: Sequence[int] | None = None) -> None:
        self.module = module
        gate_up, down = _fused_params(module)
        self.n = gate_up.shape[0]
        self.experts = list(range(self.n)) if experts is None else sorted(set(experts))
        if any(not 0 <= e < self.n for e in self.experts):
            raise ValueError(f"experts {self.experts} out of range for {self.n} experts")
        self.sums: dict[str, torch.Tensor | None] = {
            f"{proj}.{e}": None for proj in PROJECTIONS for e in self.experts
        }
        self.tokens = [0] * self.n
        self.calls = 0

    def hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        index = args[1] if len(args) > 1 else kwargs["top_k_index"]
        gate_up, _ = _fused_params(module)
        x = hidden.reshape(-1, hidden.shape[-1])
        index = index.reshape(x.shape[0], -1)
        self.calls += 1
        counts = torch.bincount(index.reshape(-1), minlength=self.n)[: self.n].tolist()
        for e in range(self.n):
            self.tokens[e] += int(counts[e])
        for e in self.experts:
            if not counts[e]:
                continue
            token_idx = torch.where(index == e)[0]
            xe = x[token_idx]
            gate, up = nn.functional.linear(xe, gate_up[e].to(xe.dtype)).chunk(2, dim=-1)
            self._add(f"gate_up_proj.{e}", xe)
            self._add(f"down_proj.{e}", module.act_fn(gate) * up)

    def _add(self, name: str, x: torch.Tensor) -> None:
        xf = x.to(torch.float32)
        with torch.autocast(xf.device.type, enabled=False):
            if self.sums[name] is None:
                self.sums[name] = xf.T @ xf
            else:
                self.sums[name].addmm_(xf.T, xf)

    def register(self):
        return self.module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hessians(self) -> dict[str, torch.Tensor]:
        """H / number of forward calls (the dense linears' units), float32; zeros for an expert never routed
        to. The sums are handed over (not copied) and the recorder forgets them."""
        weights = expert_weights(self.module)
        out = {}
        for name in list(self.sums):
            acc = self.sums.pop(name)
            k = weights[name].shape[1]
            device = weights[name].device
            out[name] = (
                acc.div_(max(self.calls, 1))
                if acc is not None
                else torch.zeros((k, k), dtype=torch.float32, device=device)
            )
        return out

    def slice_tokens(self) -> dict[str, int]:
        return {
            f"{proj}.{e}": self.tokens[e] for proj in PROJECTIONS for e in range(self.n) if e in self.experts
        }


def needs_fallback(tokens: int, in_features: int) -> bool:
    """An expert slice whose Hessian from its routed tokens is rank-deficient: fewer tokens than inputs.

    Such a slice (and one that got no token at all, H = 0) is quantized with the identity Hessian, which
    through the same solver is round-to-nearest on the same grid and format (no error feedback: H^-1 is
    diagonal), and its error is reported against the Hessian it did get, 1/2 tr(E H E^T). Why not more
    damping: with n < K tokens H has a null space of dimension >= K - n, and GPTQ / ShiftAddLLM error
    feedback moves each column's rounding error into exactly those unseen directions. That is optimal for
    the few calibration tokens and arbitrary for every other token the expert will see; damping only
    bounds the overfit by an arbitrary amount, and with H = 0 there is nothing to damp. Round-to-nearest
    is the unbiased baseline the Hessian methods improve on when they have the data."""
    return tokens < in_features
