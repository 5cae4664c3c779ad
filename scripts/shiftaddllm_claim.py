"""ShiftAddLLM's energy claim for one OPT-66B MLP layer, recomputed with llm1bit's cost model.

The paper (§3): fc1 of OPT-66B (9216 -> 36864) on one token, FP16 MACs 80.36 "J" (mJ in its script)
vs 3-bit ShiftAddLLM 9.77, an 87.8 % saving, from its Eyeriss-like script. Here: the same GEMM
(M = 1, N = 36864, K = 9216) simulated on the cloud and edge arrays (SCALE-Sim's closed form),
priced with its unit table (`--energy-table shiftaddllm`, or any other), per weight format.

Usage: python scripts/shiftaddllm_claim.py [--energy-table shiftaddllm] [--hw cloud,edge]"""

from __future__ import annotations

import argparse

from llm1bit.backends.analytic import analytic_counters
from llm1bit.costs import Pricing, price
from llm1bit.energy import load_energy_table
from llm1bit.hardware import load_hardware
from llm1bit.precision import Precision
from llm1bit.workload import MATMUL_FREE, Gemm

PAPER = {"fp16_mj": 80.36, "shiftaddllm3_mj": 9.77, "saving": 0.878}
VARIANTS = (("FP16 MACs", 16, "fp"), ("int3 (GPTQ, g128)", 3, "int"), ("ShiftAddLLM lat 3-bit", 3, "bcq-lat"),
            ("ShiftAddLLM acc 3-bit", 3, "bcq-acc"))  # fmt: skip


def layer_energy(hw_name: str, table_name: str, bits: float, fmt: str) -> tuple[float, dict]:
    hw = load_hardware(hw_name)
    gemm = Gemm("fc1", MATMUL_FREE, 1, 36864, 9216, 1)
    cost = price(
        gemm,
        analytic_counters(*gemm.shape, hw),
        hw,
        Pricing(Precision.build(bits, 16, 16, fmt), load_energy_table(table_name)),
    )
    return cost.energy_j, {"compute": cost.ops_j, "sram": cost.sram_j, "dram": cost.dram_j}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--energy-table", default="shiftaddllm")
    parser.add_argument("--hw", default="cloud,edge")
    args = parser.parse_args()
    print(
        f"paper: FP16 {PAPER['fp16_mj']} mJ, 3-bit ShiftAddLLM {PAPER['shiftaddllm3_mj']} mJ, saving {PAPER['saving']:.1%}"
    )
    for hw in args.hw.split(","):
        base, _ = layer_energy(hw, args.energy_table, 16, "fp")
        for label, bits, fmt in VARIANTS:
            e, parts = layer_energy(hw, args.energy_table, bits, fmt)
            split = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in parts.items())
            print(f"{hw:6s} {label:24s} {e * 1e3:8.2f} mJ  saving {1 - e / base:6.1%}   ({split} mJ)")


if __name__ == "__main__":
    main()
