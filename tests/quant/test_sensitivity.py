"""Sensitivity measures on the real stories260K: the FP walk, the relative decoder-output error, the gains
that turn reparameterization errors into costs, and the held-out fit behind the reported Kendall tau."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llm1bit.quant.bits.allocation import fit_errors, held_out_predictions, predicted_costs
from llm1bit.quant.bits.sensitivity import (
    LayerSensitivity,
    measure_layers,
    output_error,
    output_gains,
    quantize_layer,
    walk_fp_blocks,
)
from llm1bit.quant.calib import calibration_windows
from llm1bit.quant.hf.loading import load_model
from llm1bit.quant.numerics.methods import QuantSpec
from llm1bit.quant.walk.decoder_stack import find_decoder_stack
from llm1bit.quant.walk.layers import run_layer

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STORIES = DATA / "models" / "stories260K"
VALID = DATA / "tinystories" / "valid-head.txt"


@pytest.fixture(scope="module")
def stories():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tokenizer = load_model(STORIES)
    windows = calibration_windows(VALID, tokenizer, 4, 64, 0)
    yield model, windows
    torch.set_num_threads(threads)


def test_walk_reproduces_the_fp_forward(stories) -> None:
    """The last block's outputs are the hidden states the full FP model computes before its final norm."""
    model, windows = stories
    blocks = list(walk_fp_blocks(model, windows))
    stack = find_decoder_stack(model)
    assert [b.index for b in blocks] == list(range(len(stack.layers)))
    assert all(len(b.linears) == 7 for b in blocks)
    last = blocks[-1]
    with torch.no_grad():
        hidden = model(input_ids=windows, output_hidden_states=True).hidden_states
    # hidden_states[-1] is after the final norm in LLaMA; the one before is the input of the last block
    torch.testing.assert_close(last.inputs, hidden[-2], rtol=1e-4, atol=1e-5)


def test_output_error_is_relative_to_the_residual_stream(stories) -> None:
    model, windows = stories
    spec = QuantSpec(method="shiftaddllm", mode="lat", bcq_rounds=3, seed=0).validate().with_bits(2)
    for block in walk_fp_blocks(model, windows):
        if block.index != 1:
            continue
        info = block.linears[2]  # v_proj
        linear = block.layer.get_submodule(info.sublayer)
        original = linear.weight.data.clone()
        assert output_error(block, info.sublayer, original) == 0.0
        quantized = quantize_layer(info.weight, info.hessian, spec).dequantize()
        got = output_error(block, info.sublayer, quantized, windows=2)
        assert torch.equal(linear.weight.data, original)  # restored
        # by hand: run the block with the quantized weight on the first two windows
        linear.weight.data = quantized.clone()
        out = run_layer(block.layer, block.inputs[:2], block.kwargs, torch.empty_like(block.inputs[:2]))
        linear.weight.data = original
        ref = block.outputs[:2].double()
        expected = ((out.double() - ref).square().sum(-1) / ref.square().sum(-1)).sum().item() / 2
        assert got == pytest.approx(expected, rel=1e-9) and got > 0
        # a larger perturbation costs more
        assert output_error(block, info.sublayer, original + 3 * (quantized - original), 2) > got
        break


def test_measure_layers_records_both_errors(stories) -> None:
    model, windows = stories
    spec = QuantSpec(method="shiftaddllm", mode="lat", bcq_rounds=3, seed=0).validate()
    layers, timings = measure_layers(
        model, windows, spec, (2, 3), lambda pos, info: pos < 9, output_windows=2
    )
    assert len(layers) == 35 and timings["output_seconds"] > 0
    measured = [layer for layer in layers if layer.errors]
    assert len(measured) == 9 and all(set(layer.output_errors) == {2, 3} for layer in measured)
    # three bits is better than two for almost every layer, in both measures
    assert sum(layer.errors[3] < layer.errors[2] for layer in measured) >= 8
    assert sum(layer.output_errors[3] < layer.output_errors[2] for layer in measured) >= 8
    gains = output_gains(layers)
    assert len(gains) == 35 and all(g > 0 and math.isfinite(g) for g in gains)
    first = measured[0]
    assert gains[0] == pytest.approx(
        math.sqrt(first.output_errors[2] / first.errors[2] * first.output_errors[3] / first.errors[3])
    )
    layers, _ = measure_layers(model, windows, spec, (2,), lambda pos, info: pos < 2, output=False)
    assert not any(layer.output_errors for layer in layers) and output_gains(layers) == [1.0] * 35


def test_output_gains_interpolate_unmeasured_layers() -> None:
    def layer(block: int, sub: str, err: float | None, out: float | None) -> LayerSensitivity:
        item = LayerSensitivity(f"b{block}.{sub}", block, sub, (2, 2), 1.0)
        if err is not None:
            item.errors[2] = err
            item.output_errors[2] = out
        return item

    layers = [
        layer(0, "q", 1.0, 2.0),  # gain 2
        layer(1, "q", None, None),  # between blocks 0 and 2: exp(mean(log 2, log 8)) = 4
        layer(2, "q", 1.0, 8.0),  # gain 8
        layer(3, "q", None, None),  # past the last measured block: 8
        layer(0, "o", None, None),  # no measured "o": geometric mean of all measured gains = 4
    ]
    assert output_gains(layers) == pytest.approx([2.0, 4.0, 8.0, 8.0, 4.0])


def test_costs_are_predicted_errors_times_gain() -> None:
    fit = fit_errors([1.0, 10.0, 100.0], [1.0, 10.0, 100.0], bits=2)
    costs = predicted_costs(["a", "b"], [1, 1], [1.0, 10.0], {2: fit}, gains=[3.0, 0.5])
    assert costs[0].costs[2] == pytest.approx(3.0) and costs[0].gain == 3.0
    assert costs[1].costs[2] == pytest.approx(5.0)


def test_held_out_predictions_leave_one_block_out() -> None:
    rng = np.random.default_rng(0)
    crit = rng.uniform(1, 100, 12)
    err = 2.0 * crit**0.8 * np.exp(rng.normal(0, 0.1, 12))
    groups = np.repeat([0, 1, 2], 4)
    held = held_out_predictions(crit, err, groups, bits=2)
    for g in range(3):
        train = groups != g
        fit = fit_errors(crit[train], err[train], 2)
        np.testing.assert_allclose(held[groups == g], fit.predict(crit[groups == g]))
    assert held_out_predictions(crit, err, np.zeros(12), bits=2) is None  # one block: nothing to hold out
