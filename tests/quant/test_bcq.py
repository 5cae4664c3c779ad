"""Binary-coding quantization: the fast batched fit equals a direct statement of the algorithm, codes are
+-1, the code refit is the exact nearest level, and the early exit changes no bit."""

from __future__ import annotations

import numpy as np
import pytest
from oracles import bcq, bcq_simple

from llm1bit.quant.numerics.apot import apot_value
from llm1bit.quant.numerics.bcq import (
    LevelTable,
    _resolve_cycles,
    assign,
    bcq_fit,
    cg,
    greedy,
    group_rows,
    levels,
    sign_table,
)


def _column(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 0.02
    x[rng.integers(0, n, 2)] *= 8  # a couple of outliers
    return x.astype(np.float32)


def test_sign_order_is_the_references() -> None:
    assert sign_table(2).tolist() == [[1, 1], [1, -1], [-1, 1], [-1, -1]]
    assert sign_table(3)[:, 0].tolist() == [1, 1, 1, 1, -1, -1, -1, -1]


@pytest.mark.parametrize("q", [1, 2, 3, 4])
@pytest.mark.parametrize("rounds", [0, 1, 4, 50])
@pytest.mark.parametrize("terms", [None, 3])
def test_fast_fit_equals_the_direct_algorithm(q: int, rounds: int, terms: int | None) -> None:
    for seed in range(3):
        x = _column(80, seed)
        codes_ref, scales_ref = bcq_simple(x, q, rounds, terms)
        codes, xhat, fit = bcq(x[None], np.array([80]), q, rounds, terms)
        assert np.array_equal(fit.scales[0], scales_ref)
        assert np.array_equal(codes[:, 0], codes_ref)
        recon = sum(codes_ref[b].astype(np.float32) * scales_ref[b] for b in range(q))
        assert np.array_equal(xhat[0], recon)


@pytest.mark.parametrize("q", [2, 3])
def test_early_exit_and_batching_change_no_bit(q: int) -> None:
    cols = np.stack([_column(96, s) for s in range(12)])  # more than SMALL_BATCH: the batched path
    sizes = np.full(12, 96)
    full = bcq_fit(cols, sizes, q, 50, 3, early_exit=False)
    fast = bcq_fit(cols, sizes, q, 50, 3)
    assert fast.rounds_run < 50
    for a, b in [(full.scales, fast.scales), (full.signs, fast.signs), (full.exps, fast.exps)]:
        assert np.array_equal(a, b)
    for i in range(12):  # one group alone (scalar path) gives the same bits as in the batch
        one = bcq_fit(cols[i : i + 1], sizes[:1], q, 50, 3)
        assert one.rounds_run < 50
        assert np.array_equal(one.scales[0], fast.scales[i]) and np.array_equal(one.signs[0], fast.signs[i])


def test_ragged_groups_equal_separate_fits() -> None:
    x = _column(100, 7)
    groups, sizes = group_rows(x, 32)  # 32, 32, 32, 4
    assert groups.shape == (4, 32) and sizes.tolist() == [32, 32, 32, 4]
    fit = bcq_fit(groups, sizes, 3, 20, 3)
    for g in range(4):
        alone = bcq_fit(groups[g : g + 1, : sizes[g]], sizes[g : g + 1], 3, 20, 3)
        assert np.array_equal(alone.scales[0], fit.scales[g])


@pytest.mark.parametrize("q,rounds", [(1, 50), (3, 0), (2, 50), (3, 50)])
def test_codes_are_plus_minus_one_and_scales_apot(q: int, rounds: int) -> None:
    x = np.stack(
        [_column(64, 1), np.zeros(64, np.float32), np.r_[np.zeros(32), np.ones(32)].astype(np.float32)]
    )
    codes, xhat, fit = bcq(x, np.full(3, 64), q, rounds, 3)
    assert codes.dtype == np.int8 and set(np.unique(codes)) <= {-1, 1}
    assert np.array_equal(apot_value(fit.signs, fit.exps), fit.scales)
    assert (np.diff(fit.scales, axis=1) <= 0).all() and (fit.scales >= 0).all()
    assert (xhat[1] == 0).all()  # an all-zero group has zero scales


def test_greedy_codes_can_be_zero_but_fit_codes_cannot() -> None:
    x = np.zeros((1, 8), np.float32)
    b, a = greedy(x, np.array([8]), 2)
    assert (b == 0).all() and (a == 0).all()  # the reference's edge case (sign(0) = 0)
    codes, _, _ = bcq(x, np.array([8]), 2, 0, None)
    assert set(np.unique(codes)) <= {-1, 1}


def test_refit_is_the_exact_nearest_level_and_beats_greedy_signs() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 200)).astype(np.float32)
    a = -np.sort(-np.abs(rng.standard_normal((5, 3)).astype(np.float32)), axis=1)
    codes, xhat = assign(x, a)
    lv = levels(a)  # (5, 8)
    best = np.abs(x[:, :, None] - lv[:, None, :]).min(-1)
    assert np.array_equal(np.abs(x - xhat), best)
    for g in range(5):  # the one-group path (float search) agrees with the batched one (integer keys)
        c1, x1 = assign(x[g : g + 1], a[g : g + 1])
        assert np.array_equal(c1[:, 0], codes[:, g]) and np.array_equal(x1[0], xhat[g])
    # greedy residual signs for the same scales are never better
    r = x.copy()
    greedy_hat = np.zeros_like(x)
    for b in range(3):
        s = np.where(r >= 0, 1.0, -1.0).astype(np.float32)
        greedy_hat += a[:, b, None] * s
        r -= a[:, b, None] * s
    assert (np.abs(x - xhat) <= np.abs(x - greedy_hat) + 1e-7).all()
    assert ((x - xhat) ** 2).sum() < ((x - greedy_hat) ** 2).sum()


def test_ties_go_to_the_upper_level() -> None:
    a = np.array([[1.0, 0.5]], np.float32)  # levels -1.5 -0.5 0.5 1.5, midpoints -1, 0, 1
    x = np.array([[-1.0, 0.0, 1.0, -0.0]], np.float32)
    _, xhat = assign(x, a)
    assert xhat.tolist() == [[-0.5, 0.5, 1.5, 0.5]]
    table = LevelTable.build(np.vstack([a, a]))
    idx = table.index(np.array([0.0, 1.0], np.float32), group=np.array([0, 1]))
    assert idx.tolist() == [2, 3]


def test_cg_solves_a_small_system() -> None:
    A = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]], np.float32)
    b = np.array([1.0, 2.0, 3.0], np.float32)
    sol = cg([list(r) for r in A], list(b), [np.float32(0)] * 3, 3)
    assert np.allclose(np.array(sol, np.float64), np.linalg.solve(A.astype(np.float64), b), atol=1e-5)
    batched = cg(
        [[np.full(2, v, np.float32) for v in r] for r in A],
        [np.full(2, v, np.float32) for v in b],
        [np.zeros(2, np.float32)] * 3,
        3,
    )
    assert all(np.array_equal(batched[i], np.full(2, sol[i])) for i in range(3))


def test_cycles_resolve_to_the_state_after_all_rounds() -> None:
    states = [np.array([[v]], np.float32) for v in (1.0, 2.0, 3.0, 2.0, 3.0)]  # 2, 3, 2, 3, ... from round 2
    history = [(s, None, None) for s in states]
    done = np.zeros(1, bool)
    final = _resolve_cycles(history, rounds=10, done=done, final=None)
    assert done.all() and final[0][0, 0] == 2.0  # rounds 2, 4, 6, 8, 10 give 2.0
    done = np.zeros(1, bool)
    final = _resolve_cycles(history, rounds=9, done=done, final=None)
    assert final[0][0, 0] == 3.0
