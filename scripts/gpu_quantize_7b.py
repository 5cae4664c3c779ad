"""Issue 22's GPU measurement: `quantize` a Llama-2-7B-shaped model per decoder layer on one CUDA device.

    python scripts/gpu_quantize_7b.py --json out.json      # CUDA: 4 layers, 128 x 2048 random tokens, lat 3-bit g128
    python scripts/gpu_quantize_7b.py --device cpu --layers 1 --nsamples 2 --seqlen 64 --shrink 32   # a smoke run

The model is transformers' LlamaForCausalLM built from Llama-2-7B's configuration (hidden 4096, MLP 11008, 32
heads, 32000 tokens) with random weights (--seed), truncated to --layers decoder layers, in bfloat16; the
calibration windows are random tokens. It runs the same `quantize_model` as `llm1bit quantize --device cuda`
(forwards in --dtype, one torch column solver on the device, layers not being solved kept on the CPU) and prints
each layer's forward and solver seconds, the mean per layer times 32 (Llama-2-7B's depth) against the issue's
10 minutes, and the peak device memory (`torch.cuda.max_memory_allocated`). --shrink divides the widths and
heads (a run that fits a CPU, to check the script); it is recorded in the output, and the 7B projection is only
printed without it. Without CUDA (and without --device cpu) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)
DEPTH_7B = 32
TARGET_MINUTES = 10.0  # issue 22: AutoRound's figure for a 7B model on one H100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run with --shrink)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers kept (default 4)")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--wbits", type=int, default=3)
    p.add_argument("--groupsize", type=int, default=128)
    p.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="forwards' precision"
    )
    p.add_argument(
        "--shrink", type=int, default=1, help="divide hidden, MLP width and heads by this (default 1)"
    )
    p.add_argument("--seed", type=int, default=0, help="weights and calibration tokens")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    for name in ("layers", "nsamples", "seqlen", "shrink"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if LLAMA2_7B["num_attention_heads"] % args.shrink:
        p.error(f"--shrink must divide the 32 heads, got {args.shrink}")
    return args


def build_model(args: argparse.Namespace):
    """Llama-2-7B's shapes (divided by --shrink), --layers deep, random bf16 weights on the CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shapes = dict(LLAMA2_7B)
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        shapes[key] //= args.shrink
    config = LlamaConfig(num_hidden_layers=args.layers, **shapes)
    torch.manual_seed(args.seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    return model.eval(), shapes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from llm1bit.quant.numerics.methods import QuantSpec
    from llm1bit.quant.quantize import quantize_model
    from llm1bit.quant.walk.layers import resolve_dtype

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "skipped: no CUDA device here (run on a machine with one, or pass --device cpu for a smoke run)"
        )
        return 0
    model, shapes = build_model(args)
    g = torch.Generator().manual_seed(args.seed)
    windows = torch.randint(0, shapes["vocab_size"], (args.nsamples, args.seqlen), generator=g)
    spec = QuantSpec(method="shiftaddllm", mode="lat", wbits=args.wbits, groupsize=args.groupsize)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    dtype = resolve_dtype(args.dtype, args.device)
    start = time.perf_counter()
    report = quantize_model(model, spec, windows, device=args.device, dtype=dtype)
    total = time.perf_counter() - start
    per_layer = [layer.forward_seconds + layer.solver_seconds for layer in report.layers]
    mean = sum(per_layer) / len(per_layer)
    result = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "shapes": shapes,
        "shrink": args.shrink,
        "layers": args.layers,
        "calibration": [args.nsamples, args.seqlen],
        "spec": {"mode": "lat", "wbits": args.wbits, "groupsize": args.groupsize},
        "compute_dtype": dtype,
        "seed": args.seed,
        "capture_seconds": report.capture_seconds,
        "layer_seconds": [
            {"forward": layer.forward_seconds, "solver": layer.solver_seconds} for layer in report.layers
        ],
        "total_seconds": total,
        "peak_device_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }
    for i, layer in enumerate(report.layers):
        print(f"layer {i}: forwards {layer.forward_seconds:.1f} s, solver {layer.solver_seconds:.1f} s")
    print(f"capture {report.capture_seconds:.1f} s, total {total:.1f} s, compute dtype {dtype}")
    if cuda:
        print(f"peak device memory {result['peak_device_bytes'] / 2**30:.2f} GiB ({result['device']})")
    if args.shrink == 1 and (args.nsamples, args.seqlen) == (128, 2048):
        minutes = mean * DEPTH_7B / 60
        result["minutes_for_32_layers"] = minutes
        verdict = "meets" if minutes <= TARGET_MINUTES else "misses"
        print(
            f"mean {mean:.1f} s a layer x {DEPTH_7B} = {minutes:.1f} min: {verdict} the {TARGET_MINUTES:g} min target"
        )
    else:
        print(f"mean {mean:.2f} s a layer (shrunk or short calibration: no 7B projection)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
