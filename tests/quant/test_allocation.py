"""Mixed-bit allocation: the ILP against brute force, the rank rule of design §6.2, the fit, the criterion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from oracles import brute_force

from llm1bit.errors import UserError
from llm1bit.quant.bits.allocation import (
    ErrorFit,
    LayerCost,
    average_bits,
    budget_mix,
    check_pins,
    fit_errors,
    objective,
    parse_candidates,
    predicted_costs,
    rank_allocation,
    rank_bits,
    solve_ilp,
)
from llm1bit.quant.bits.sensitivity import LayerSensitivity, criterion, kendall_taus, measured_positions


def random_problem(seed: int, n_layers: int, widths: tuple[int, ...]) -> list[LayerCost]:
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n_layers):
        params = int(rng.choice([1, 2, 3, 4, 7]))
        base = float(rng.uniform(1, 100))
        costs, c = {}, base
        for b in widths:
            costs[b] = c
            c *= float(rng.uniform(0.1, 0.6))
        layers.append(LayerCost(f"l{i}", params, base, costs))
    return layers


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("widths", [(2, 3), (2, 3, 4)])
def test_ilp_matches_brute_force(seed: int, widths: tuple[int, ...]) -> None:
    layers = random_problem(seed, 7 if len(widths) == 2 else 5, widths)
    params = {layer.name: layer.params for layer in layers}
    for budget in (min(widths), min(widths) + 0.25, min(widths) + 0.6, (min(widths) + max(widths)) / 2 + 0.1):
        best = brute_force(layers, budget)
        alloc = solve_ilp(layers, budget)
        assert alloc.objective == pytest.approx(best[0], rel=1e-9)
        assert alloc.average_bits <= budget + 1e-12
        assert alloc.average_bits == pytest.approx(average_bits(alloc.bits, params))
        assert alloc.objective == pytest.approx(objective(alloc.bits, layers))
        assert alloc.solver == "ilp" and alloc.solve_seconds >= 0


def test_ilp_weights_the_budget_by_parameters() -> None:
    # Upgrading the big layer gains far more, but only the small one fits the budget:
    # big at 3: (4*3 + 1*2) / 5 = 2.8 > 2.2; small at 3: (4*2 + 1*3) / 5 = 2.2 (exactly on the budget).
    layers = [
        LayerCost("big", 4, 1.0, {2: 1000.0, 3: 1.0}),
        LayerCost("small", 1, 1.0, {2: 10.0, 3: 9.0}),
    ]
    alloc = solve_ilp(layers, 2.2)
    assert alloc.bits == {"big": 2, "small": 3}
    assert alloc.average_bits == pytest.approx(2.2)
    assert alloc.objective == pytest.approx(1009.0)
    assert solve_ilp(layers, 2.8).bits == {"big": 3, "small": 2}
    assert solve_ilp(layers, 3.0).bits == {"big": 3, "small": 3}
    assert solve_ilp(layers, 2.0).bits == {"big": 2, "small": 2}


def test_ilp_respects_pins_and_reports_infeasible() -> None:
    layers = [LayerCost("a", 1, 1.0, {2: 5.0, 3: 1.0}), LayerCost("b", 1, 1.0, {3: 2.0})]
    assert solve_ilp(layers, 2.5).bits == {"a": 2, "b": 3}
    pinned = [LayerCost("a", 1, 1.0, {3: 1.0}), LayerCost("b", 1, 1.0, {3: 2.0})]
    with pytest.raises(UserError, match="infeasible"):
        solve_ilp(pinned + [LayerCost("c", 1, 1.0, {2: 1.0, 3: 0.5})], 2.2)
    with pytest.raises(UserError, match="infeasible"):
        solve_ilp(pinned, 2.2, candidates=(2, 3))
    with pytest.raises(UserError, match="outside"):
        solve_ilp(pinned, 2.2)  # the pinned layers allow only 3 bits


def test_budget_out_of_range_and_bad_candidates() -> None:
    layers = random_problem(0, 3, (2, 3))
    for budget in (1.9, 3.01, float("nan")):
        with pytest.raises(UserError, match="outside"):
            solve_ilp(layers, budget)
        with pytest.raises(UserError, match="outside"):
            rank_allocation(layers, budget, (2, 3))
    assert parse_candidates("3, 2,3") == (2, 3)
    for text in ("2,x", "", "0,2", "2,9"):
        with pytest.raises(UserError):
            parse_candidates(text)


def test_check_pins() -> None:
    names = ["model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]
    assert check_pins({names[0]: 3}, names, (2, 3)) == {names[0]: 3}
    with pytest.raises(UserError, match="unknown module 'model.layers.0.mlp.upproj'.*did you mean"):
        check_pins({"model.layers.0.mlp.upproj": 3}, names, (2, 3))
    with pytest.raises(UserError, match="allowed: the candidates"):
        check_pins({names[0]: 4}, names, (2, 3))


def opt_like(n_layers: int = 12):
    """An OPT-125M-like layer list whose scores reproduce the shipped opt-125m.json of design §6.2:
    q_proj and k_proj of every layer highest, then layer 11's v_proj, then layer 11's fc1."""
    rels = ("k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2")
    names, scores, params = [], [], []
    for i in range(n_layers):
        for rel in rels:
            name = f"model.decoder.layers.{i}.{'self_attn.' if 'proj' in rel else ''}{rel}"
            score = {"q_proj": 100 + i, "k_proj": 200 + i}.get(rel, 1 + i * 0.01 + rels.index(rel) * 0.001)
            if i == n_layers - 1 and rel == "v_proj":
                score = 50.0
            if i == n_layers - 1 and rel == "fc1":
                score = 40.0
            names.append(name)
            scores.append(float(score))
            params.append(4 if rel.startswith("fc") else 1)
    return names, scores, params


def test_rank_rule_reproduces_the_reference_opt_125m_allocation() -> None:
    names, scores, params = opt_like()
    bits = rank_bits(names, scores, budget_mix(2.2, (2, 3)), (2, 3))
    three = {n for n, b in bits.items() if b == 3}
    expected = {n for n in names if n.endswith(("q_proj", "k_proj"))}
    expected |= {"model.decoder.layers.11.self_attn.v_proj", "model.decoder.layers.11.fc1"}
    assert three == expected
    # 144 units, cut at 0.8 * 144 = 115.2: fc1's copies sit at ranks 115..118, so it rounds up to 3 bits
    avg = average_bits(bits, dict(zip(names, params, strict=True)))
    assert avg == pytest.approx(2 + 29 / 144) and round(avg, 4) == 2.2014
    layers = [LayerCost(n, p, s, {2: s, 3: s / 4}) for n, s, p in zip(names, scores, params, strict=True)]
    alloc = rank_allocation(layers, 2.2, (2, 3))
    assert alloc.bits == bits and alloc.solver == "rank" and alloc.average_bits == pytest.approx(avg)
    # the ILP may not overshoot: fc1 of layer 11 does not fit a strict 2.2
    ilp = solve_ilp(layers, 2.2)
    assert ilp.average_bits <= 2.2 and ilp.bits["model.decoder.layers.11.fc1"] == 2
    assert ilp.objective <= objective(bits, layers) or ilp.average_bits < alloc.average_bits


def test_rank_rule_boundary_and_mix() -> None:
    names = [f"model.layers.0.l{i}" for i in range(10)]  # no "fc": one unit each (LLaMA)
    scores = [float(s) for s in (5, 1, 9, 3, 7, 2, 8, 4, 6, 0)]
    bits = rank_bits(names, scores, budget_mix(2.2, (2, 3)), (2, 3))
    # cut at 0.8 * 10 = 8: bisect_right puts ranks 8 and 9 (scores 8, 9) above it
    assert {n for n, b in bits.items() if b == 3} == {names[2], names[6]}
    assert budget_mix(2.2, (2, 3)) == pytest.approx([0.8, 0.2])
    assert budget_mix(2.2, (1, 2, 3)) == pytest.approx([0.0, 0.8, 0.2])
    assert budget_mix(3.5, (2, 3, 4)) == pytest.approx([0.0, 0.5, 0.5])
    assert budget_mix(3.0, (2, 3)) == pytest.approx([0.0, 1.0])
    # p1 = 0: rank 0 gets 2 bits, not 1
    bits = rank_bits(names, scores, budget_mix(2.2, (1, 2, 3)), (1, 2, 3))
    assert min(bits.values()) == 2 and sum(b == 3 for b in bits.values()) == 2
    # all at the lowest / highest width
    assert set(rank_bits(names, scores, budget_mix(2.0, (2, 3)), (2, 3)).values()) == {2}
    assert set(rank_bits(names, scores, budget_mix(3.0, (2, 3)), (2, 3)).values()) == {3}


def test_rank_refuses_pinned_layers() -> None:
    layers = [LayerCost("a", 1, 1.0, {3: 1.0}), LayerCost("b", 1, 2.0, {2: 1.0, 3: 0.5})]
    with pytest.raises(UserError, match="--solver ilp"):
        rank_allocation(layers, 2.5, (2, 3))


def test_fit_recovers_a_power_law_and_continues_linearly() -> None:
    s = np.geomspace(0.1, 1e4, 20)
    fit = fit_errors(s, 5.0 * s**0.7, bits=2, degree=1)
    assert fit.coeffs == pytest.approx((0.7, math.log(5.0)))
    assert fit.rms < 1e-9 and fit.points == 20
    assert fit.predict(np.array([1e6]))[0] == pytest.approx(5.0 * 1e6**0.7)
    quad = ErrorFit(2, (1.0, 0.0, 0.0), x_min=0.0, x_max=1.0, points=3, rms=0.0)  # y = x^2 on [0, 1]
    assert np.log(quad.predict(np.exp(np.array([0.5, 2.0, -1.0])))) == pytest.approx([0.25, 3.0, 0.0])
    with pytest.raises(UserError, match="needs at least 3"):
        fit_errors([1.0, 2.0], [1.0, 2.0], bits=2, degree=2)
    # with the size term: err = 2 S^0.7 n^0.6
    rng = np.random.default_rng(0)
    s2, n2 = np.geomspace(0.1, 1e4, 30), rng.choice([1e4, 1e5, 4e5], 30)
    sized = fit_errors(s2, 2.0 * s2**0.7 * n2**0.6, bits=2, degree=1, params=n2)
    assert sized.coeffs == pytest.approx((0.7, math.log(2.0))) and sized.size_coeff == pytest.approx(0.6)
    assert sized.predict(10.0, 1e5) == pytest.approx(2.0 * 10**0.7 * 1e5**0.6)
    with pytest.raises(UserError, match="size term"):
        fit_errors(
            s2, s2, bits=2, degree=1, params=np.full(30, 7.0)
        )  # one size: the term is not identifiable
    costs = predicted_costs(["a", "b"], [1, 2], [1.0, 10.0], {2: fit, 3: fit}, pinned={"b": 3})
    assert set(costs[0].costs) == {2, 3} and set(costs[1].costs) == {3}
    assert costs[0].costs[2] == pytest.approx(5.0)


def test_criterion_matches_the_formula(make_layer) -> None:
    w, h, _ = make_layer(32, 48, tokens=256)
    h = h.clone()
    h[5, :] = 0.0
    h[:, 5] = 0.0  # a dead input: its column of W is zeroed, H_55 = 1
    w64, h64 = w.double().clone(), h.clone()
    w64[:, 5] = 0.0
    h64[5, 5] = 1.0
    h64 += 0.01 * torch.diagonal(h64).mean() * torch.eye(48, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h64)), upper=True)
    z = w64 / torch.diagonal(u)[None, :]
    expected = float(torch.linalg.norm(z) * z.var(unbiased=True))
    assert criterion(w, h) == pytest.approx(expected, rel=1e-10)
    assert (w[:, 5] != 0).any()  # the caller's weight is untouched
    # H / n instead of H rescales every layer's S by the same factor n^(-3/2): the ranking is kept
    w, h, _ = make_layer(32, 48, tokens=256, seed=1)
    assert criterion(w, h * 4.0) == pytest.approx(criterion(w, h) * 8.0, rel=1e-9)


def test_kendall_and_positions() -> None:
    layers = [
        LayerSensitivity(f"l{i}", 0, "x", (2, 2), float(c), {2: float(e), 3: float(-e)})
        for i, (c, e) in enumerate([(1, 1), (2, 3), (3, 2), (4, 4)])
    ]
    taus = kendall_taus(layers)
    assert taus[2]["tau"] == pytest.approx(2 / 3) and taus[3]["tau"] == pytest.approx(-2 / 3)
    assert taus[2]["layers"] == 4
    assert measured_positions(10, None) == set(range(10))
    assert measured_positions(10, 3) == {0, 4, 9}
    assert 0 in measured_positions(10, 4) and 9 in measured_positions(10, 4)
