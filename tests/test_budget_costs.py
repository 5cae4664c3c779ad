"""Hardware budgets' per-layer costs (llm1bit.budget_costs), torch-free: the cost table summed over any allocation
is what the simulator computes for the allocation whole (dense exactly; MoE exactly for bytes and energy, an upper
bound for time), and the stored bytes follow the packed layout."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from llm1bit.budget_costs import (
    KINDS,
    Storage,
    Target,
    best_allocation,
    cost_table,
    measure,
    resource,
    with_widths,
)
from llm1bit.hardware import load_hardware
from llm1bit.layer_widths import module_sites
from llm1bit.models import load_hf_config

CONFIGS = Path(__file__).resolve().parent / "hf_configs"


def linear_value(table, bits) -> float:
    return table.fixed + sum(table.per[name][b] for name, b in bits.items())


@pytest.mark.parametrize("hw, batch", [("cloud", 1), ("edge", 1), ("cloud", 64)])
@pytest.mark.parametrize("storage", [Storage("lat", -1), Storage("acc", 128), Storage("lat", 128)])
def test_dense_table_sums_to_the_simulated_allocation(hw: str, batch: int, storage: Storage) -> None:
    model = load_hf_config(CONFIGS / "phi-3-mini-4k-instruct.json")
    names = sorted(module_sites(model))
    target = Target(load_hardware(hw), 2048, "decode", batch)
    rng = random.Random(0)
    for kind in KINDS:
        table = cost_table(kind, model, dict.fromkeys(names, (2, 3, 4)), storage, target)
        for _ in range(3):
            bits = {name: rng.choice((2, 3, 4)) for name in names}
            simulated = resource(kind, measure(kind, with_widths(model, bits, storage), target), target)
            assert linear_value(table, bits) == pytest.approx(simulated, rel=1e-12), kind


def test_moe_table_exact_for_bytes_and_energy_an_upper_bound_for_time() -> None:
    model = load_hf_config(CONFIGS / "qwen1.5-moe-a2.7b.json")
    sites = module_sites(model)
    names = sorted(sites)
    assert any(site.share < 1 for site in sites.values())  # expert slices: their own widths
    storage = Storage("lat", -1)
    rng = random.Random(1)
    for hw, batch in (("cloud", 1), ("edge", 8)):
        target = Target(load_hardware(hw), 2048, "decode", batch)
        for kind in KINDS:
            table = cost_table(kind, model, dict.fromkeys(names, (2, 3)), storage, target)
            bits = {name: rng.choice((2, 3)) for name in names}
            simulated = resource(kind, measure(kind, with_widths(model, bits, storage), target), target)
            if kind == "min_tokens_per_s":
                assert linear_value(table, bits) >= simulated * (1 - 1e-12)
            else:
                assert linear_value(table, bits) == pytest.approx(simulated, rel=1e-12), kind
            best = best_allocation(table)
            assert set(best.values()) == {2}


def test_stored_bytes_follow_the_packed_layout() -> None:
    # lat, no groupsize: codes q x N x ceil(K/8), one byte per term of each 8-column x ceil(N/8)-row block's scale
    assert Storage("lat", -1).nbytes(3, 64, 172) == 3 * 64 * 22 + 22 * 8 * 3 * 3
    # lat, group 128: 16-row blocks
    assert Storage("lat", 128).nbytes(2, 64, 64) == 2 * 64 * 8 + 8 * 4 * 2 * 3
    # acc: a scale tuple per column, a float32 rescale per input, rotation key and checksum
    assert Storage("acc", -1).nbytes(2, 64, 64) == 2 * 64 * 8 + 64 * 2 * 3 + 4 * 64 + 24
    assert Storage("acc", -1, incoherence=False).nbytes(2, 64, 64) == 2 * 64 * 8 + 64 * 2 * 3
