"""Benchmark `llm1bit explore` (not a test: timings depend on the machine).

  1. analytic spaces of 10^4, 1.4 x 10^5 and 1.1 x 10^6 points (examples/explore-paper-1m.toml, and the same with
     one clock and two bandwidths): points/s over the whole process (start-up and the CSV included) and its peak
     resident memory (executors do not take part);
  2. a real-SCALE-Sim space of >= 1,000 distinct runs, cold store, with the local pool and with a local
     Ray runtime (loopback, --jobs CPUs): wall time, points/s, runs/s, and Ray's overhead per task
     ((Ray wall - local wall) / runs, the runtime's start-up included and reported apart).
Whole `llm1bit explore` processes, timed from outside; the tables of the two executors are compared.

Usage: python scripts/bench_explore.py [--jobs 2] [--skip-ray] [--skip-real] [--skip-1m]"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAPER_1M = Path(__file__).resolve().parents[1] / "examples" / "explore-paper-1m.toml"

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


def explore(space: Path, out: Path, store: Path, *extra: str) -> tuple[float, str, int]:
    """One whole `llm1bit explore` process: wall seconds, its last stderr line, its peak resident memory (kB)."""
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
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss: kB on Linux)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr}")
    return seconds, stderr.strip().splitlines()[-1], usage.ru_maxrss


def analytic(space: Path, tmp: Path, label: str) -> None:
    seconds, _, rss = explore(space, tmp / "a.csv", tmp / "s0")
    points = sum(1 for _ in (tmp / "a.csv").open()) - 1
    print(f"{label}: {points:,} points in {seconds:.2f} s whole process = {points / seconds:,.0f} points/s, "
          f"peak RSS {rss / 1024:,.0f} MiB")  # fmt: skip
    (tmp / "a.csv").unlink()


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
    p.add_argument("--skip-real", action="store_true", help="only the analytic spaces")
    p.add_argument("--skip-1m", action="store_true", help="leave out the 1.1M-point space")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-explore-") as tmp:
        tmp = Path(tmp)
        (tmp / "analytic.toml").write_text(ANALYTIC)
        (tmp / "real.toml").write_text(REAL)
        text = PAPER_1M.read_text()
        text = re.sub(r"(?m)^freq_mhz = .*$", "freq_mhz = [700]", text)
        (tmp / "paper-140k.toml").write_text(re.sub(r"(?m)^dram_gbps = .*$", "dram_gbps = [34, 68]", text))
        analytic(tmp / "analytic.toml", tmp, "analytic space")
        analytic(
            tmp / "paper-140k.toml",
            tmp,
            "analytic space, examples/explore-paper-1m.toml at 1 clock x 2 bandwidths",
        )
        if not args.skip_1m:
            analytic(PAPER_1M, tmp, "analytic space, examples/explore-paper-1m.toml")
        if args.skip_real:
            return
        local_s, line, _ = explore(tmp / "real.toml", tmp / "local.csv", tmp / "s1", "--jobs", str(args.jobs))
        runs = int(re.search(r"(\d+) simulated", line)[1])
        points = sum(1 for _ in (tmp / "local.csv").open()) - 1
        print(f"real SCALE-Sim space, local pool ({args.jobs} processes): {points} points, {runs} runs, cold, "
              f"{local_s:.1f} s = {points / local_s:.1f} points/s, {runs / local_s:.1f} runs/s")  # fmt: skip
        if args.skip_ray:
            return
        ray_s, line, _ = explore(
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
