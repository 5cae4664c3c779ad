"""Which per-layer error tracks perplexity? Ground truth for the costs of `llm1bit bits` on SmolLM2-135M.

For every linear of the chosen decoder blocks: quantize that one layer (shiftaddllm, FP-model Hessians
from --nsamples x --seqlen calibration windows of wikitext-2/valid.tokenized.txt), keep every other layer
in full precision, and measure the increase of the mean next-token NLL on --eval-windows held-out windows
of wikitext-2/test.gptq-join.txt. Then Kendall tau / Spearman rho of each per-layer measure against it:

    criterion         S = ||W/d||_F std(W/d)^2 (design §6.1)
    reparam_error     the solver's GPTQ loss (what the paper's criterion predicts)
    output_error      the relative decoder-layer output error `llm1bit bits` measures (--cost output)

Writes <out>.json and <out>.md.

    python scripts/bench_layer_nll.py --bits 2 --blocks 0,3,7,11,15,19,23,27,29
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))
MEASURES = ("criterion", "reparam_error", "output_error")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path, help="SmolLM2-135M-Instruct.Q4_1.gguf (default: fetch into --cache)")
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "smollm2")
    p.add_argument("--calib", type=Path, default=DATA / "wikitext-2" / "valid.tokenized.txt")
    p.add_argument("--eval", type=Path, default=DATA / "wikitext-2" / "test.gptq-join.txt")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--output-windows", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--mode", default="lat")
    p.add_argument("--blocks", default="0,3,7,11,15,19,23,27,29", help="decoder blocks whose linears to test")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_layer_nll")
    return p.parse_args(argv)


def mean_nll(model, windows) -> float:
    import torch

    with torch.no_grad():
        return float(model(input_ids=windows, labels=windows).loss)


def main(argv: list[str] | None = None) -> int:
    import torch
    from bench_quantize import fetch_gguf
    from scipy.stats import kendalltau, spearmanr

    from llm1bit.quant.bits.sensitivity import criterion, output_error, quantize_layer, walk_fp_blocks
    from llm1bit.quant.calib import calibration_windows
    from llm1bit.quant.hf.loading import load_model
    from llm1bit.quant.numerics.methods import QuantSpec

    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    blocks = {int(b) for b in args.blocks.split(",")}
    gguf = args.gguf or fetch_gguf(args.cache)
    model, tokenizer = load_model(gguf)
    calib = calibration_windows(args.calib, tokenizer, args.nsamples, args.seqlen, args.seed)
    held_out = calibration_windows(args.eval, tokenizer, args.eval_windows, args.eval_seqlen, args.seed + 1)
    spec = QuantSpec(method="shiftaddllm", mode=args.mode, seed=args.seed).validate().with_bits(args.bits)

    t0 = time.perf_counter()
    rows, weights = [], {}
    for block in walk_fp_blocks(model, calib):
        if block.index not in blocks:
            continue
        for info in block.linears:
            quantized = quantize_layer(info.weight, info.hessian, spec)
            weights[info.name] = quantized.dequantize()
            rows.append(
                {
                    "name": info.name,
                    "block": info.block,
                    "sublayer": info.sublayer,
                    "params": info.weight.numel(),
                    "criterion": criterion(info.weight, info.hessian),
                    "reparam_error": float(quantized.error),
                    "output_error": output_error(
                        block, info.sublayer, weights[info.name], args.output_windows
                    ),
                }
            )
    print(f"measured {len(rows)} layers in {time.perf_counter() - t0:.0f} s", flush=True)

    base = mean_nll(model, held_out)
    for row in rows:
        t0 = time.perf_counter()
        linear = model.get_submodule(row["name"])
        original = linear.weight.data
        linear.weight.data = weights[row["name"]].to(original.dtype)
        try:
            row["delta_nll"] = mean_nll(model, held_out) - base
        finally:
            linear.weight.data = original
        print(
            f"{row['name']}: delta NLL {row['delta_nll']:+.5f} ({time.perf_counter() - t0:.1f} s)", flush=True
        )

    truth = [row["delta_nll"] for row in rows]
    summary = {
        m: {
            "kendall_tau": float(kendalltau([row[m] for row in rows], truth).statistic),
            "spearman_rho": float(spearmanr([row[m] for row in rows], truth).statistic),
        }
        for m in MEASURES
    }
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings.update(
        gguf=str(gguf),
        torch_threads=torch.get_num_threads(),
        date=datetime.datetime.now().isoformat(timespec="minutes"),
    )
    report = {"settings": settings, "base_nll": base, "agreement": summary, "layers": rows}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"## Per-layer measures vs the NLL cost of quantizing one layer ({args.bits} bits, {args.mode})",
        "",
        f"{len(rows)} linears of blocks {sorted(blocks)} of {gguf.name}; calibration {args.nsamples} x "
        f"{args.seqlen} of {args.calib.name}, output error on {min(args.output_windows, args.nsamples)} of "
        f"them; NLL on {args.eval_windows} x {args.eval_seqlen} windows of {args.eval.name} (FP {base:.4f}). "
        f"{settings['date']}.",
        "",
        "| measure | Kendall tau | Spearman rho |",
        "|---|---|---|",
        *(f"| {m} | {s['kendall_tau']:.3f} | {s['spearman_rho']:.3f} |" for m, s in summary.items()),
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
