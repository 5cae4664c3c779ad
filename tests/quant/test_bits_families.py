"""`llm1bit bits` (sensitivity walk + analyse) on Gemma-2 and Mixtral: each decoder layer runs with its own
keyword arguments (Gemma-2's global layer has another mask than its sliding one), and every expert slice of a
MoE layer gets its criterion and errors from the tokens routed to it, as the quantize pipeline computes them,
with the same fallback for starved experts."""

from __future__ import annotations

import json

import pytest
import torch
from test_dense_families import tiny as tiny_dense
from test_dense_families import windows as dense_windows
from test_moe_quantize import tiny as tiny_moe
from test_moe_quantize import windows as moe_windows

from llm1bit.quant.bits.analysis import analyse, result_json
from llm1bit.quant.bits.sensitivity import criterion, walk_fp_blocks
from llm1bit.quant.numerics.column_solver import FALLBACK
from llm1bit.quant.numerics.methods import QuantSpec
from llm1bit.quant.quantize import quantize_model, resolve_bits
from llm1bit.quant.walk.decoder_stack import find_decoder_stack
from llm1bit.quant.walk.layers import capture_inputs, capture_layer_kwargs, layer_hessians, run_layer

SPEC = QuantSpec(method="shiftaddllm", mode="lat", bcq_rounds=3, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/quant/conftest.py


def test_gemma2_walk_uses_each_layers_kwargs() -> None:
    """Layer 1 (global attention) of the FP walk has the Hessians of the pipeline's per-layer capture, not
    those that layer 0's (sliding-window) kwargs would give."""
    model = tiny_dense("gemma2")
    ids = dense_windows(4)
    walked = {}
    for block in walk_fp_blocks(model, ids):
        walked[block.index] = {info.sublayer: info for info in block.linears}
    stack = find_decoder_stack(model)
    inputs, first = capture_inputs(model, stack, ids, "cpu")
    per_layer = capture_layer_kwargs(model, stack, ids[0], "cpu")
    hidden = run_layer(stack.layers[0], inputs, per_layer[0], torch.empty_like(inputs))
    linears = {rel: stack.layers[1].get_submodule(rel) for rel in stack.linears}
    right = layer_hessians(stack.layers[1], linears, hidden, per_layer[1], torch.empty_like(hidden))
    wrong = layer_hessians(stack.layers[1], linears, hidden, first, torch.empty_like(hidden))
    for rel, info in walked[1].items():
        assert torch.equal(info.hessian, right[rel]), rel
        assert criterion(info.weight, info.hessian) == criterion(info.weight, right[rel])
    # the global layer's attention output (o_proj's input) differs under the sliding layer's mask
    assert not torch.allclose(right["self_attn.o_proj"], wrong["self_attn.o_proj"])
    assert not torch.allclose(walked[1]["self_attn.o_proj"].hessian, wrong["self_attn.o_proj"])


def test_bits_end_to_end_on_gemma2() -> None:
    model = tiny_dense("gemma2")
    result = analyse(model, dense_windows(4), SPEC, (2, 3), 2.5, "ilp", 1, None, None, True, output_windows=2)
    names = find_decoder_stack(model).module_names()
    assert [layer.name for layer in result.layers] == names
    assert set(result.allocation.bits) == set(names) and result.allocation.average_bits <= 2.5 + 1e-9
    assert all(layer.tokens is None and not layer.fallback for layer in result.layers)


@pytest.fixture(scope="module")
def mixtral_bits():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = tiny_moe("mixtral")
    result = analyse(model, moe_windows(), SPEC, (2, 3), 2.5, "ilp", 1, None, None, True, output_windows=2)
    yield model, result
    torch.set_num_threads(threads)


def test_bits_on_mixtral_gives_experts_their_own_bits(mixtral_bits) -> None:
    model, result = mixtral_bits
    stack = find_decoder_stack(model)
    names = stack.module_names()
    assert [layer.name for layer in result.layers] == names
    assert "model.layers.1.mlp.experts.gate_up_proj.2" in result.allocation.bits
    # the allocation is a bits config that quantize accepts, expert slices included
    assert resolve_bits(names, 3, result.allocation.bits) == result.allocation.bits
    by_name = {layer.name: layer for layer in result.layers}
    starved = ["model.layers.0.mlp.experts.gate_up_proj.3", "model.layers.0.mlp.experts.down_proj.3"]
    for name in starved:  # never routed to: the pipeline's fallback, reported, criterion 0
        assert by_name[name].fallback and by_name[name].tokens == 0 and by_name[name].criterion == 0.0
        assert by_name[name].errors == {2: 0.0, 3: 0.0}
    experts = [layer for layer in result.layers if layer.tokens is not None]
    assert len(experts) == 2 * 2 * 4
    for layer in experts:
        assert layer.fallback == (layer.tokens < layer.shape[1])
    fitted = sum(1 for layer in result.layers if layer.errors and not layer.fallback)
    assert all(fit.points == fitted for fit in result.fits.values())
    out = json.loads(json.dumps(result_json(result, 2.5, {})))
    assert out["fallback"]["rule"] == FALLBACK
    assert set(starved) <= set(out["fallback"]["modules"])
    sub = {s["name"]: s for s in out["sublayers"]}
    assert sub[starved[0]]["tokens"] == 0 and sub[starved[0]]["fallback"] is True
    assert sum(sub[f"model.layers.0.mlp.experts.down_proj.{e}"]["tokens"] for e in range(4)) == 8 * 32 * 2


@pytest.mark.parametrize("bits", [2, 3])
def test_mixtral_layer0_errors_are_the_pipelines(mixtral_bits, bits) -> None:
    """Layer 0 sees the same FP inputs in both: every sublayer's measured error at a width, expert slices and
    the fallback ones included, is the error the quantize pipeline reports at that width."""
    _, result = mixtral_bits
    model = tiny_moe("mixtral")
    report = quantize_model(model, SPEC.with_bits(bits), moe_windows())
    measured = {layer.name: layer.errors[bits] for layer in result.layers if layer.block == 0}
    reported = {s.name: s.error for s in report.layers[0].sublayers}
    assert measured.keys() == reported.keys()
    for name, error in reported.items():
        assert measured[name] == pytest.approx(error, rel=1e-6, abs=1e-12), name
