"""A lean decode step for Llama-family decoders (llama, mistral, qwen2): the model's own modules and weights,
called in a short loop of their own instead of through transformers' forward.

Why: at batch 1 a decode step reads every weight once, which the LUT kernel does at memory speed, but
transformers' forward adds ~0.3-0.9 ms of Python and small ops per decoder layer (mask building over the whole
static cache, cache bookkeeping, hooks): on SmolLM2-135M more than half of a token's time. This step does
what the layer does and nothing else:
  embedding row -> per layer: input norm (the model's module) -> q/k/v as one call -> rotary (cos / sin of
  every cache position computed once by the model's own rotary module) -> the new key and value written into a
  per-layer static cache -> attention of the new queries over the cache's filled positions
  (`scaled_dot_product_attention`, grouped heads) -> o_proj -> residual -> post-attention norm -> gate/up as
  one call -> act(gate) * up -> down_proj -> residual -> final norm -> lm_head on the last position.
q/k/v and gate/up are one call each (`Projection`): binary-coded lat layers the kernel serves go through one
`FusedLayers` call (the same bits as each layer alone); plain linears (the bf16 baseline) through one
`F.linear` on their weights concatenated once; anything else calls the layers one by one.

The logits equal the model's own forward up to bf16 rounding of a different summation order in the attention
(tests compare both on real models). Built for fixed weights: change the model and build a new step.
`unsupported(model)` says in one line why a model cannot use it (callers then use transformers' forward)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FAMILIES = ("llama", "mistral", "qwen2")
PROJECTIONS = ("qkv", "o", "gate_up", "down")


@dataclass
class StepOutput:
    logits: torch.Tensor  # (1, 1, vocab): the last position's


def unsupported(model: nn.Module, cache_len: int | None = None) -> str | None:
    """Why `LeanStep` cannot run `model` (one line), or None when it can."""
    from llm1bit.quant.hf.kernel import build

    config = model.config.get_text_config()
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        return f"its architecture is {kind}; the lean step runs {', '.join(FAMILIES)}"
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not all(hasattr(inner, name) for name in needed) or not hasattr(model, "lm_head"):
        return "its modules are not laid out as a Llama-family causal LM"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"its activation is {config.hidden_act}, the lean step runs silu"
    window = getattr(config, "sliding_window", None)
    slides = getattr(config, "use_sliding_window", True) and window is not None
    if slides and (cache_len is None or cache_len > window):
        return f"it attends through a sliding window of {window} positions"
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"} and slides:
        return f"its layers mix attention types {sorted(types)}"
    for layer in inner.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None:
            return "a decoder layer has no self_attn / mlp"
        names = ("q_proj", "k_proj", "v_proj", "o_proj")
        if not all(hasattr(attn, n) for n in names) or any(hasattr(attn, n) for n in ("q_norm", "k_norm")):
            return "its attention is not q/k/v/o projections alone"
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            return "its MLP is not gate/up/down projections"
    if inner.embed_tokens.weight.dtype != torch.bfloat16:
        return f"it computes in {inner.embed_tokens.weight.dtype}, the lean step in bfloat16"
    if build.load() is None:
        return build.unavailable_reason() or "the kernel's C library is not available here"
    return None


class Projection:
    """One call for several linears that read the same input (module docstring)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        from llm1bit.quant.hf.kernel import gemv
        from llm1bit.quant.hf.linear import QuantLinear

        self.modules = modules
        self.sizes = [m.out_features for m in modules]
        self.quantized = any(isinstance(m, QuantLinear) for m in modules)
        self.fused: Any = None
        self.weight = self.bias = None
        self.kind = "each"
        if all(isinstance(m, QuantLinear) for m in modules) and gemv.kernel_mode() != "dense":
            if all(gemv.layer_reason(m) is None for m in modules):
                prepared = [gemv.prepared_for(m) for m in modules]
                if gemv.fusable(prepared) is None:
                    self.fused = gemv.FusedLayers(prepared, [m.bias for m in modules])
                    self.kind = "lut"
        elif all(isinstance(m, nn.Linear) for m in modules) and len(modules) > 1:  # GemvLinear too
            if len({m.weight.dtype for m in modules}) == 1:
                self.weight = torch.cat([m.weight.detach() for m in modules])
                if any(m.bias is not None for m in modules):
                    self.bias = torch.cat(
                        [
                            m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                            for m in modules
                        ]
                    )
                self.kind = "cat"

    def __call__(self, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
        from llm1bit.quant.hf.kernel.gemv import MAX_FUSED_ROWS

        if self.fused is not None and x.numel() <= MAX_FUSED_ROWS * x.shape[-1]:
            return self.fused(x, threads)
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        outs = [m(x) for m in self.modules]
        return outs[0] if len(outs) == 1 else torch.cat(outs, -1)


class RMSNorm:
    """The model's RMSNorm (weight * (x / rms(x)) in fp32, rounded to x's dtype, then times the weight) in three
    ops: `F.rms_norm` gave the same bits as the module's six on every row tried (the prompt path; the token
    path uses the C norm)."""

    def __init__(self, module: nn.Module) -> None:
        self.weight = module.weight.detach()
        self.eps = getattr(module, "variance_epsilon", None) or module.eps
        self.shape = (self.weight.shape[0],)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), self.shape, eps=self.eps).to(x.dtype)


class _Layer:
    """A decoder layer's parts as the lean step uses them."""

    def __init__(self, layer: nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1, self.norm2 = RMSNorm(layer.input_layernorm), RMSNorm(layer.post_attention_layernorm)
        self.qkv = Projection([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o = Projection([attn.o_proj])
        self.gate_up = Projection([mlp.gate_proj, mlp.up_proj])
        self.down = Projection([mlp.down_proj])
        self.act = mlp.act_fn
        self.scaling = attn.scaling
        self.ffn = mlp.gate_proj.out_features


class LeanStep:
    """The decode step of `llm1bit bench`'s loop (`DecodeStep`'s interface: new_cache, prefill, decode)."""

    loop = "lean"
    compile_s = None
    note = None
    SPIN_US = 1000  # the kernel's helpers poll this long between calls while a step runs (`pool_spin_us`)

    def __init__(self, model: nn.Module, cache_len: int, threads: int | None = None) -> None:
        from llm1bit.quant.hf.kernel import build

        reason = unsupported(model, cache_len)
        if reason is not None:
            raise ValueError(f"the lean decode step cannot run this model: {reason}")
        lib = build.load()
        assert lib is not None  # unsupported() checked it
        self.c = lib.lib
        config = model.config.get_text_config()
        inner = model.model
        self.model, self.cache_len = model, cache_len
        self.embed, self.norm, self.lm_head = inner.embed_tokens, RMSNorm(inner.norm), model.lm_head
        self.dtype = torch.bfloat16
        self.hidden = config.hidden_size
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = inner.layers[0].self_attn.head_dim
        self.layers = [_Layer(layer) for layer in inner.layers]
        probe = torch.zeros(1, 1, self.head_dim, dtype=self.dtype)
        cos, sin = inner.rotary_emb(probe, torch.arange(cache_len)[None])
        half = self.head_dim // 2
        signs = torch.cat((-torch.ones(half), torch.ones(self.head_dim - half))).to(sin.dtype)
        # rotate_half(x) * sin = roll(x, half) * (signs * sin): the sign flip is exact
        self.cos_rows, self.sin_rows = cos[0].contiguous(), (sin * signs)[0].contiguous()  # (positions, dim)
        self.cos, self.sin = self.cos_rows[None, None], self.sin_rows[None, None]
        self.threads = threads or torch.get_num_threads()  # the decode step's kernels
        # time_breakdown's: seconds in the quantized linears and in the others (lm_head, a baseline's)
        self.timer: dict[str, float] | None = None
        one = (1, 1)
        self.h = torch.empty(*one, self.hidden, dtype=self.dtype)  # the residual stream of the token
        self.x = torch.empty(*one, self.hidden, dtype=self.dtype)  # its normalised copy, a projection's input
        self.attn = torch.empty(*one, self.heads * self.head_dim, dtype=self.dtype)
        self.act = torch.empty(*one, max(layer.ffn for layer in self.layers), dtype=self.dtype)
        # each projection's output row (shared by the layers: consumed before the next layer runs), and for
        # the kernel's projections the call itself, every argument bound (`FusedLayers.bind`)
        self.outputs = {
            name: torch.empty(max(sum(getattr(layer, name).sizes) for layer in self.layers), dtype=self.dtype)
            for name in PROJECTIONS
        }
        self.calls = [{name: self._bind(layer, name) for name in PROJECTIONS} for layer in self.layers]

    def _bind(self, layer: _Layer, name: str) -> tuple[Any, int] | None:
        """(the bound kernel call, its output's address) for a projection the kernel serves, else None."""
        projection = getattr(layer, name)
        if projection.fused is None:
            return None
        source = {"qkv": self.x, "o": self.attn, "gate_up": self.x, "down": self.act[..., : layer.ffn]}[name]
        out = self.outputs[name][: projection.fused.n]
        return projection.fused.bind(source, out, self.threads), out.data_ptr()

    @property
    def kernels(self) -> list[str]:
        """How each projection runs: lut (one fused kernel call), cat (one matmul), each (layer by layer)."""
        return [p.kind for layer in self.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]

    def new_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (1, self.kv_heads, self.cache_len, self.head_dim)
        return [
            (torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype)) for _ in self.layers
        ]

    def prefill(self, ids: torch.Tensor, cache: list) -> StepOutput:
        return self.forward(ids, cache, 0)

    def decode(self, token: torch.Tensor, cache: list, start: int) -> StepOutput:
        return self.forward(token, cache, start)

    def forward(self, ids: torch.Tensor, cache: list, start: int) -> StepOutput:
        """Logits of the last of `ids` (1, T) at positions start..start+T-1: one token through the C glue, a
        prompt (T > 1, from position 0 only) through torch ops."""
        tokens = ids.shape[1]
        if ids.shape[0] != 1 or start + tokens > self.cache_len or (tokens > 1 and start != 0):
            raise ValueError(
                f"the lean step takes one sequence, a prompt from position 0 or one token at a time within "
                f"{self.cache_len} positions (got {tuple(ids.shape)} at {start})"
            )
        if tokens > 1:
            return self._prompt(ids, cache)
        before = self.c.llm1bit_pool_spin_us(self.SPIN_US)
        try:
            return self._token(ids, cache, start)
        finally:
            self.c.llm1bit_pool_spin_us(before)

    def _project(self, projection: Projection, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
        if self.timer is None:
            return projection(x, threads)
        t = time.perf_counter()
        y = projection(x, threads)
        key = "quantized_linears" if projection.quantized else "other_linears"
        self.timer[key] += time.perf_counter() - t
        return y

    def _lm_head(self, x: torch.Tensor) -> torch.Tensor:
        """lm_head on the token's row: the C bf16 GEMV for a `GemvLinear` (its fp32 output and bias rounded to
        bf16 in C, as `bf16_linear` does in torch), else the module."""
        from llm1bit.quant.hf.kernel import bf16

        head = self.lm_head
        if not (isinstance(head, bf16.GemvLinear) and bf16.takes_c_path(head.weight, x)):
            return head(x)
        y = bf16.gemv_bf16(x, head.weight, self.threads)
        out = torch.empty(1, 1, head.out_features, dtype=self.dtype)
        bias = None if head.bias is None else head.bias.detach().float().contiguous()
        _ok(
            self.c.llm1bit_f32_bias_to_bf16(
                y.data_ptr(), None if bias is None else bias.data_ptr(), y.numel(), out.data_ptr()
            )
        )
        return out

    def _run(self, layer: _Layer, calls: dict, name: str, x: torch.Tensor) -> int:
        """Run one projection of the token; the address of its output row."""
        bound = calls[name]
        timer = self.timer
        t = time.perf_counter() if timer is not None else 0.0
        if bound is not None:
            _ok(bound[0]())
            ptr = bound[1]
        else:
            y = getattr(layer, name)(x, self.threads).contiguous()
            self._keep = y  # alive until the glue has read it
            ptr = y.data_ptr()
        if timer is not None:
            key = "quantized_linears" if getattr(layer, name).quantized else "other_linears"
            timer[key] += time.perf_counter() - t
        return ptr

    def _token(self, token: torch.Tensor, cache: list, pos: int) -> StepOutput:
        c, h, x, attn, act = self.c, self.h, self.x, self.attn, self.act
        hp, xp, ap = h.data_ptr(), x.data_ptr(), attn.data_ptr()
        row = 2 * self.head_dim * pos  # bytes into the cos / sin tables
        cos, sin = self.cos_rows.data_ptr() + row, self.sin_rows.data_ptr() + row
        h.copy_(self.embed(token))
        norm = self.layers[0].norm1
        _ok(c.llm1bit_add_rmsnorm_bf16(hp, None, norm.weight.data_ptr(), norm.eps, self.hidden, xp))
        last = len(self.layers) - 1
        for i, (layer, calls, (k_cache, v_cache)) in enumerate(
            zip(self.layers, self.calls, cache, strict=True)
        ):
            qkv = self._run(layer, calls, "qkv", x)
            _ok(
                c.llm1bit_attn_decode_bf16(
                    qkv,
                    cos,
                    sin,
                    k_cache.data_ptr(),
                    v_cache.data_ptr(),
                    self.cache_len,
                    pos,
                    self.heads,
                    self.kv_heads,
                    self.head_dim,
                    layer.scaling,
                    ap,
                )
            )
            o = self._run(layer, calls, "o", attn)
            norm = layer.norm2
            _ok(c.llm1bit_add_rmsnorm_bf16(hp, o, norm.weight.data_ptr(), norm.eps, self.hidden, xp))
            gate_up = self._run(layer, calls, "gate_up", x)
            hidden = act[..., : layer.ffn]
            _ok(c.llm1bit_silu_mul_bf16(gate_up, layer.ffn, hidden.data_ptr()))
            down = self._run(layer, calls, "down", hidden)
            norm = self.layers[i + 1].norm1 if i < last else self.norm
            _ok(c.llm1bit_add_rmsnorm_bf16(hp, down, norm.weight.data_ptr(), norm.eps, self.hidden, xp))
        if self.timer is None:
            return StepOutput(self._lm_head(x))
        t = time.perf_counter()
        logits = self._lm_head(x)
        self.timer["other_linears"] += time.perf_counter() - t
        return StepOutput(logits)

    def _prompt(self, ids: torch.Tensor, cache: list) -> StepOutput:
        """The prompt through torch ops (once per sequence): the same computation, causal attention."""
        tokens = ids.shape[1]
        heads, kv, dim = self.heads, self.kv_heads, self.head_dim
        cos, sin = self.cos[:, :, :tokens], self.sin[:, :, :tokens]
        h = self.embed(ids)
        for layer, (k_cache, v_cache) in zip(self.layers, cache, strict=True):
            qkv = self._project(layer.qkv, layer.norm1(h))
            qk = qkv[..., : (heads + kv) * dim].view(1, tokens, heads + kv, dim).transpose(1, 2)
            qk = qk * cos + torch.roll(qk, dim // 2, -1) * sin
            k_cache[:, :, :tokens] = qk[:, heads:]
            v_cache[:, :, :tokens] = qkv[..., (heads + kv) * dim :].view(1, tokens, kv, dim).transpose(1, 2)
            a = F.scaled_dot_product_attention(
                qk[:, :heads],
                k_cache[:, :, :tokens],
                v_cache[:, :, :tokens],
                is_causal=True,
                scale=layer.scaling,
                enable_gqa=kv != heads,
            )
            h = h + self._project(layer.o, a.transpose(1, 2).reshape(1, tokens, heads * dim))
            gate_up = self._project(layer.gate_up, layer.norm2(h))
            h = h + self._project(
                layer.down, layer.act(gate_up[..., : layer.ffn]) * gate_up[..., layer.ffn :]
            )
        return StepOutput(self.lm_head(self.norm(h[:, -1:])))


def _ok(rc: int) -> None:
    if rc == -2:
        raise MemoryError("the decode step's C helpers could not allocate their buffers")
    if rc != 0:
        raise RuntimeError(f"the decode step's C helpers refused the call (code {rc})")
