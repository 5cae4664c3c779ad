"""Resident memory of a loaded model: full precision vs an `llm1bit quantize` folder.

Each measurement runs in a fresh process: RSS after importing torch + transformers, after loading, and after
one forward pass of `--tokens` tokens (and after `malloc_trim`, which returns freed transient
weights to the OS), plus the process's peak RSS (ru_maxrss). The quantized folder is loaded
both with `load_quantized` and with transformers' `from_pretrained` (after `import llm1bit`).

    .venv/bin/python scripts/bench_memory.py --fp FOLDER_OR_GGUF --quantized FOLDER [--tokens 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE") / 2**20
import torch, transformers, llm1bit
from llm1bit.quant.hf.loading import load_model
from llm1bit.quant.hf.checkpoint import load_quantized, quant_linears
mode, path, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(2)
base = rss()
if mode == "fp":
    model, _ = load_model(path)
elif mode == "load_quantized":
    model = load_quantized(path)
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
loaded = rss()
held = sum(t.numel() * t.element_size() for m in quant_linears(model).values() for t in m.buffers())
with torch.no_grad():
    model(torch.arange(1, tokens + 1)[None] % model.config.vocab_size)
after = rss()
import ctypes
ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed transient weights back to the OS: what is really held
trimmed = rss()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"mode": mode, "imports_mib": base, "after_load_mib": loaded, "after_forward_mib": after, "trimmed_mib": trimmed,
                  "peak_mib": peak, "quantized_linears_held_mib": held / 2**20}))
"""


def measure(mode: str, path: str, tokens: int) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", CHILD, mode, path, str(tokens)], capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        raise SystemExit(f"{mode} {path}: {run.stderr.strip().splitlines()[-1]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp", required=True, help="the full-precision model (folder or .gguf)")
    parser.add_argument("--quantized", required=True, help="an llm1bit quantize folder of the same model")
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()
    rows = [measure("fp", args.fp, args.tokens)]
    rows += [measure(mode, args.quantized, args.tokens) for mode in ("load_quantized", "from_pretrained")]
    print(
        f"{'load':<16} {'imports':>8} {'+load':>8} {'+forward':>9} {'trimmed':>8} {'peak':>8} {'q-linears held':>15}  (MiB)"
    )
    for r in rows:
        print(
            f"{r['mode']:<16} {r['imports_mib']:8.1f} {r['after_load_mib'] - r['imports_mib']:8.1f} "
            f"{r['after_forward_mib'] - r['imports_mib']:9.1f} {r['trimmed_mib'] - r['imports_mib']:8.1f} "
            f"{r['peak_mib']:8.1f} "
            f"{r['quantized_linears_held_mib']:15.2f}"
        )


if __name__ == "__main__":
    main()
