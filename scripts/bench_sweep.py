"""Benchmark the simulation backends (not a test: timings depend on the machine).

Measures, on this machine:
  1. the analytic full sweep: 13 paper models x 6 lengths x 2 hw x 3 dataflows (468 points);
     the analytic weight-width sweep: 13 paper models x 6 lengths x 2 hw x 7 weight widths
     (16, 8, 4, 3, 2, 1.58, 1; 1092 points), run_points + CSV in-process (median of 5) and the whole
     `llm1bit sweep --models paper --weight-bits ... --backend analytic` process (target < 2 s);
  2. the scalesim-backend OPT sweep: 7 models x 6 lengths x 2 hw, OS, from a cold cache
     (wall time and peak RSS of the whole process tree), then again from the warm cache;
  3. naive whole-GEMM SCALE-Sim: a few real projections run whole (time, RSS, equality with the
     composed result), and from them the estimated time of running the OPT sweep's distinct GEMMs whole.

Usage: python scripts/bench_sweep.py [--jobs 2] [--skip-whole] [--analytic-only]"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from llm1bit.cache import ResultCache
from llm1bit.hardware import load_hardware
from llm1bit.models import resolve_models
from llm1bit.sweep import points, run_points, to_csv
from llm1bit.workload import build_workload

LENGTHS = [128, 256, 512, 1024, 2048, 4096]
WEIGHT_BITS = "16,8,4,3,2,1.58,1"
REPEATS = 5


class TreeRss:
    """Samples the summed RSS of this process and all its descendants (Linux /proc) every 50 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _tree(pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            for task in Path(f"/proc/{p}/task").glob("*"):
                try:
                    todo += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    pass
        return out

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(self._rss(p) for p in self._tree(os.getpid())))
            time.sleep(0.05)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bench_weight_widths(hw, paper) -> None:
    """The analytic sweep over 7 weight widths: in-process (median of REPEATS) and as a whole process."""
    from llm1bit.costs import Pricing
    from llm1bit.precision import Precision

    pricings = [Pricing(Precision.build(float(b))) for b in WEIGHT_BITS.split(",")]
    pts = points(paper, hw, LENGTHS, [None], pricings=pricings)
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        to_csv(run_points(pts, "analytic"))
        times.append(time.perf_counter() - start)
    print(
        f"analytic weight-width sweep: {len(pts)} points, run_points + CSV median {statistics.median(times):.3f} s "
        f"(min {min(times):.3f}, max {max(times):.3f}, {REPEATS} runs)"
    )
    cli = Path(sys.executable).with_name("llm1bit")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(cli), "sweep", "--models", "paper", "--weight-bits", WEIGHT_BITS, "--backend", "analytic"]
        cmd += ["-o", str(Path(tmp) / "x.csv")]
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        rows = len((Path(tmp) / "x.csv").read_text().splitlines()) - 1
    print(
        f"  `llm1bit sweep --models paper --weight-bits {WEIGHT_BITS} --backend analytic` ({rows} rows): whole "
        f"process median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-whole", action="store_true", help="skip the whole-GEMM SCALE-Sim runs")
    parser.add_argument(
        "--analytic-only", action="store_true", help="only the analytic sweeps (no real SCALE-Sim runs)"
    )
    args = parser.parse_args()
    print(
        f"# bench_sweep on {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"jobs={args.jobs}"
    )

    hw = [load_hardware("cloud"), load_hardware("edge")]
    paper = resolve_models("paper")
    pts = points(paper, hw, LENGTHS, ["os", "ws", "is"])
    start = time.perf_counter()
    run_points(pts, "analytic")
    print(f"analytic full sweep: {len(pts)} points in {time.perf_counter() - start:.3f} s")
    bench_weight_widths(hw, paper)
    if args.analytic_only:
        return

    opt = resolve_models("opt")
    pts = points(opt, hw, LENGTHS, [None])
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        with TreeRss() as rss:
            start = time.perf_counter()
            splits = run_points(
                pts,
                "scalesim",
                cache=ResultCache(tmp),
                jobs=args.jobs,
                progress=lambda done, total: runs.append(total),
            )
            cold = time.perf_counter() - start
        start = time.perf_counter()
        run_points(pts, "scalesim", cache=ResultCache(tmp), jobs=args.jobs)
        warm = time.perf_counter() - start
    print(
        f"scalesim OPT sweep ({len(pts)} points, {runs[0]} real SCALE-Sim runs): cold cache {cold:.1f} s, "
        f"peak RSS of the process tree {rss.peak / 2**20:.0f} MiB; warm cache {warm:.2f} s"
    )
    analytic = run_points(pts, "analytic")
    same = all(a.totals == s.totals for a, s in zip(analytic, splits))
    print(f"analytic == scalesim on all {len(pts)} OPT points, every counter: {same}")

    if args.skip_whole:
        return
    from llm1bit.backends.scalesim_runner import run_whole
    from llm1bit.engine import evaluate

    print("\nwhole-GEMM SCALE-Sim runs (each in a fresh worker process):")
    rates = {}
    for hw_name, shape in [("cloud", (1, 4096, 1024)), ("cloud", (1, 1024, 4096)), ("edge", (1, 4096, 1024))]:
        one = load_hardware(hw_name)
        with TreeRss() as base:
            time.sleep(0.2)
        with ProcessPoolExecutor(max_workers=1) as pool, TreeRss() as rss:
            start = time.perf_counter()
            whole = pool.submit(run_whole, [shape], one).result()[0]
            seconds = time.perf_counter() - start
        equal = evaluate([(shape, one)], "scalesim")[(shape, one)] == whole
        elems = shape[0] * shape[1] * shape[2]
        rates.setdefault(hw_name, []).append(seconds / elems)
        print(
            f"  {hw_name} M,N,K={shape}: {seconds:.1f} s, {1e6 * seconds / elems:.2f} us per weight, "
            f"peak RSS {(rss.peak - base.peak) / 2**20:.0f} MiB, composed == whole: {equal}"
        )
    est = 0.0
    for one in hw:
        distinct = {g.shape for model in opt for seq_len in LENGTHS for g in build_workload(model, seq_len)}
        rate = min(rates[one.name])
        est += sum(m * n * k for m, n, k in distinct) * rate
    print(
        f"estimated naive whole-GEMM OPT sweep (distinct GEMMs, linear cost model, a lower bound since the "
        f"fold build grows quadratically): {est / 3600:.1f} h on one core"
    )


if __name__ == "__main__":
    main()
