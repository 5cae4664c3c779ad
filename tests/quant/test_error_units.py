"""The reported error of every method is in the layer's own units: 1/2 tr(E H E^T), E = W - Q in the original
basis, H the calibration Hessian (acc used to report it in its rescaled, rotated basis: 0.001-0.06x). gptq and lat
take it from the loop's own scaled errors minus the damping and dead-input terms, in O(N K): it must agree with
the direct product to float rounding, dead inputs included."""

import pytest
import torch

from llm1bit.quant.numerics.column_solver import quantize_weight
from llm1bit.quant.numerics.methods import QuantSpec


@pytest.mark.parametrize(
    "spec",
    [
        dict(method="gptq", wbits=3),
        dict(method="gptq", wbits=2, groupsize=32, act_order=True),
        dict(method="shiftaddllm", mode="lat", wbits=3),
        dict(method="shiftaddllm", mode="lat", wbits=2, groupsize=128),
        dict(method="shiftaddllm", mode="acc", wbits=3),
        dict(method="shiftaddllm", mode="acc", wbits=2),
    ],
    ids=lambda s: "-".join(str(v) for v in s.values()),
)
@pytest.mark.parametrize("shape", [(128, 256), (256, 96)])
@pytest.mark.parametrize("dead", [False, True])
def test_reported_error_is_half_trace_e_h_et(make_layer, spec, shape, dead):
    w, h, _ = make_layer(*shape)
    if dead:  # inputs never active in calibration: their rows and columns of H are 0
        h[:, [3, 40]] = 0
        h[[3, 40], :] = 0
    quantized = quantize_weight(w, h, QuantSpec(bcq_rounds=5, **spec))
    e = w.double() - quantized.dequantize().double()
    exact = 0.5 * float(torch.einsum("nk,kl,nl->", e, h, e))
    assert quantized.error == pytest.approx(exact, rel=1e-5)
