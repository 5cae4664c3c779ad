"""Benchmark `llm1bit explore` (not a test: timings depend on the machine).

  1. a 10^4-point analytic space (in-process closed form; executors do not take part): points/s;
  2. a real-SCALE-Sim space of >= 1,000 distinct runs, cold store, with the local pool and with a local
     Ray runtime (loopback, --jobs CPUs): wall time, points/s, runs/s, and Ray's overhead per task
     ((Ray wall - local wall) / runs, the runtime's start-up included and reported apart).
Whole `llm1bit explore` processes, timed from outside; the tables of the two executors are compared.

Usage: python scripts/bench_explore.py [--jobs 2] [--skip-ray]"""

from __future__ import annotations

import argparse
import filecmp
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANALYTIC = """
backend = "analytic"
models = ["opt-350m", "opt-1.3b", "opt-6.7b", "llama-7b", "gpt-355m"]
seq_len = [256, 512, 1024, 2048, 4096]
weight_bits = [16, 4, 3, 1.58]
[hardware]
rows = [32, 64, 128, 256]
cols = "rows"
ifmap_sram_kb = [1024, 4096]
filter_sram_kb = [2048, 8192]
ofmap_sram_kb = [2048]
dataflow = ["os", "ws", "is"]
freq_mhz = [700, 1000]
dram_gbps = [34, 68]
[constraints]
max_total_sram_kb = 12288
"""  # 5 models x 5 lengths x 4 widths x 36 designs (48, 12 cut by the constraint) x 4 clocks = 14,400 points

REAL = """
backend = "scalesim"
models = ["gpt-125m"]
seq_len = [128, 256]
[hardware]
rows = [16, 32, 64, 128]
cols = "rows"
ifmap_sram_kb = [256, 512, 1024]
filter_sram_kb = [512, 1024, 2048]
ofmap_sram_kb = [256, 512]
dataflow = ["os", "ws", "is"]
"""  # 216 designs, 1,296 distinct runs


def explore(space: Path, out: Path, store: Path, *extra: str) -> tuple[float, str]:
    cmd = [
        str(Path(sys.executable).with_name("llm1bit")),
        "explore",
        str(space),
        "-o",
        str(out),
        "--cache-dir",
        str(store),
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, proc.stderr.strip().splitlines()[-1]


def ray_startup(jobs: int) -> float:
    code = (
        "import time, ray; t = time.perf_counter(); "
        f"ray.init(num_cpus={jobs}, _node_ip_address='127.0.0.1', include_dashboard=False, log_to_driver=False, "
        "logging_level='ERROR'); print(time.perf_counter() - t); ray.shutdown()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--skip-ray", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-explore-") as tmp:
        tmp = Path(tmp)
        (tmp / "analytic.toml").write_text(ANALYTIC)
        (tmp / "real.toml").write_text(REAL)
        seconds, line = explore(tmp / "analytic.toml", tmp / "a.csv", tmp / "s0")
        points = sum(1 for _ in (tmp / "a.csv").open()) - 1
        print(
            f"analytic space: {points} points in {seconds:.2f} s whole process = {points / seconds:,.0f} points/s"
        )
        local_s, line = explore(tmp / "real.toml", tmp / "local.csv", tmp / "s1", "--jobs", str(args.jobs))
        runs = int(re.search(r"(\d+) simulated", line)[1])
        points = sum(1 for _ in (tmp / "local.csv").open()) - 1
        print(f"real SCALE-Sim space, local pool ({args.jobs} processes): {points} points, {runs} runs, cold, "
              f"{local_s:.1f} s = {points / local_s:.1f} points/s, {runs / local_s:.1f} runs/s")  # fmt: skip
        if args.skip_ray:
            return
        ray_s, line = explore(
            tmp / "real.toml", tmp / "ray.csv", tmp / "s2", "--executor", "ray", "--jobs", str(args.jobs)
        )
        start = ray_startup(args.jobs)
        print(f"real SCALE-Sim space, local Ray runtime ({args.jobs} CPUs): {ray_s:.1f} s = {points / ray_s:.1f} "
              f"points/s, {runs / ray_s:.1f} runs/s; Ray start-up {start:.1f} s")  # fmt: skip
        print(f"Ray overhead per task: {(ray_s - local_s) / runs * 1e3:.1f} ms with start-up, "
              f"{(ray_s - start - local_s) / runs * 1e3:.1f} ms without")  # fmt: skip
        print("tables identical:", filecmp.cmp(tmp / "local.csv", tmp / "ray.csv", shallow=False))


if __name__ == "__main__":
    main()
