"""Mixture-of-experts layers (Mixtral, Qwen3-MoE, Qwen2-MoE): every expert slice is quantized with a
Hessian from its routed tokens, starved experts take the identity-Hessian fallback, the router and norms
keep their precision, and a saved folder reloads to the same logits."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm1bit.errors import UserError
from llm1bit.quant.hf.checkpoint import load_quantized, save_quantized
from llm1bit.quant.hf.experts import ExpertHessians, QuantExperts, is_fused_experts
from llm1bit.quant.hf.linear import QuantLinear
from llm1bit.quant.numerics.column_solver import FALLBACK, quantize_weight
from llm1bit.quant.numerics.methods import QuantSpec
from llm1bit.quant.numerics.uniform import rtn
from llm1bit.quant.quantize import quantize_model, resolve_bits, summary_table
from llm1bit.quant.walk.decoder_stack import find_decoder_stack

VOCAB, SEQLEN, NSAMPLES, TOP_K = 96, 32, 8, 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/quant/conftest.py


def tiny(kind: str):
    """A 2-layer MoE model of a real transformers class, 4 experts, top-2; expert 3 of layer 0 never routed to.

    Channel 0 of every embedding is a positive constant and o_proj writes nothing into it, so the input
    of layer 0's router has a positive channel 0; a large negative router weight there starves expert 3."""
    from transformers import AutoModelForCausalLM, MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

    common = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        num_experts_per_tok=TOP_K,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if kind == "mixtral":
        config = MixtralConfig(**common, intermediate_size=64, num_local_experts=4)
    elif kind == "qwen3_moe":
        config = Qwen3MoeConfig(
            **common, intermediate_size=64, moe_intermediate_size=48, num_experts=4, head_dim=8
        )
    else:
        config = Qwen2MoeConfig(
            **common,
            intermediate_size=64,
            moe_intermediate_size=48,
            shared_expert_intermediate_size=64,
            num_experts=4,
        )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 0.05
        model.model.layers[0].self_attn.o_proj.weight[0] = 0.0
        router = model.model.layers[0].mlp.gate.weight
        if kind != "mixtral":  # Qwen routers start at zero
            router.normal_(0, 0.02)
            model.model.layers[1].mlp.gate.weight.normal_(0, 0.02)
        router[3] = 0.0
        router[3, 0] = -50.0
    return model


def windows(n: int = NSAMPLES, seqlen: int = SEQLEN) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(0))


def kept(model) -> dict[str, torch.Tensor]:
    """Everything that must keep its precision: routers and norms."""
    return {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if "norm" in name or ".mlp.gate." in name or "shared_expert_gate" in name
    }


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe", "qwen2_moe"])
def test_stack_lists_every_expert_slice(kind) -> None:
    model = tiny(kind)
    stack = find_decoder_stack(model)
    assert stack.layout == ("moe-shared" if kind == "qwen2_moe" else "moe")
    assert stack.layer_experts(0) == ("mlp.experts",)
    assert is_fused_experts(model.model.layers[0].mlp.experts)
    slices = [f"mlp.experts.{p}.{e}" for p in ("gate_up_proj", "down_proj") for e in range(4)]
    assert list(stack.linears[-8:]) == slices
    assert not any(n.endswith((".gate", "shared_expert_gate")) for n in stack.linears)
    if kind == "qwen2_moe":
        assert "mlp.shared_expert.down_proj" in stack.linears
    assert "model.layers.1.mlp.experts.down_proj.3" in stack.module_names()


def test_expert_hessians_from_routed_tokens() -> None:
    model = tiny("mixtral")
    experts = model.model.layers[0].mlp.experts
    recorder = ExpertHessians(experts)
    x = torch.randn(20, 32)
    index = torch.stack([torch.arange(20) % 4, (torch.arange(20) + 1) % 4], dim=1)
    index[index == 3] = 0  # expert 3 never, expert 0 twice as often
    index[:, 1] = torch.where(index[:, 0] == index[:, 1], (index[:, 0] + 2) % 3, index[:, 1])
    handle = recorder.register()
    with torch.no_grad():
        experts(x, index, torch.full((20, 2), 0.5))
    handle.remove()
    assert sum(recorder.tokens) == 20 * 2 and recorder.tokens[3] == 0
    hessians = recorder.hessians()
    mine = x[(index == 1).any(dim=1)]
    # float32 sums (issue 22; they were float64)
    torch.testing.assert_close(hessians["gate_up_proj.1"], mine.T @ mine)
    gate, up = (mine @ experts.gate_up_proj[1].detach().T).chunk(2, dim=-1)
    act = torch.nn.functional.silu(gate) * up
    torch.testing.assert_close(hessians["down_proj.1"], act.T @ act, rtol=1e-5, atol=1e-6)
    assert not hessians["down_proj.3"].any()
    # a group of experts records only its own slices, and counts every expert's tokens
    group = ExpertHessians(experts, [1, 2])
    handle = group.register()
    with torch.no_grad():
        experts(x, index, torch.full((20, 2), 0.5))
    handle.remove()
    assert group.tokens == recorder.tokens
    assert set(group.slice_tokens()) == {"gate_up_proj.1", "gate_up_proj.2", "down_proj.1", "down_proj.2"}
    assert torch.equal(group.hessians()["down_proj.1"], hessians["down_proj.1"])


def _tiny_mixtral_8():
    """tiny("mixtral") with 8 experts per layer."""
    from transformers import MixtralConfig

    config = MixtralConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        num_experts_per_tok=TOP_K,
        intermediate_size=64,
        num_local_experts=8,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("group", [1, 2, 3])
def test_expert_hessians_in_bounded_groups(group: int, monkeypatch) -> None:
    """Expert Hessians held a group at a time: at most `group` experts' float32 Hessians are alive at any
    moment (measured through weak references to every sum), and the codes equal those of one group of all
    experts bit for bit (the later groups' forwards see the same unquantized layer)."""
    import weakref

    alive: list[weakref.ref] = []
    peak = [0]
    original_add = ExpertHessians._add

    def held() -> int:
        return sum(t.numel() * t.element_size() for t in (r() for r in alive) if t is not None)

    def add(self, name, x):
        before = self.sums[name]
        original_add(self, name, x)
        if before is None:
            alive.append(weakref.ref(self.sums[name]))
        peak[0] = max(peak[0], held())

    monkeypatch.setattr(ExpertHessians, "_add", add)
    spec = QuantSpec(method="shiftaddllm", mode="lat", wbits=3)
    reference = _tiny_mixtral_8()
    full = quantize_model(reference, spec, windows(), expert_group=8)
    assert all(layer.expert_group == 8 for layer in full.layers)
    all_at_once = peak[0]
    alive.clear()
    peak[0] = 0
    model = _tiny_mixtral_8()

    def spy(weight, hessian, spec):
        peak[0] = max(peak[0], held())
        return quantize_weight(weight, hessian, spec)

    report = quantize_model(model, spec, windows(), expert_group=group, solver=spy)
    one_expert = 4 * (32**2 + 64**2)  # float32 Hessians of gate_up_proj.e (in 32) and down_proj.e (in 64)
    assert all_at_once == 8 * one_expert
    assert 0 < peak[0] <= group * one_expert
    assert [s.name for layer in report.layers for s in layer.sublayers] == [
        s.name for layer in full.layers for s in layer.sublayers
    ]
    assert [s.tokens for layer in report.layers for s in layer.sublayers] == [
        s.tokens for layer in full.layers for s in layer.sublayers
    ]
    for name, module in reference.named_modules():
        if isinstance(module, QuantLinear):
            other = model.get_submodule(name)
            for key, t in module.packed_tensors().items():
                assert torch.equal(t, other.packed_tensors()[key]), (name, key)


def test_quant_experts_same_math_as_transformers() -> None:
    """QuantExperts over QuantLinears equals the transformers eager experts forward on the same weights."""
    model = tiny("mixtral")
    experts = model.model.layers[0].mlp.experts
    gate_up = [QuantLinear(_rtn(experts.gate_up_proj[e]), None) for e in range(4)]
    down = [QuantLinear(_rtn(experts.down_proj[e]), None) for e in range(4)]
    quant = QuantExperts(experts, gate_up, down)
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.stack([m.weight for m in gate_up]))
        experts.down_proj.copy_(torch.stack([m.weight for m in down]))
    experts.config._experts_implementation = "eager"
    x = torch.randn(12, 32)
    index = torch.tensor([[e % 4, (e + 1) % 4] for e in range(12)])
    weights = torch.rand(12, 2)
    with torch.no_grad():
        assert torch.equal(quant(x, index, weights), experts(x, index, weights))


def _rtn(weight: torch.Tensor):
    from llm1bit.quant.numerics.codes import QuantizedWeight

    return QuantizedWeight(rtn(weight.detach().float(), 4, -1))


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        ("mixtral", QuantSpec(method="shiftaddllm", mode="lat", wbits=3)),
        ("mixtral", QuantSpec(method="gptq", wbits=3)),
        ("qwen3_moe", QuantSpec(method="shiftaddllm", mode="lat", wbits=3)),
        ("qwen2_moe", QuantSpec(method="gptq", wbits=3)),
    ],
    ids=["mixtral-lat3", "mixtral-gptq3", "qwen3_moe-lat3", "qwen2_moe-gptq3"],
)
def test_quantize_moe_end_to_end(kind, spec, tmp_path) -> None:
    model = tiny(kind)
    before = kept(model)
    report = quantize_model(model, spec, windows())
    # every expert slice is its own QuantLinear; the router, the shared-expert gate and the norms are untouched
    for layer in model.model.layers:
        assert isinstance(layer.mlp.experts, QuantExperts)
        experts = layer.mlp.experts
        assert len(experts.gate_up_proj) == len(experts.down_proj) == 4
        assert all(isinstance(m, QuantLinear) for m in [*experts.gate_up_proj, *experts.down_proj])
        if kind == "qwen2_moe":
            assert isinstance(layer.mlp.shared_expert.down_proj, QuantLinear)
            assert isinstance(layer.mlp.shared_expert_gate, torch.nn.Linear)
    after = kept(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    # tokens per expert: all calibration tokens, top_k times; layer 0's expert 3 got none -> fallback
    tokens = [layer.expert_tokens() for layer in report.layers]
    assert all(
        sum(per[f"model.layers.{i}.mlp.experts"]) == NSAMPLES * SEQLEN * TOP_K for i, per in enumerate(tokens)
    )
    assert tokens[0]["model.layers.0.mlp.experts"][3] == 0
    fallbacks = report.fallbacks
    assert {"model.layers.0.mlp.experts.gate_up_proj.3", "model.layers.0.mlp.experts.down_proj.3"} <= set(
        fallbacks
    )
    for sub in (s for layer in report.layers for s in layer.sublayers):
        if sub.tokens is not None:
            assert sub.fallback == (sub.tokens < sub.shape[1])
    starved = next(s for s in report.layers[0].sublayers if s.name.endswith("down_proj.3"))
    assert starved.error == 0.0 and starved.tokens == 0  # no routed token, nothing to err on
    data = report.to_dict()
    assert data["fallback"]["modules"] == fallbacks and data["fallback"]["rule"] == FALLBACK
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(summary_table(report))
    text = console.export_text()
    assert "tokens/expert" in text and "model.layers.0.mlp.experts.down_proj.3" in text

    # save -> reload (llm1bit's loader and transformers'): the same logits as the saved model, bit for bit
    # (saving rounds the unquantized tensors to their 16-bit storage, in memory too)
    ids = windows(2, 16)
    qconfig = save_quantized(model, None, tmp_path, spec.validate().to_dict())
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    assert qconfig["modules"]["model.layers.0.mlp.experts.gate_up_proj.3"]["shape"] == [
        2 * model.model.layers[0].mlp.experts.intermediate_dim,
        32,
    ]
    assert not any(".gate" == name[-5:] or "shared_expert_gate" in name for name in qconfig["modules"])
    reloaded = load_quantized(tmp_path)
    assert isinstance(reloaded.model.layers[0].mlp.experts, QuantExperts)
    assert find_decoder_stack(reloaded).module_names() == find_decoder_stack(tiny(kind)).module_names()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, logits)
    native = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(native.model.layers[0].mlp.experts, QuantExperts)
    with torch.no_grad():
        assert torch.equal(native(input_ids=ids).logits, logits)


def test_too_few_tokens_everywhere_falls_back() -> None:
    """One short window: every expert sees fewer tokens than it has inputs, all slices take the fallback
    and report their error against the Hessian of the tokens they did get."""
    model = tiny("mixtral")
    report = quantize_model(model, QuantSpec(method="gptq", wbits=3), windows(1, 12))
    slices = [s for layer in report.layers for s in layer.sublayers if s.tokens is not None]
    assert slices and all(s.fallback for s in slices)
    assert all(s.error > 0 for s in slices if s.tokens)


def test_bits_config_names_expert_slices_and_groups() -> None:
    names = find_decoder_stack(tiny("mixtral")).module_names()
    prefix = "model.layers.0.mlp.experts"
    bits = resolve_bits(
        names, 3, {f"{prefix}.down_proj.2": 4, f"{prefix}.down_proj": 2, f"{prefix}.gate_up_proj.0": 5}
    )
    assert bits[f"{prefix}.down_proj.2"] == 4  # a slice overrides its group
    assert [bits[f"{prefix}.down_proj.{e}"] for e in (0, 1, 3)] == [2, 2, 2]
    assert bits[f"{prefix}.gate_up_proj.0"] == 5 and bits[f"{prefix}.gate_up_proj.1"] == 3
    assert bits["model.layers.1.mlp.experts.down_proj.0"] == 3
    assert resolve_bits(names, 3, {prefix: 2})[f"{prefix}.gate_up_proj.3"] == 2
    with pytest.raises(UserError, match="unknown module"):
        resolve_bits(names, 3, {"model.layers.0": 2})
    with pytest.raises(UserError, match="unknown module"):
        resolve_bits(names, 3, {"model.layers.0.mlp.gate": 2})


def test_resume_cache_rebuilds_experts(tmp_path) -> None:
    spec = QuantSpec(method="gptq", wbits=3)
    first = tiny("mixtral")
    report = quantize_model(first, spec, windows(), cache_dir=tmp_path)
    second = tiny("mixtral")
    resumed = quantize_model(second, spec, windows(), cache_dir=tmp_path)
    assert all(layer.resumed for layer in resumed.layers)
    assert resumed.fallbacks == report.fallbacks
    assert [layer.expert_tokens() for layer in resumed.layers] == [
        layer.expert_tokens() for layer in report.layers
    ]
    assert isinstance(second.model.layers[1].mlp.experts, QuantExperts)
    ids = windows(2, 16)
    with torch.no_grad():
        assert torch.equal(first(input_ids=ids).logits, second(input_ids=ids).logits)


def test_qwen2_moe_dense_layers_among_sparse() -> None:
    """Qwen2-MoE's mlp_only_layers: the same layer class, a dense MLP in some layers, experts in others."""
    from transformers import AutoModelForCausalLM

    model = tiny("qwen2_moe")
    config = model.config
    config.mlp_only_layers = [1]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    stack = find_decoder_stack(model)
    assert stack.layout == "moe-shared+llama"
    assert stack.layer_experts(0) == ("mlp.experts",) and stack.layer_experts(1) == ()
    assert stack.layer_linears(1)[-3:] == ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    report = quantize_model(model, QuantSpec(method="gptq", wbits=3), windows(4))
    assert [bool(layer.expert_tokens()) for layer in report.layers] == [True, False]
    assert find_decoder_stack(model).module_names() == stack.module_names()
