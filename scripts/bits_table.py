"""The README's "what 1-bit buys" table: decode tokens/s, MatMul-free share of time and energy, and the
derived whole-model S_total (time, energy) against the 16-bit point, per model, hardware and weight width.

Usage: python scripts/bits_table.py [--models opt-350m,opt-6.7b,opt-66b,llama-7b] [--hw cloud,edge]
       [--seq-len 2048] [--bits 16,4,3,1.58] [--backend analytic] [--energy-table horowitz-45nm]"""

from __future__ import annotations

import argparse

from llm1bit.amdahl import derive
from llm1bit.costs import Pricing
from llm1bit.energy import load_energy_table
from llm1bit.hardware import load_hardware
from llm1bit.models import resolve_models
from llm1bit.precision import Precision
from llm1bit.sweep import points, run_points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="opt-350m,opt-6.7b,opt-66b,llama-7b")
    parser.add_argument("--hw", default="cloud,edge")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--bits", default="16,4,3,1.58")
    parser.add_argument("--backend", default="analytic")
    parser.add_argument("--energy-table", default="horowitz-45nm")
    args = parser.parse_args()
    table = load_energy_table(args.energy_table)
    pricings = [Pricing(Precision.build(float(b)), table) for b in args.bits.split(",")]
    base = Pricing(Precision(), table)
    hws = [load_hardware(h) for h in args.hw.split(",")]
    pts = points(resolve_models(args.models), hws, [args.seq_len], [None], pricings=[base, *pricings])
    splits = dict(zip(pts, run_points(pts, args.backend)))
    print(f"l = {args.seq_len}, decode batch 1, {args.backend} backend, energy table {table.name}\n")
    print(
        "| model | hw | weights | tokens/s | MatMul-free share of time | of energy | S_total time | S_total energy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for p in pts:
        if p.pricing == base and base not in pricings:
            continue
        split = splits[p]
        ref = splits[type(p)(p.model, p.hw, p.seq_len, p.phase, p.batch, base)]
        d = derive(ref, split)
        prec = p.pricing.precision
        print(
            f"| {p.model.name} | {p.hw.name} | {prec.weight_bits:g} ({prec.weight_format}) | {split.tokens_per_s:.3g} "
            f"| {split.frac_time:.3f} | {split.frac_energy:.3f} | {d['s_total_time']:.2f} | {d['s_total_energy']:.2f} |"
        )


if __name__ == "__main__":
    main()
