"""Binary-coding quantization: the fast batched fit equals a direct statement of the algorithm, codes are
+-1, the code refit is the exact nearest level, and the early exit changes no bit. The fits run both ways a CPU
has: the C rounds (bcq.c) and the torch / Python-float rounds (no compiler, or a GPU), with the same bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles import bcq, bcq_simple

from llm1bit.quant.numerics import bcq as bcq_module
from llm1bit.quant.numerics.apot import apot_value
from llm1bit.quant.numerics.bcq import (
    LevelTable,
    _resolve,
    _rounds_many,
    _rounds_native,
    _rounds_one,
    assign,
    bcq_fit,
    cg,
    greedy,
    group_rows,
    levels,
    native_rounds,
    sign_table,
)

NATIVE = native_rounds()
needs_native = pytest.mark.skipif(NATIVE is None, reason="bcq.c did not build here (no C compiler?)")


@pytest.fixture(params=["native", "torch"])
def rounds_path(request, monkeypatch):
    """Run a test's fits through bcq.c's rounds, then through the torch / Python-float rounds."""
    if request.param == "native" and NATIVE is None:
        pytest.skip("bcq.c did not build here (no C compiler?)")
    if request.param == "torch":
        monkeypatch.setattr(bcq_module, "native_rounds", lambda: None)
    return request.param


def _column(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 0.02
    x[rng.integers(0, n, 2)] *= 8  # a couple of outliers
    return x.astype(np.float32)


def _fit(x: np.ndarray, sizes, *args, **kw):
    return bcq_fit(torch.from_numpy(np.ascontiguousarray(x)), torch.as_tensor(sizes), *args, **kw)


def test_sign_order_is_the_references() -> None:
    assert sign_table(2).tolist() == [[1, 1], [1, -1], [-1, 1], [-1, -1]]
    assert sign_table(3)[:, 0].tolist() == [1, 1, 1, 1, -1, -1, -1, -1]


@pytest.mark.parametrize("q", [1, 2, 3, 4])
@pytest.mark.parametrize("rounds", [0, 1, 4, 50])
@pytest.mark.parametrize("terms", [None, 3])
def test_fast_fit_equals_the_direct_algorithm(q: int, rounds: int, terms: int | None, rounds_path) -> None:
    for seed in range(3):
        x = _column(80, seed)
        codes_ref, scales_ref = bcq_simple(x, q, rounds, terms)
        codes, xhat, fit = bcq(x[None], np.array([80]), q, rounds, terms)
        assert np.array_equal(fit.scales[0].numpy(), scales_ref)
        assert np.array_equal(codes[:, 0], codes_ref)
        recon = sum(codes_ref[b].astype(np.float32) * scales_ref[b] for b in range(q))
        assert np.array_equal(xhat[0], recon)


@pytest.mark.parametrize("q", [2, 3])
def test_early_exit_and_batching_change_no_bit(q: int, rounds_path) -> None:
    # a batch of 80 (torch rounds; it shrinks to its unfinished groups as they repeat), and of 12 (no shrinking)
    cols = np.stack([_column(96, s) for s in range(80)])
    sizes = np.full(80, 96)
    full = _fit(cols, sizes, q, 50, 3, early_exit=False)
    fast = _fit(cols, sizes, q, 50, 3)
    assert fast.rounds_run < 50
    for a, b in [(full.scales, fast.scales), (full.signs, fast.signs), (full.exps, fast.exps)]:
        assert torch.equal(a, b)
    cols, sizes = cols[:12], sizes[:12]
    full = _fit(cols, sizes, q, 50, 3, early_exit=False)
    fast = _fit(cols, sizes, q, 50, 3)
    for a, b in [(full.scales, fast.scales), (full.signs, fast.signs), (full.exps, fast.exps)]:
        assert torch.equal(a, b)
    for i in range(12):  # one group alone (Python floats on the host) gives the same bits as in the batch
        one = _fit(cols[i : i + 1], sizes[:1], q, 50, 3)
        assert one.rounds_run < 50
        assert torch.equal(one.scales[0], fast.scales[i]) and torch.equal(one.signs[0], fast.signs[i])


def test_ragged_groups_equal_separate_fits(rounds_path) -> None:
    x = torch.from_numpy(_column(100, 7))
    groups, sizes = group_rows(x, 32)  # 32, 32, 32, 4
    assert groups.shape == (4, 32) and sizes.tolist() == [32, 32, 32, 4]
    fit = bcq_fit(groups, sizes, 3, 20, 3)
    for g in range(4):
        alone = bcq_fit(groups[g : g + 1, : sizes[g]], sizes[g : g + 1], 3, 20, 3)
        assert torch.equal(alone.scales[0], fit.scales[g])


@pytest.mark.parametrize("q,rounds", [(1, 50), (3, 0), (2, 50), (3, 50)])
def test_codes_are_plus_minus_one_and_scales_apot(q: int, rounds: int, rounds_path) -> None:
    x = np.stack(
        [_column(64, 1), np.zeros(64, np.float32), np.r_[np.zeros(32), np.ones(32)].astype(np.float32)]
    )
    codes, xhat, fit = bcq(x, np.full(3, 64), q, rounds, 3)
    assert codes.dtype == np.int8 and set(np.unique(codes)) <= {-1, 1}
    assert np.array_equal(apot_value(fit.signs.numpy(), fit.exps.numpy()), fit.scales.numpy())
    assert (np.diff(fit.scales.numpy(), axis=1) <= 0).all() and (fit.scales >= 0).all()
    assert (xhat[1] == 0).all()  # an all-zero group has zero scales


def test_greedy_codes_can_be_zero_but_fit_codes_cannot(rounds_path) -> None:
    x = torch.zeros((1, 8))
    b, a = greedy(x, torch.tensor([8]), 2)
    assert (b == 0).all() and (a == 0).all()  # the reference's edge case (sign(0) = 0)
    codes, _, _ = bcq(x.numpy(), np.array([8]), 2, 0, None)
    assert set(np.unique(codes)) <= {-1, 1}


def test_refit_is_the_exact_nearest_level_and_beats_greedy_signs() -> None:
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((5, 200)).astype(np.float32))
    a = torch.from_numpy(-np.sort(-np.abs(rng.standard_normal((5, 3)).astype(np.float32)), axis=1))
    codes, xhat = assign(x, a)
    lv = levels(a)  # (5, 8)
    best = (x[:, :, None] - lv[:, None, :]).abs().min(-1).values
    assert torch.equal((x - xhat).abs(), best)
    for g in range(5):  # one group alone agrees with the batch
        c1, x1 = assign(x[g : g + 1], a[g : g + 1])
        assert torch.equal(c1[:, 0], codes[:, g]) and torch.equal(x1[0], xhat[g])
    # greedy residual signs for the same scales are never better
    r = x.clone()
    greedy_hat = torch.zeros_like(x)
    for b in range(3):
        s = torch.where(r >= 0, 1.0, -1.0)
        greedy_hat += a[:, b, None] * s
        r -= a[:, b, None] * s
    assert ((x - xhat).abs() <= (x - greedy_hat).abs() + 1e-7).all()
    assert ((x - xhat) ** 2).sum() < ((x - greedy_hat) ** 2).sum()


def test_ties_go_to_the_upper_level() -> None:
    a = torch.tensor([[1.0, 0.5]])  # levels -1.5 -0.5 0.5 1.5, midpoints -1, 0, 1
    x = torch.tensor([[-1.0, 0.0, 1.0, -0.0]])
    _, xhat = assign(x, a)
    assert xhat.tolist() == [[-0.5, 0.5, 1.5, 0.5]]
    table = LevelTable.build(torch.cat([a, a]))
    assert table.index(torch.tensor([[0.0], [1.0]])).ravel().tolist() == [2, 3]


def test_cg_solves_a_small_system() -> None:
    A = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
    b = torch.tensor([1.0, 2.0, 3.0])
    sol = cg(A[None], b[None], torch.zeros(1, 3), 3)[0]
    assert torch.allclose(sol.double(), torch.linalg.solve(A.double(), b.double()), atol=1e-5)
    batched = cg(A.expand(2, 3, 3), b.expand(2, 3), torch.zeros(2, 3), 3)
    assert torch.equal(batched[0], sol) and torch.equal(batched[1], sol)


def test_cycles_resolve_to_the_state_after_all_rounds() -> None:
    # one group with states 1, 2, 3, 2, 3, ... (period 2 from round 2): round 4 repeats round 2; the answer is a
    # round after 2 (round 2's unrounded scales come from round 1, outside the cycle)
    nan = float("nan")
    states = [1.0, 2.0, 3.0, 2.0]
    log = []
    for r in range(2, 5):
        past = [states[r - 1 - p] if r - 1 - p >= 0 else nan for p in range(1, 5)]
        log.append((r, torch.tensor([[s == states[r - 1]] for s in past])))
    assert _resolve(log, rounds=10, rounds_run=4, G=1, device="cpu").tolist() == [3]  # round 4: 2.0
    assert _resolve(log, rounds=9, rounds_run=4, G=1, device="cpu").tolist() == [2]  # round 3: 3.0
    assert _resolve(log[:1], rounds=9, rounds_run=2, G=1, device="cpu").tolist() == [1]  # no repeat: the last


def _round_one_inputs(x: torch.Tensor, sizes: torch.Tensor, q: int):
    """What `bcq_fit` hands every rounds path: B^T B, B^T x and the scales of the greedy codes."""
    codes, a = greedy(x, sizes, q)
    ct = codes.transpose(1, 2)
    btx = torch.bmm(ct.double(), x.double()[:, :, None])[:, :, 0].float()
    return torch.bmm(ct, codes), btx, a


@needs_native
@pytest.mark.parametrize("q", [2, 3, 4])
@pytest.mark.parametrize("terms", [None, 1, 3])
def test_c_rounds_equal_torch_rounds_bit_for_bit(q: int, terms: int | None) -> None:
    """bcq.c against `_rounds_many` (batched torch) and `_rounds_one` (Python floats): the same scales and the same
    rounds count, with and without the early exit, on full and ragged (padded) batches and 1-128 rounds."""
    rng = np.random.default_rng(q * 10 + (terms or 0))
    for trial, rounds in enumerate([1, 2, 7, 50, 128]):
        G, n = int(rng.integers(2, 160)), int(rng.integers(5, 150))
        x = (rng.standard_normal((G, n)) * 0.02).astype(np.float32)
        x[rng.random((G, n)) < 0.02] *= 10  # outliers
        sizes = np.full(G, n)
        if trial % 2:
            sizes = rng.integers(1, n + 1, G)
            sizes[0] = n
            x[np.arange(n)[None] >= sizes[:, None]] = 0.0
        xt, st = torch.from_numpy(x), torch.from_numpy(sizes)
        btb, btx, a = _round_one_inputs(xt, st, q)
        for early in (True, False):
            ours = _rounds_native(NATIVE, xt, st, q, rounds, terms, early, btb, btx, a)
            batched = _rounds_many(xt, st, q, rounds, terms, early, btb, btx, a)
            assert torch.equal(ours.scales, batched.scales) and ours.rounds_run == batched.rounds_run
            if terms:
                assert torch.equal(ours.signs, batched.signs) and torch.equal(ours.exps, batched.exps)
            for g in range(min(G, 3)):  # one group alone, Python floats on the host
                one = _rounds_one(xt[g], int(st[g]), q, rounds, terms, early, btb[g], btx[g], a[g])
                assert torch.equal(one.scales[0], ours.scales[g])


def test_without_a_compiler_the_rounds_run_in_torch(monkeypatch, tmp_path, capsys) -> None:
    from llm1bit.quant import native

    monkeypatch.setattr(native, "compiler", lambda: None)
    monkeypatch.setenv("LLM1BIT_CACHE_DIR", str(tmp_path))
    native_rounds.cache_clear()
    try:
        assert native_rounds() is None and native_rounds() is None
        err = capsys.readouterr().err
        assert err.count("warning:") == 1 and "no C compiler" in err and "same result" in err
        cols = np.stack([_column(96, s) for s in range(20)])
        fit = _fit(cols, np.full(20, 96), 3, 50, 3)  # the torch rounds
        assert fit.scales.shape == (20, 3) and list(tmp_path.iterdir()) == []
    finally:
        native_rounds.cache_clear()
