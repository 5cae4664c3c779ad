"""Mixed-bit allocation on SmolLM2-135M: Kendall tau, ILP vs rank rule, perplexity, ILP solve time.

1. `llm1bit bits`'s analysis (criterion + measured shiftaddllm errors of every linear at each candidate
   width, FP-model Hessians, and each layer's relative decoder-output error) on --nsamples x --seqlen
   windows of wikitext-2/valid.tokenized.txt: Kendall tau per width; allocations at --budget by the ILP
   with the output cost (the default of `llm1bit bits`), by the ILP with the weight cost (the paper's
   Eq. 4 on predicted reparameterization errors alone), by the rank rule, and (when the rank rule lands
   on another average) by the ILP at that average too, with their objectives.
2. For uniform-lo, each allocation and uniform-hi: `quantize_model` (same method, mode and calibration)
   with the allocation as bits config, then WikiText-2 test perplexity on the first --eval-windows
   non-overlapping windows of 2048 tokens of test.gptq-join.txt.
3. ILP solve time (PuLP + CBC, wall time of `solve_ilp`) on synthetic 100- and 210-layer problems.

Writes <out>.md, <out>.json and the allocation files <out>-<name>.json; with --figures DIR also the
sal_fig4/5/7 figures of SmolLM2.

    python scripts/bench_bits.py --nsamples 16 --seqlen 512 --eval-windows 20
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--gguf", type=Path, help="path to SmolLM2-135M-Instruct.Q4_1.gguf (default: fetch into --cache)"
    )
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "smollm2")
    p.add_argument("--calib", type=Path, default=DATA / "wikitext-2" / "valid.tokenized.txt")
    p.add_argument("--eval", type=Path, default=DATA / "wikitext-2" / "test.gptq-join.txt")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-windows", type=int, default=20)
    p.add_argument("--eval-seqlen", type=int, default=2048)
    p.add_argument("--budget", type=float, default=2.2)
    p.add_argument("--candidates", default="2,3")
    p.add_argument("--mode", default="lat")
    p.add_argument("--bcq-rounds", type=int, default=50)
    p.add_argument("--fit-degree", type=int, default=1)
    p.add_argument("--output-windows", type=int, default=16)
    p.add_argument(
        "--allocations",
        help="comma list of allocation names to evaluate (default: all), e.g. ilp-2.2,rank-2.2",
    )
    p.add_argument("--skip-ppl", action="store_true", help="only tau, objectives and ILP timings")
    p.add_argument("--with-fp", action="store_true", help="also the FP model's perplexity")
    p.add_argument("--figures", type=Path, help="also draw sal_fig4/5/7 of SmolLM2 into this folder")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_bits")
    return p.parse_args(argv)


def synthetic_problem(n_layers: int, seed: int = 0):
    """LLaMA-like layer sizes and power-law predicted errors, 2 and 3 bits."""
    import numpy as np

    from llm1bit.quant.bits.allocation import LayerCost

    rng = np.random.default_rng(seed)
    shapes = [
        (4096, 4096),
        (1024, 4096),
        (1024, 4096),
        (4096, 4096),
        (11008, 4096),
        (11008, 4096),
        (4096, 11008),
    ]
    layers = []
    for i in range(n_layers):
        n, k = shapes[i % len(shapes)]
        s = float(np.exp(rng.normal(3.0, 2.0)))
        e2 = 20.0 * s**0.7 * float(np.exp(rng.normal(0, 0.3)))
        layers.append(
            LayerCost(f"layer{i}", n * k, s, {2: e2, 3: e2 * 0.3 * float(np.exp(rng.normal(0, 0.1)))})
        )
    return layers


def ilp_timings(budget: float) -> list[dict]:
    from llm1bit.quant.bits.allocation import solve_ilp

    rows = []
    for n_layers in (100, 210):
        layers = synthetic_problem(n_layers)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            alloc = solve_ilp(layers, budget)
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "layers": n_layers,
                "median_s": statistics.median(times),
                "max_s": max(times),
                "average_bits": alloc.average_bits,
            }
        )
        print(
            f"ILP {n_layers} layers: median {statistics.median(times):.3f} s, max {max(times):.3f} s",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch
    from bench_quantize import fetch_gguf

    from llm1bit.quant.bits.allocation import (
        average_bits,
        objective,
        parse_candidates,
        predicted_costs,
        rank_allocation,
        solve_ilp,
    )
    from llm1bit.quant.bits.analysis import analyse, model_tag, result_json
    from llm1bit.quant.calib import calibration_windows, tokenize_file
    from llm1bit.quant.eval.perplexity import perplexity
    from llm1bit.quant.hf.loading import load_model
    from llm1bit.quant.numerics.methods import QuantSpec
    from llm1bit.quant.quantize import quantize_model

    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cands = parse_candidates(args.candidates)
    report: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    report["settings"]["torch_threads"] = torch.get_num_threads()
    report["settings"]["date"] = datetime.datetime.now().isoformat(timespec="minutes")

    report["ilp_timing"] = ilp_timings(args.budget)

    gguf = args.gguf or fetch_gguf(args.cache)
    t0 = time.perf_counter()
    model, tokenizer = load_model(gguf)
    print(f"loaded {gguf.name} in {time.perf_counter() - t0:.1f} s", flush=True)
    windows = calibration_windows(args.calib, tokenizer, args.nsamples, args.seqlen, args.seed)
    spec = QuantSpec(
        method="shiftaddllm", mode=args.mode, bcq_rounds=args.bcq_rounds, seed=args.seed
    ).validate()
    t0 = time.perf_counter()
    start = time.perf_counter()
    result = analyse(
        model,
        windows,
        spec,
        cands,
        args.budget,
        "ilp",
        args.fit_degree,
        None,
        None,
        record_errors=True,
        progress=lambda text: print(f"[{time.perf_counter() - start:7.1f} s] {text}", flush=True),
        cost="output",
        output_windows=args.output_windows,
    )
    print(f"analysis in {time.perf_counter() - t0:.1f} s: {result.timings}", flush=True)
    report["kendall_tau"] = {str(b): t for b, t in result.taus.items()}
    report["kendall_tau_per_param"] = {str(b): t for b, t in result.taus_per_param.items()}
    report["kendall_tau_refined"] = {str(b): t for b, t in result.taus_refined.items()}
    report["kendall_tau_refined_held_out"] = {str(b): t for b, t in (result.taus_held_out or {}).items()}
    report["fits"] = {str(b): f.to_dict() for b, f in result.fits.items()}
    report["analysis_timings"] = result.timings
    for b, t in result.taus.items():
        print(
            f"tau {b} bits: {t['tau']:.4f} (per param {result.taus_per_param[b]['tau']:.4f}, "
            f"refined {result.taus_refined[b]['tau']:.4f}, held out "
            f"{report['kendall_tau_refined_held_out'].get(str(b), {}).get('tau', float('nan')):.4f})",
            flush=True,
        )

    settings = {
        "model": str(gguf), "calib": str(args.calib), "nsamples": args.nsamples, "seqlen": args.seqlen,
        "seed": args.seed, "candidates": list(cands), "budget": args.budget, "method": "shiftaddllm",
        "mode": args.mode, "bcq_rounds": args.bcq_rounds, "fit_degree": args.fit_degree, "fit_size": True,
        "cost": "output", "output_windows": min(args.output_windows, args.nsamples),
    }  # fmt: skip
    ilp = result.allocation
    weight_costs = predicted_costs(
        [c.name for c in result.costs], [c.params for c in result.costs], [c.criterion for c in result.costs],
        result.fits,
    )  # fmt: skip
    ilp_weight = solve_ilp(weight_costs, args.budget, cands)
    ilp_weight.objective = objective(ilp_weight.bits, result.costs)
    rank = rank_allocation(result.costs, args.budget, cands)
    params = {c.name: c.params for c in result.costs}
    names = [c.name for c in result.costs]
    allocations = {
        f"uniform-{min(cands)}": dict.fromkeys(names, min(cands)),
        f"ilp-{args.budget:g}": ilp.bits,
        f"ilp-weight-{args.budget:g}": ilp_weight.bits,
        f"rank-{args.budget:g}": rank.bits,
    }
    solvers = {
        f"ilp-{args.budget:g}": ilp,
        f"ilp-weight-{args.budget:g}": ilp_weight,
        f"rank-{args.budget:g}": rank,
    }
    allocations[f"uniform-{max(cands)}"] = dict.fromkeys(names, max(cands))
    if abs(rank.average_bits - args.budget) > 1e-6:  # the ILP at the average the rank rule lands on
        matched = solve_ilp(result.costs, rank.average_bits, cands)
        allocations[f"ilp-{rank.average_bits:.4f}"] = matched.bits
        solvers[f"ilp-{rank.average_bits:.4f}"] = matched
    for name, alloc in solvers.items():
        res = copy.copy(result)
        res.allocation = alloc
        budget = rank.average_bits if name == f"ilp-{rank.average_bits:.4f}" else args.budget
        data = result_json(res, budget, settings)
        Path(f"{args.out}-{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    if args.figures:
        from llm1bit.figures.shiftaddllm import draw_figures

        args.figures.mkdir(parents=True, exist_ok=True)
        for path in draw_figures(
            ("sal_fig4", "sal_fig5", "sal_fig7"), result, args.figures, model_tag(str(gguf)), settings
        ):
            print(f"wrote {path}", flush=True)

    # measured (true) error of each allocation too: every layer was measured at every width
    measured = {layer.name: layer.errors for layer in result.layers}
    outputs = {layer.name: layer.output_errors for layer in result.layers}
    rows = []
    for name, bits in allocations.items():
        rows.append(
            {
                "allocation": name,
                "average_bits": average_bits(bits, params),
                "objective": objective(bits, result.costs),
                "objective_weight": objective(bits, weight_costs),
                "measured_error_sum": sum(measured[n][b] for n, b in bits.items()),
                "measured_output_sum": sum(outputs[n][b] for n, b in bits.items()),
                "layers_at_max": sum(b == max(cands) for b in bits.values()),
                "solve_s": solvers[name].solve_seconds if name in solvers else None,
                "perplexity": None,
            }
        )
    report["rows"] = rows
    write_report(args, report)

    if not args.skip_ppl:
        ids = tokenize_file(args.eval, tokenizer)
        if args.with_fp:
            t0 = time.perf_counter()
            fp = perplexity(model, ids, args.eval_seqlen, max_windows=args.eval_windows)
            report["fp_perplexity"] = fp.perplexity
            print(f"fp: ppl {fp.perplexity:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        wanted = set(args.allocations.split(",")) if args.allocations else set(allocations)
        for row in rows:
            if row["allocation"] not in wanted:
                continue
            bits = allocations[row["allocation"]]
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            quantize_model(m, spec.with_bits(min(cands)), windows, bits_config=bits)
            row["quantize_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            row["perplexity"] = perplexity(m, ids, args.eval_seqlen, max_windows=args.eval_windows).perplexity
            row["eval_s"] = time.perf_counter() - t0
            del m
            print(f"{row['allocation']}: ppl {row['perplexity']:.3f} ({row})", flush=True)
            write_report(args, report)
    return 0


def write_report(args: argparse.Namespace, report: dict) -> None:
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    s = report["settings"]
    lines = [
        "## Mixed-bit allocation on SmolLM2-135M-Instruct (GGUF, dequantized to float32)",
        "",
        f"Analysis and quantization: shiftaddllm {s['mode']}, bcq rounds {s['bcq_rounds']}, calibration "
        f"{s['nsamples']} x {s['seqlen']} tokens of {Path(s['calib']).name} (seed {s['seed']}); candidates "
        f"{s['candidates']}, budget {s['budget']}, fit log(err) = poly{s['fit_degree']}(log S) + g log(params). Perplexity: first "
        f"{s['eval_windows']} non-overlapping {s['eval_seqlen']}-token windows of {Path(s['eval']).name}. "
        f"Measured error = QuantizedWeight.error (summed GPTQ loss) with FP-model Hessians; output error = "
        f"relative decoder-layer output error on {s['output_windows']} windows; objective = summed "
        f"predicted error x output gain (`--cost output`), objective_weight = summed predicted error "
        f"(`--cost weight`). {s['date']}, torch threads {s['torch_threads']}.",
        "",
        "Kendall tau vs measured reparameterization error, all layers: "
        + "; ".join(
            f"{b} bits: refined criterion {report['kendall_tau_refined'][b]['tau']:.4f} (each block "
            f"predicted by a fit to the others {report['kendall_tau_refined_held_out'].get(b, {}).get('tau', float('nan')):.4f}); "
            f"S alone {t['tau']:.4f}, per parameter {report['kendall_tau_per_param'][b]['tau']:.4f}"
            for b, t in report.get("kendall_tau", {}).items()
        ),
        "",
    ]
    if "fp_perplexity" in report:
        lines += [f"FP perplexity: {report['fp_perplexity']:.3f}", ""]
    cols = [
        "allocation",
        "average_bits",
        "objective",
        "objective_weight",
        "measured_error_sum",
        "measured_output_sum",
        "layers_at_max",
        "solve_s",
        "perplexity",
    ]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in report.get("rows", []):
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "ILP solve time (PuLP 3.3 + bundled CBC, synthetic problems, 2 widths, 5 runs):", ""]
    for t in report.get("ilp_timing", []):
        lines.append(f"- {t['layers']} layers: median {t['median_s']:.3f} s, max {t['max_s']:.3f} s")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
