"""The bits files of fig17: one `llm1bit bits` analysis, then allocations under average-bits and hardware budgets.

For each average-bits budget B: the ILP (`ilp-bits-B.json`) and the rank rule (`rank-B.json`); then the
hardware-budget ILP at what that ILP's allocation reaches when simulated (decode, l = 2048, analytic): its tokens/s
on cloud at batch 1 (`ilp-tps-cloud-B.json`) and at batch 16 (`ilp-tps-cloud-b16-B.json`, where activations make
every projection's third bit cost memory time), its energy per token on edge (`ilp-mj-edge-B.json`) and its tokens/s
on edge (`ilp-tps-edge-B.json`); in extra/ (not quantized by fig17_results.sh), its energy per token on cloud
(`ilp-mj-cloud-B.json`). Each file is what `llm1bit bits` would write for that budget (the analysis is measured
once, not once per file). `summary.json` lists every allocation's objective, simulated tokens/s and mJ per token on
both arrays at batch 1 (and cloud tokens/s at batch 16), and how many modules of each projection got the wider
width. scripts/fig17_results.sh quantizes and evaluates them.

The analysis uses scripts/bench_bits.py's settings (shiftaddllm lat, groupsize -1, 50 BCQ rounds, seed 0,
candidates 2 and 3, `--cost output` on 16 windows, fit degree 1), so that the README's mixed-bit rows and fig17
share them.

Usage: python scripts/fig17_allocations.py --model M --calib C --nsamples 16 --seqlen 512 --budgets 2.2,2.5 OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from llm1bit.budget_costs import Target, measure, with_widths
from llm1bit.format.bits_file import write_bits_file
from llm1bit.hardware import load_hardware
from llm1bit.quant.bits.allocation import allocate
from llm1bit.quant.bits.analysis import analyse, result_json
from llm1bit.quant.bits.hardware import AVERAGE_BITS, Budget, hardware_budget
from llm1bit.quant.numerics.methods import QuantSpec

CANDIDATES = (2, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--budgets", default="2.2,2.5")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seq-len", type=int, default=2048, help="simulated context length")
    args = p.parse_args()

    from llm1bit.quant.calib import calibration_windows
    from llm1bit.quant.hf.loading import load_model

    args.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(args.model)
    windows = calibration_windows(args.calib, tokenizer, args.nsamples, args.seqlen, 0)
    spec = QuantSpec(method="shiftaddllm", mode="lat", groupsize=-1, bcq_rounds=50, seed=0).validate()
    result = analyse(model, windows, spec, CANDIDATES, None, "ilp", 1, None, None, False, device=args.device)
    targets = {hw: Target(load_hardware(hw), args.seq_len, "decode", 1) for hw in ("cloud", "edge")}
    # weight bytes, never binding: the architecture and the storage every allocation is simulated with
    hardware = hardware_budget(
        model, args.model, Budget("max_weight_bytes", 1e30), spec, CANDIDATES, None, targets["cloud"]
    )
    base = hardware.model
    settings = {
        "model": args.model, "calib": args.calib, "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": 0,
        "candidates": list(CANDIDATES), "cost": "output", "output_windows": min(16, args.nsamples),
        "method": "shiftaddllm", "mode": "lat", "groupsize": -1, "bcq_rounds": 50, "apot_terms": 3,
        "incoherence": False, "fit_degree": 1, "fit_size": True, "fit_layers": len(result.layers), "pinned": {},
        "device": args.device, "script": "scripts/fig17_allocations.py",
    }  # fmt: skip

    def simulated(bits: dict) -> dict:
        priced = with_widths(base, bits, hardware.storage)
        return {
            f"{hw}_{what}": measure(kind, priced, target)
            for hw, target in targets.items()
            for what, kind in (
                ("tokens_per_s", "min_tokens_per_s"),
                ("mj_per_token", "max_energy_per_token_mj"),
            )
        }

    batch16 = dataclasses.replace(targets["cloud"], batch=16)

    def wider(bits: dict) -> dict:
        """Per projection kind (q_proj, ..., down_proj): modules at the widest candidate, of how many."""
        counts: dict = {}
        for name, b in bits.items():
            at, of = counts.get(name.rsplit(".", 1)[-1], (0, 0))
            counts[name.rsplit(".", 1)[-1]] = (at + (b == max(CANDIDATES)), of + 1)
        return {kind: f"{at}/{of}" for kind, (at, of) in counts.items()}

    summary = {}
    extra = args.out / "extra"

    def write(
        name: str, alloc, budget: Budget, predicted: float, target: Target | None, folder: Path
    ) -> None:
        res = dataclasses.replace(result, allocation=alloc, predicted=predicted)
        extra = {"budget": budget.to_dict(), "target": None if target is None else target.to_dict()}
        data = result_json(res, budget, {**settings, **extra, "solver": alloc.solver})
        folder.mkdir(exist_ok=True)
        write_bits_file(folder / f"{name}.json", data)
        summary[name] = {
            "budget": budget.to_dict(),
            "predicted": predicted,
            "average_bits": alloc.average_bits,
            "objective": alloc.objective,
            **simulated(alloc.bits),
            "cloud16_tokens_per_s": measure(
                "min_tokens_per_s", with_widths(base, alloc.bits, hardware.storage), batch16
            ),
            f"modules_at_{max(CANDIDATES)}_bits": wider(alloc.bits),
        }
        print(f"{name}: average {alloc.average_bits:.4f} bits, objective {alloc.objective:.6g}", flush=True)

    for text in args.budgets.split(","):
        b = float(text)
        avg = Budget(AVERAGE_BITS, b)
        ilp = allocate(result.costs, b, CANDIDATES, "ilp")
        write(f"ilp-bits-{b:g}", ilp, avg, ilp.average_bits, None, args.out)
        rank = allocate(result.costs, b, CANDIDATES, "rank")
        write(f"rank-{b:g}", rank, avg, rank.average_bits, None, args.out)
        reached = summary[f"ilp-bits-{b:g}"]
        # (name, kind, target, what the average-bits ILP reaches, folder): extra/ is not quantized by the script
        for name, kind, target, key, folder in (
            (f"ilp-tps-cloud-{b:g}", "min_tokens_per_s", targets["cloud"], "cloud_tokens_per_s", args.out),
            (f"ilp-mj-edge-{b:g}", "max_energy_per_token_mj", targets["edge"], "edge_mj_per_token", args.out),
            (f"ilp-tps-edge-{b:g}", "min_tokens_per_s", targets["edge"], "edge_tokens_per_s", args.out),
            (f"ilp-mj-cloud-{b:g}", "max_energy_per_token_mj", targets["cloud"], "cloud_mj_per_token", extra),
            (f"ilp-tps-cloud-b16-{b:g}", "min_tokens_per_s", batch16, "cloud16_tokens_per_s", args.out),
        ):
            budget = Budget(kind, reached[key])
            hw_budget = hardware_budget(model, args.model, budget, spec, CANDIDATES, None, target)
            alloc, predicted = hw_budget.allocate(result.costs)
            write(name, alloc, budget, predicted, target, folder)
            summary[name]["layers_differing_from_average_bits_ilp"] = sum(
                alloc.bits[n] != ilp.bits[n] for n in ilp.bits
            )
            summary[name]["objective_vs_average_bits_ilp"] = alloc.objective / ilp.objective
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}/summary.json", flush=True)


if __name__ == "__main__":
    main()
