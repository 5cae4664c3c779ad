"""The per-layer solver: output error against the baselines, exact stored structure, determinism, edge shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llm1bit.errors import UserError
from llm1bit.quant.numerics.apot import apot_value
from llm1bit.quant.numerics.codes import LEGACY_BUTTERFLY, PHILOX_HADAMARD, BinaryCodes, UniformCodes
from llm1bit.quant.numerics.column_solver import block_order, quantize_weight, solve
from llm1bit.quant.numerics.incoherence import (
    Butterfly,
    butterfly_factors,
    incoherence_preprocess,
    legacy_rotations,
    prime_factors,
    undo_incoherence,
)
from llm1bit.quant.numerics.methods import QuantSpec

SPECS = {
    "rtn": dict(method="rtn"),
    "bcq": dict(method="bcq"),
    "gptq": dict(method="gptq"),
    "acc": dict(method="shiftaddllm", mode="acc"),
    "acc-noinc": dict(method="shiftaddllm", mode="acc", incoherence=False),
    "lat": dict(method="shiftaddllm", mode="lat"),
}


def _output_error(w: torch.Tensor, wq: torch.Tensor, x: torch.Tensor) -> float:
    return float(((w - wq) @ x.T).double().pow(2).sum())


@pytest.fixture(scope="module")
def results(layer_256):
    w, h, x = layer_256
    out = {}
    for bits in (2, 3):
        for name, kw in SPECS.items():
            result, final = solve(w, h, QuantSpec(wbits=bits, **kw))
            out[name, bits] = (result, final, _output_error(w, result.dequantize(), x))
    return out


@pytest.mark.parametrize("bits", [2, 3])
def test_shiftaddllm_beats_rtn_and_bcq_and_gptq_beats_rtn(results, bits: int) -> None:
    err = {name: results[name, bits][2] for name in SPECS}
    for ours in ("acc", "acc-noinc", "lat"):
        assert err[ours] < err["rtn"], err
        assert err[ours] < err["bcq"], err
    assert err["gptq"] < err["rtn"], err


@pytest.mark.parametrize("name", list(SPECS))
def test_dequantize_is_the_solvers_weight_bit_for_bit(results, name: str) -> None:
    result, final, _ = results[name, 3]
    assert torch.equal(result.codes.dequantize(), final)
    if result.incoherence is None:
        assert torch.equal(result.dequantize(), final)
    else:
        assert torch.equal(result.dequantize(), undo_incoherence(final, result.incoherence))
    assert math.isfinite(result.error)
    assert (result.error == 0) == (name in ("rtn", "bcq"))


def test_binary_codes_are_plus_minus_one_and_apot_exact(results) -> None:
    for name in ("acc", "acc-noinc", "lat"):
        codes = results[name, 3][0].codes
        assert isinstance(codes, BinaryCodes)
        assert codes.codes.dtype == torch.int8 and set(codes.codes.unique().tolist()) == {-1, 1}
        assert codes.scale_signs.dtype == torch.int8 and codes.scale_exps.dtype == torch.int8
        assert codes.scale_signs.shape == codes.scales.shape + (3,)
        exact = apot_value(codes.scale_signs.numpy(), codes.scale_exps.numpy())
        assert np.array_equal(codes.scales.numpy(), exact)
    acc = results["acc-noinc", 3][0].codes
    assert (acc.col_block, acc.row_block, tuple(acc.scales.shape)) == (1, 256, (256, 1, 3))
    plain = results["bcq", 3][0].codes
    assert plain.scale_signs is None and set(plain.codes.unique().tolist()) == {-1, 1}
    assert isinstance(results["gptq", 3][0].codes, UniformCodes)


def test_without_incoherence_the_weight_is_binary_times_pot_in_the_original_basis(layer_256, results) -> None:
    result, final, _ = results["acc-noinc", 2]
    assert result.incoherence is None
    w = result.dequantize()
    assert torch.equal(w, final)
    codes = result.codes
    rebuilt = sum(codes.codes[b].double() * codes.scales[:, 0, b].double()[None, :] for b in range(2))
    assert torch.equal(rebuilt.float(), w)


def test_incoherence_roundtrip_and_seeds(layer_256) -> None:
    w, h, _ = layer_256
    w2, h2, inc = incoherence_preprocess(w.numpy(), h.numpy(), seed=5, module="m")
    assert inc.version == PHILOX_HADAMARD and inc.key is not None and len(inc.checksum) == 16
    assert inc.rescale.dtype == torch.float32 and inc.rescale.shape == (256,)
    back = undo_incoherence(torch.from_numpy(w2), inc)
    assert torch.allclose(back, w, atol=1e-6, rtol=1e-5)
    assert np.allclose(np.trace(h2), 256 * 1.01, rtol=1e-6)  # normalised to mean diagonal 1, plus 0.01 I
    for other in ({"seed": 6, "module": "m"}, {"seed": 5, "module": "n"}):
        w3, _, _ = incoherence_preprocess(w.numpy(), h.numpy(), **other)
        assert not np.allclose(w2, w3)
    # the legacy procedure (folders of format versions 1 and 2) still round-trips from its seed
    w4, _, legacy = incoherence_preprocess(w.numpy(), h.numpy(), seed=5, version=LEGACY_BUTTERFLY)
    assert legacy.version == LEGACY_BUTTERFLY and legacy.seed == 5 and legacy.key is None
    assert torch.allclose(undo_incoherence(torch.from_numpy(w4), legacy), w, atol=1e-6, rtol=1e-5)
    assert not np.allclose(w2, w4)


def test_seeded_runs_are_bit_identical(make_layer) -> None:
    w, h, _ = make_layer(64, 48, tokens=256, seed=1)
    spec = QuantSpec(wbits=2, seed=3)
    a, b = quantize_weight(w, h, spec), quantize_weight(w, h, spec)
    assert torch.equal(a.codes.codes, b.codes.codes) and torch.equal(a.codes.scales, b.codes.scales)
    assert torch.equal(a.dequantize(), b.dequantize()) and a.error == b.error
    c = quantize_weight(w, h, QuantSpec(wbits=2, seed=4))
    assert not torch.equal(a.dequantize(), c.dequantize())
    for kw in (SPECS["lat"], SPECS["gptq"], SPECS["bcq"]):
        spec = QuantSpec(wbits=2, **kw)
        assert torch.equal(quantize_weight(w, h, spec).dequantize(), quantize_weight(w, h, spec).dequantize())


@pytest.mark.parametrize("n,k,groupsize", [(172, 172, -1), (64, 100, -1), (172, 100, 64), (20, 13, -1)])
def test_lat_blocks_with_widths_not_divisible_by_8(make_layer, n: int, k: int, groupsize: int) -> None:
    w, h, x = make_layer(n, k, tokens=512, seed=2)
    q = 2
    result, final = solve(w, h, QuantSpec(wbits=q, mode="lat", groupsize=groupsize))
    codes = result.codes
    rb = math.ceil(n / 8) if groupsize < 0 else groupsize // 8
    assert (codes.col_block, codes.row_block) == (8, rb)
    assert tuple(codes.scales.shape) == (math.ceil(k / 8), math.ceil(n / rb), q)
    assert tuple(codes.codes.shape) == (q, n, k) and set(codes.codes.unique().tolist()) <= {-1, 1}
    wq = result.dequantize()
    assert torch.equal(wq, final)
    # every 8-column x rb-row block uses only the 2^q levels of its own scales
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    for cb in range(codes.scales.shape[0]):
        for rblk in range(codes.scales.shape[1]):
            block = wq[rblk * rb : (rblk + 1) * rb, cb * 8 : (cb + 1) * 8]
            lv = signs[:, 0] * codes.scales[cb, rblk, 0] + signs[:, 1] * codes.scales[cb, rblk, 1]
            assert torch.isin(block, lv).all()
    rtn = quantize_weight(w, h, QuantSpec(method="rtn", wbits=q))
    assert _output_error(w, wq, x) < _output_error(w, rtn.dequantize(), x)


def test_block_order_keeps_blocks_whole() -> None:
    diag = torch.tensor([1.0] * 8 + [5.0] * 8 + [11.0] * 4)  # K = 20: blocks of 8, 8, 4 score 8, 40, 44
    perm, slabs = block_order(diag, act_order=True)
    assert perm.tolist() == list(range(16, 20)) + list(range(8, 16)) + list(range(8))
    assert slabs == [(0, 4), (4, 12), (12, 20)]


@pytest.mark.parametrize(
    "kw", [dict(mode="acc", groupsize=64), dict(mode="acc", incoherence=False, groupsize=48)]
)
def test_acc_row_groups(make_layer, kw) -> None:
    w, h, _ = make_layer(172, 40, tokens=256, seed=3)
    result, final = solve(w, h, QuantSpec(wbits=3, **kw))
    gs = kw["groupsize"]
    assert result.codes.row_block == gs and tuple(result.codes.scales.shape) == (40, math.ceil(172 / gs), 3)
    assert torch.equal(result.codes.dequantize(), final)


@pytest.mark.parametrize("kw", [dict(wbits=1), dict(wbits=3, bcq_rounds=0), dict(wbits=1, bcq_rounds=0)])
@pytest.mark.parametrize("mode", ["acc", "lat"])
def test_one_bit_and_zero_rounds_still_give_pm1_codes_and_apot_scales(make_layer, kw, mode: str) -> None:
    w, h, _ = make_layer(24, 20, tokens=128, seed=4)
    result, final = solve(w, h, QuantSpec(mode=mode, incoherence=False, **kw))
    codes = result.codes
    assert set(codes.codes.unique().tolist()) <= {-1, 1}
    assert np.array_equal(
        codes.scales.numpy(), apot_value(codes.scale_signs.numpy(), codes.scale_exps.numpy())
    )
    assert torch.equal(result.dequantize(), final)
    plain = quantize_weight(w, None, QuantSpec(method="bcq", **kw))
    assert set(plain.codes.codes.unique().tolist()) <= {-1, 1}


@pytest.mark.parametrize("name", list(SPECS))
def test_dead_columns(make_layer, name: str) -> None:
    w, h, _ = make_layer(32, 24, tokens=128, seed=5)
    h[:, [3, 17]] = 0
    h[[3, 17], :] = 0
    before = w.clone()
    result, final = solve(w, h, QuantSpec(wbits=2, **SPECS[name]))
    assert torch.equal(w, before)  # the input is never modified
    wq = result.dequantize()
    assert torch.isfinite(wq).all() and math.isfinite(result.error)
    if name in ("gptq", "acc-noinc"):
        assert (wq[:, [3, 17]] == 0).all()  # dead inputs are zeroed, and a zero column quantizes to zero
    if name == "acc":  # zeroed before the rescale: only a little rotated noise comes back
        assert wq[:, [3, 17]].abs().max() < 0.5 * w.abs().mean()
    if isinstance(result.codes, BinaryCodes):
        assert set(result.codes.codes.unique().tolist()) <= {-1, 1}


def test_gptq_groups_and_rtn_layout(make_layer) -> None:
    w, h, x = make_layer(48, 64, tokens=256, seed=6)
    rtn = quantize_weight(w, None, QuantSpec(method="rtn", wbits=3, groupsize=16))
    assert isinstance(rtn.codes, UniformCodes) and tuple(rtn.codes.scale.shape) == (48, 4)
    assert int(rtn.codes.qweight.max()) <= 7
    for act_order in (True, False):
        result, final = solve(w, h, QuantSpec(method="gptq", wbits=3, groupsize=16, act_order=act_order))
        assert torch.equal(result.dequantize(), final) and tuple(result.codes.zero.shape) == (48, 4)
        assert _output_error(w, final, x) < _output_error(w, rtn.dequantize(), x)


def test_bad_inputs(make_layer) -> None:
    w, h, _ = make_layer(8, 16, tokens=64)
    for method in ("gptq", "shiftaddllm"):
        with pytest.raises(UserError):
            quantize_weight(w, None, QuantSpec(method=method))
    with pytest.raises(UserError):
        quantize_weight(w, h[:8, :8], QuantSpec())
    with pytest.raises(UserError):
        quantize_weight(w[0], h, QuantSpec())
    with pytest.raises(UserError):
        quantize_weight(w, h, QuantSpec(wbits=9))


@pytest.mark.parametrize("n", [1, 2, 3, 8, 97, 172, 576, 768])
def test_butterflies_are_orthogonal_for_any_size(n: int) -> None:
    b = Butterfly.random(n, np.random.default_rng(0))
    assert b.p0 * b.p1 == n
    m = b.dense()
    assert np.allclose(m @ m.T, np.eye(n), atol=1e-12)
    x = np.random.default_rng(1).standard_normal((n, 3))
    assert np.allclose(b.apply_t(b.apply(x)), x, atol=1e-12)
    u1, v1 = legacy_rotations(9, n, 4)
    u2, _ = legacy_rotations(9, n, 4)
    assert np.array_equal(u1.dense(), u2.dense())


def test_butterfly_factors() -> None:
    assert prime_factors(768) == [2] * 8 + [3]
    assert butterfly_factors(768) == (48, 16)
    assert butterfly_factors(172) == (86, 2)
    assert butterfly_factors(97) == (97, 1)
    assert butterfly_factors(1) == (1, 1)


@pytest.mark.parametrize(
    "kw",
    [
        dict(mode="lat", groupsize=64),
        dict(method="gptq", groupsize=48),  # groups read rows past a 16-column block: the loop waits for them
        dict(mode="acc", incoherence=False),
    ],
)
def test_block_updates_behind_a_worker_thread_change_no_bit(make_layer, kw) -> None:
    # with 2 threads the rows after the next block are updated on a worker thread (gptq_loop), with 1 in line
    w, h, _ = make_layer(96, 200, tokens=512, seed=5)
    spec = QuantSpec(wbits=2, blocksize=16, **kw)
    before = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out.append(solve(w, h, spec))
    finally:
        torch.set_num_threads(before)
    (one, final_one), (two, final_two) = out
    assert torch.equal(final_one, final_two) and one.error == two.error


def test_caller_thread_setting_is_restored(make_layer) -> None:
    w, h, _ = make_layer(16, 16, tokens=64)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        quantize_weight(w, h, QuantSpec(wbits=2, mode="lat"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "kw",
    [
        dict(mode="lat", groupsize=128),  # batches of 24 groups per slab
        dict(mode="lat"),  # 8 groups per slab (the small-batch path without C)
        dict(mode="acc", groupsize=64),
        dict(mode="acc", incoherence=False),  # one group per column
    ],
)
def test_c_bcq_rounds_change_no_bit_of_a_layer(make_layer, monkeypatch, kw) -> None:
    """The solver with bcq.c's rounds and with the torch / Python-float rounds: the same quantized layer."""
    from llm1bit.quant.numerics import bcq

    if bcq.native_rounds() is None:
        pytest.skip("bcq.c did not build here (no C compiler?)")
    w, h, _ = make_layer(192, 160, tokens=512, seed=9)
    spec = QuantSpec(wbits=3, **kw)
    with_c, final_c = solve(w, h, spec)
    monkeypatch.setattr(bcq, "native_rounds", lambda: None)
    without, final = solve(w, h, spec)
    assert torch.equal(final_c, final) and with_c.error == without.error
    assert torch.equal(with_c.codes.scales, without.codes.scales)
