"""Time the LUT kernel (llm1bit.quant.hf.kernel) against torch F.linear and today's dense-rebuild QuantLinear.

`llm1bit bench --gemv NxK --wbits B` is the command that reports these numbers (batch 1); this script adds
batch sizes (`--batch 1,16,64`), bcq layers and the raw per-method rows, for studying the kernel itself.

    flock /tmp/llm1bit-bench.lock .venv/bin/python scripts/bench_gemv.py                      # 4096 -> 11008, 3 bits lat g128
    flock /tmp/llm1bit-bench.lock .venv/bin/python scripts/bench_gemv.py --bits 2 --json out.json
    flock /tmp/llm1bit-bench.lock .venv/bin/python scripts/bench_gemv.py --mode acc --batch 1,4,16,64
    flock /tmp/llm1bit-bench.lock .venv/bin/python scripts/bench_gemv.py --batch 16,32,64,128 --rebuild --dense-calls 0

What is timed, side by side in one run, each call on a different weight set (rotated, so a layer is never
served from the last-level cache; the sets of each method together span at least 2x the LLC and at least
`--min-sets`), medians over `--rounds` rounds that interleave the methods:
* lut       `lut_linear` on the kernel layout (`prepare` of packed tensors in the real format: random code
            bytes, random one-byte power-of-two scale terms encoded by `packing.encode_terms`)
* bf16 / fp32   torch `F.linear` on contiguous [N, K] weights of that dtype
* rebuild-bf16 / rebuild-fp32   (--rebuild) W rebuilt in C from the kernel's layout (`dense_weight`) and one
            `F.linear` in that dtype: QuantLinear's path under auto for calls of many rows
* dense     `QuantLinear.forward` with LLM1BIT_KERNEL=dense (rebuilds W from the packed tensors each call)
plus the streaming-read bandwidth over a fp32 buffer much larger than the LLC, with the same thread count: torch's
sum, and a plain AVX-512 reader in the kernel's library (`llm1bit_stream_read`; torch's two-thread sum is erratic
on a busy machine). Bytes for the kernel are those of its layout (codes + fp32 scales), which it reads per call."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=11008, help="output features N")
    ap.add_argument("--k", type=int, default=4096, help="input features K")
    ap.add_argument("--bits", default="3", help="planes q, comma-separated (3,2)")
    ap.add_argument("--mode", choices=["lat", "acc", "bcq"], default="lat")
    ap.add_argument("--groupsize", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="1", help="rows (tokens) per call, comma-separated")
    ap.add_argument("--min-sets", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dense-calls", type=int, default=1, help="dense-rebuild calls per round (0: skip)")
    ap.add_argument("--no-torch", action="store_true", help="skip the F.linear baselines")
    ap.add_argument(
        "--rebuild",
        action="store_true",
        help="also time W rebuilt from the layout (C) + one bf16 / fp32 matmul",
    )
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from llm1bit.quant.eval.speed import llc_bytes, packed_layer
    from llm1bit.quant.hf.kernel import build, dense_weight, lut_linear, prepare
    from llm1bit.quant.hf.linear import QuantLinear

    torch.set_num_threads(args.threads)
    lib = build.load()
    if lib is None:
        raise SystemExit("the LUT kernel is not available here")
    n, k = args.n, args.k
    llc = llc_bytes()
    batches = [int(b) for b in args.batch.split(",")]
    bits = [int(b) for b in args.bits.split(",")]

    def sets_for(nbytes: int) -> int:
        return max(args.min_sets, -(-2 * llc // max(1, nbytes)))

    # Everything timed is built first; then each round times every method once over all its sets (and reads the
    # bandwidth buffer), so a busy neighbour slows all of them alike.
    methods: dict[str, dict] = {}  # name -> {"calls": [(fn, args)], "bytes": int, "times": [], ...}
    bw_bytes = max(1 << 30, 4 * llc)
    buf = torch.ones(bw_bytes // 4)
    methods["read torch.sum"] = {"calls": [(buf.sum, ())], "bytes": bw_bytes, "batch": None}
    methods["read C"] = {
        "calls": [(lib.lib.llm1bit_stream_read, (buf.data_ptr(), buf.numel(), args.threads))],
        "bytes": bw_bytes,
        "batch": None,
    }
    xs = {m: torch.randn(m, k) for m in batches}
    if not args.no_torch:
        for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
            nbytes = n * k * torch.tensor([], dtype=dtype).element_size()
            weights = [torch.randn(n, k).to(dtype) for _ in range(sets_for(nbytes))]
            for m in batches:
                x = xs[m].to(dtype)
                methods[f"{name} b{m}"] = {
                    "calls": [(F.linear, (x, w)) for w in weights],
                    "bytes": nbytes,
                    "batch": m,
                    "kind": name,
                }
    checks = {}
    for q in bits:
        packed = packed_layer(n, k, q, args.mode, args.groupsize, 0)
        first = prepare(*packed)
        nbytes = first.codes.nbytes + first.alpha.nbytes
        packed_bytes = sum(t.numel() * t.element_size() for t in packed[0].values())
        count = sets_for(nbytes)
        t0 = time.perf_counter()
        prepared = [first] + [
            prepare(*packed_layer(n, k, q, args.mode, args.groupsize, s)) for s in range(1, count)
        ]
        prep_s = (time.perf_counter() - t0) / max(1, count - 1)
        dense_layers = [
            QuantLinear(None, None, packed=packed_layer(n, k, q, args.mode, args.groupsize, s))
            for s in (0, 1)
        ]
        x = xs[batches[0]]
        os.environ["LLM1BIT_KERNEL"] = "dense"
        with torch.no_grad():
            dense = dense_layers[0](x).double()
        err = float((lut_linear(first, x).double() - dense).abs().max() / dense.abs().max())
        checks[q] = {
            "sets": count,
            "bytes": nbytes,
            "packed_bytes": packed_bytes,
            "prepare_s": prep_s,
            "err": err,
        }
        print(
            f"q={q}: kernel layout {nbytes / 1e6:.2f} MB (packed {packed_bytes / 1e6:.2f} MB), {count} sets, "
            f"prepare {prep_s:.2f} s/layer, max rel. diff to the dense rebuild {err:.1e}"
        )
        for m in batches:
            x = xs[m]
            methods[f"lut q{q} b{m}"] = {
                "calls": [(lut_linear, (p, x, None, args.threads)) for p in prepared],
                "bytes": nbytes,
                "batch": m,
                "kind": "lut",
                "bits": q,
            }
            if args.rebuild:  # what auto does for many rows: W rebuilt in C from the layout, one matmul
                for dtype, tag in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
                    xd = x.to(dtype)

                    def rebuild_call(p, x=xd, dtype=dtype):
                        F.linear(x, dense_weight(p, dtype, args.threads))

                    methods[f"rebuild-{tag} q{q} b{m}"] = {
                        "calls": [(rebuild_call, (p,)) for p in prepared[:8]],
                        "bytes": nbytes,
                        "batch": m,
                        "kind": f"rebuild-{tag}",
                        "bits": q,
                    }
            if args.dense_calls:

                def dense_call(layer, x=x):
                    with torch.no_grad():
                        layer(x)

                methods[f"dense q{q} b{m}"] = {
                    "calls": [(dense_call, (layer,)) for layer in dense_layers][: args.dense_calls],
                    "bytes": packed_bytes,
                    "batch": m,
                    "kind": "dense",
                    "bits": q,
                }
    os.environ["LLM1BIT_KERNEL"] = "dense"  # QuantLinear's dense rebuild for the "dense" rows
    load_before = os.getloadavg()
    for spec in methods.values():  # warm up (first-call allocations, page faults)
        fn, fargs = spec["calls"][0]
        fn(*fargs)
        spec["times"] = []
    for _ in range(args.rounds):
        for spec in methods.values():
            for fn, fargs in spec["calls"]:
                t = time.perf_counter()
                fn(*fargs)
                spec["times"].append(time.perf_counter() - t)
    os.environ.pop("LLM1BIT_KERNEL", None)
    load_after = os.getloadavg()

    bw = methods["read torch.sum"]["bytes"] / median_ms(methods["read torch.sum"]["times"]) / 1e6
    bw_c = methods["read C"]["bytes"] / median_ms(methods["read C"]["times"]) / 1e6
    print(
        f"streaming read ({args.threads} threads, {bw_bytes >> 20} MiB): torch.sum {bw:.1f} GB/s, C reader "
        f"{bw_c:.1f} GB/s; LLC {llc >> 20} MiB; kernel {lib.isa_name}; {args.rounds} rounds; "
        f"load {load_before[0]:.2f} -> {load_after[0]:.2f}"
    )
    rows = []
    for spec in methods.values():
        if spec["batch"] is None:
            continue
        ms = median_ms(spec["times"])
        row = {
            "method": spec["kind"],
            "bits": spec.get("bits"),
            "batch": spec["batch"],
            "ms": ms,
            "ms_min": min(spec["times"]) * 1e3,
            "calls": len(spec["times"]),
            "sets": len(spec["calls"]),
            "bytes": spec["bytes"],
            "gbs": spec["bytes"] / ms / 1e6,
        }
        rows.append(row)
    by = {(r["method"], r["bits"], r["batch"]): r for r in rows}
    for r in rows:
        bits = "" if r["bits"] is None else f" q={r['bits']}"
        line = (
            f"{r['method']:>5}{bits:5} batch {r['batch']:>3}: {r['ms']:9.3f} ms (min {r['ms_min']:.3f}, "
            f"{r['calls']} calls, {r['sets']} sets)"
            + ("" if r["method"] == "dense" else f"  {r['gbs']:6.1f} GB/s")
        )
        if r["method"] == "lut":
            r["bandwidth_share"], r["bandwidth_share_c"] = r["gbs"] / bw, r["gbs"] / bw_c
            line += f" = {100 * r['gbs'] / bw:.0f}% / {100 * r['gbs'] / bw_c:.0f}% of streaming (torch / C)"
            for base in ("bf16", "fp32"):
                if (base, None, r["batch"]) in by:
                    r[f"vs_{base}"] = r["ms"] / by[base, None, r["batch"]]["ms"]
                    line += f"  {r[f'vs_{base}']:.3f}x {base}"
            dense = by.get(("dense", r["bits"], r["batch"]))
            if dense:
                r["speedup_vs_dense_rebuild"] = dense["ms"] / r["ms"]
                line += f"  {r['speedup_vs_dense_rebuild']:.0f}x faster than the dense rebuild"
        print(line)
    if args.json:
        results = {
            "shape": {"n": n, "k": k},
            "mode": args.mode,
            "groupsize": args.groupsize,
            "threads": args.threads,
            "rounds": args.rounds,
            "isa": lib.isa_name,
            "cpu": platform.processor() or platform.machine(),
            "llc_bytes": llc,
            "load_avg": [load_before, load_after],
            "bandwidth_gbs": bw,
            "bandwidth_c_gbs": bw_c,
            "checks": checks,
            "rows": rows,
        }
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
