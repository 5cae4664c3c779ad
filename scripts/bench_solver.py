"""Time the per-layer quantizers on realistic shapes and print a table.

    .venv/bin/python scripts/bench_solver.py                     # SmolLM2-135M decoder layer, 2 and 3 bits
    .venv/bin/python scripts/bench_solver.py --shapes small --bits 3 --methods acc lat
    .venv/bin/python scripts/bench_solver.py --columns-only      # per-column BCQ, before / after
    .venv/bin/python scripts/bench_solver.py --real .cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --layer 15
    flock /tmp/llm1bit-bench.lock .venv/bin/python scripts/bench_solver.py --shapes large --methods lat-g128 \
        --bits 3 --threads 2 --repeat 1 --no-columns          # issue 22: microseconds per weight

Weights are random (std 0.02, a few heavy rows); the Hessian comes from correlated Gaussian inputs
with a few outlier channels (H = X^T X / n), which gives act-order and error feedback realistic work.
With --real, the weights of one decoder layer of a real checkpoint (a GGUF that transformers can load,
e.g. SmolLM2-135M) are used, with Hessians from a forward pass of calibration text through the model.
Timings are wall-clock minima over --repeat runs (the machine may be shared); nothing here is a test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from llm1bit.quant.numerics.bcq import assign, bcq_fit
from llm1bit.quant.numerics.column_solver import quantize_weight
from llm1bit.quant.numerics.methods import QuantSpec

# (name, N, K) in nn.Linear layout
SHAPES = {
    "smollm2": [
        ("q_proj", 576, 576),
        ("k_proj", 192, 576),
        ("v_proj", 192, 576),
        ("o_proj", 576, 576),
        ("gate_proj", 1536, 576),
        ("up_proj", 1536, 576),
        ("down_proj", 576, 1536),
    ],
    "small": [("q", 256, 256), ("gate", 172, 64), ("down", 64, 172)],
    # issue 22's reference shapes (N x K): a 1-2B model's square layer, Llama-7B's square and MLP layers
    "large": [
        ("2048x2048", 2048, 2048),
        ("4096x4096", 4096, 4096),
        ("11008x4096", 11008, 4096),
        ("4096x11008", 4096, 11008),
    ],
}
METHODS = {
    "rtn": dict(method="rtn"),
    "bcq": dict(method="bcq"),
    "gptq": dict(method="gptq"),
    "acc": dict(method="shiftaddllm", mode="acc"),
    "acc-noinc": dict(method="shiftaddllm", mode="acc", incoherence=False),
    "acc-g128": dict(method="shiftaddllm", mode="acc", groupsize=128),
    "lat": dict(method="shiftaddllm", mode="lat"),
    "lat-g128": dict(method="shiftaddllm", mode="lat", groupsize=128),
}


def realistic_layer(n: int, k: int, seed: int = 0, tokens: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5
    x = torch.randn(tokens, k, generator=g) @ mix + 0.5 * torch.randn(tokens, k, generator=g)
    x[:, torch.randperm(k, generator=g)[:4]] *= 20.0  # outlier channels
    w = torch.randn(n, k, generator=g) * 0.02
    w[torch.randperm(n, generator=g)[:2]] *= 5.0
    h = (x.T.double() @ x.double()) / tokens
    return w, h


def real_layers(gguf: str, layer: int, tokens: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (W, H)} for the linear layers of decoder layer `layer`, H from `tokens` calibration tokens."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = (Path(__file__).resolve().parents[2] / "shared/data/wikitext-2/valid.tokenized.txt").read_text()
    ids = tok(text[: tokens * 8], return_tensors="pt").input_ids[:, :tokens]
    block = model.model.layers[layer]
    linears = {
        name.split(".")[-1]: mod for name, mod in block.named_modules() if isinstance(mod, torch.nn.Linear)
    }
    hess = {
        name: torch.zeros(mod.in_features, mod.in_features, dtype=torch.float64)
        for name, mod in linears.items()
    }

    def hook(name):
        def capture(_module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            hess[name] += x.T @ x / x.shape[0]

        return capture

    handles = [mod.register_forward_pre_hook(hook(name)) for name, mod in linears.items()]
    with torch.no_grad():
        model(ids, use_cache=False)
    for handle in handles:
        handle.remove()
    return {name: (mod.weight.detach().clone(), hess[name]) for name, mod in linears.items()}


def _min_time(repeat: int, fn, *args) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def bench_layers(layers: dict, methods, bits_list, repeat: int, source: str) -> None:
    shapes = [(name, *w.shape) for name, (w, _) in layers.items()]
    print(f"\nper-layer solver time, seconds (min of {repeat}); {source}")
    print("shapes (N x K): " + ", ".join(f"{s[0]} {s[1]}x{s[2]}" for s in shapes))
    header = f"{'method':<10} {'bits':>4} " + " ".join(f"{s[0]:>10}" for s in shapes) + f" {'layer':>8}"
    print(header)
    print("-" * len(header))
    for method in methods:
        for bits in bits_list:
            spec = QuantSpec(wbits=bits, **METHODS[method])
            times = [_min_time(repeat, quantize_weight, w, h, spec) for w, h in layers.values()]
            cells = " ".join(f"{t:>10.3f}" for t in times)
            print(f"{method:<10} {bits:>4} {cells} {sum(times):>8.2f}", flush=True)
            per_weight = [t / (w.numel()) * 1e6 for t, (w, _) in zip(times, layers.values(), strict=True)]
            cells = " ".join(f"{u:>10.3f}" for u in per_weight)
            print(f"{'  us/weight':<15} {cells}", flush=True)


def _bcq_reference_style(x: torch.Tensor, q: int, rounds: int, terms: int) -> torch.Tensor:
    """The unoptimised per-column algorithm as the reference runs it, in torch: explicit codes, all rounds."""
    r = x.clone()
    B = torch.empty(x.numel(), q)
    a = torch.empty(q)
    for i in range(q):
        B[:, i] = torch.sign(r)
        a[i] = r.abs().mean()
        r -= a[i] * B[:, i]
    signs = torch.tensor(
        np.array(np.meshgrid(*[[1.0, -1.0]] * q, indexing="ij")).reshape(q, -1).T, dtype=torch.float32
    )
    for _ in range(rounds):
        A = B.T @ B
        b = B.T @ x
        res = b - A @ a
        p = res.clone()
        rs = res @ res
        for _ in range(q):
            ap = A @ p
            alpha = rs / (p @ ap + 1e-6)
            a = a + alpha * p
            res = res - alpha * ap
            rs_new = res @ res
            p = res + rs_new / (rs + 1e-6) * p
            rs = rs_new
        a = torch.sort(a.abs(), descending=True).values
        s = torch.zeros_like(a)
        for _ in range(terms):
            v = a - s
            s = s + torch.sign(v) * 2 ** torch.round(torch.log2(v.abs()))
        a = s
        lv = signs @ a
        vals, order = torch.sort(lv)
        mids = (vals[:-1] + vals[1:]) / 2
        B = signs[order[torch.searchsorted(mids, x, right=True)]]
    return B @ a


def _each(fn, items, *args) -> None:
    for item in items:
        fn(item, *args)


def _fit_and_assign(x, sizes, q):
    """What the solver runs per column block: the fit (early exit on) and the codes of its scales."""
    return assign(x, bcq_fit(x, sizes, q, 50, 3).scales)


def _fit_all_rounds(x, sizes, q) -> None:
    bcq_fit(x, sizes, q, 50, 3, early_exit=False)


def _torch(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def bench_columns(repeat: int) -> None:
    print(
        "\nper-column BCQ (acc, groupsize -1, 50 rounds, 3 APoT terms), milliseconds per column (min of repeats)"
    )
    print(
        f"{'N':>6} {'q':>2} {'reference-style torch':>22} {'ours, all 50 rounds':>20} {'ours, early exit':>17} {'rounds run':>11}"
    )
    rng = np.random.default_rng(0)
    for n in (576, 1536):
        for q in (2, 3):
            cols = [_torch(rng.standard_normal(n).astype(np.float32) * 0.02) for _ in range(40)]
            sizes = torch.tensor([n])
            ref = _min_time(1, _each, _bcq_reference_style, cols[:10], q, 50, 3) / 10
            full = _min_time(repeat, _each, _fit_all_rounds, [c[None] for c in cols], sizes, q) / len(cols)
            fast = _min_time(repeat, _each, _fit_and_assign, [c[None] for c in cols], sizes, q) / len(cols)
            rounds = np.mean([bcq_fit(c[None], sizes, q, 50, 3).rounds_run for c in cols])
            print(
                f"{n:>6} {q:>2} {ref * 1e3:>22.2f} {full * 1e3:>20.2f} {fast * 1e3:>17.2f} {rounds:>11.1f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=["rtn", "bcq", "gptq", "acc", "lat"]
    )
    parser.add_argument("--bits", nargs="+", type=int, default=[2, 3])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (the solver's large linear algebra)"
    )
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--real", metavar="GGUF", help="use a real checkpoint's decoder layer (a .gguf file)")
    parser.add_argument("--layer", type=int, default=0, help="decoder layer index for --real")
    parser.add_argument("--tokens", type=int, default=1024, help="calibration tokens for --real")
    parser.add_argument("--columns-only", action="store_true", help="only the per-column BCQ comparison")
    parser.add_argument("--no-columns", action="store_true", help="skip the per-column BCQ comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.columns_only:
        if args.real:
            layers = real_layers(args.real, args.layer, args.tokens)
            source = f"{args.real} layer {args.layer}, H from {args.tokens} tokens"
        else:
            shapes = SHAPES[args.shapes]
            layers = {name: realistic_layer(n, k, seed=i) for i, (name, n, k) in enumerate(shapes)}
            source = f"random weights, synthetic H ({args.shapes})"
        bench_layers(layers, args.methods, args.bits, args.repeat, source)
    if not args.no_columns:
        bench_columns(args.repeat)


if __name__ == "__main__":
    main()
