"""Regenerate topologies/: the SCALE-Sim GEMM topology CSV of every built-in model's decode step.

Usage: python scripts/make_topologies.py [--out topologies] [--seq-lens 128,...,4096]"""

from __future__ import annotations

import argparse
from pathlib import Path

from llm1bit.atomic import atomic_write_text
from llm1bit.backends.scalesim_runner import topology_csv
from llm1bit.models import PAPER_MODELS
from llm1bit.workload import build_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("topologies"))
    parser.add_argument("--seq-lens", default="128,256,512,1024,2048,4096")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lengths = [int(x) for x in args.seq_lens.split(",")]
    for model in PAPER_MODELS.values():
        for seq_len in lengths:
            gemms = build_workload(model, seq_len)
            path = args.out / f"{model.name}_decode_l{seq_len}.csv"
            atomic_write_text(path, topology_csv([(g.name, g.m, g.n, g.k) for g in gemms]))
    print(f"wrote {len(PAPER_MODELS) * len(lengths)} topologies to {args.out}/")


if __name__ == "__main__":
    main()
