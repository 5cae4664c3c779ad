"""Engine: counters for a batch of GEMMs from one backend, deduplicated, stored and in parallel.

`analytic` evaluates the closed forms in-process (microseconds each, no store needed).
`scalesim` plans each GEMM as a few small real SCALE-Sim runs (backends.scalesim), looks every
run up in the verified result store, runs the missing ones in worker processes (largest first),
stores each finished run at once and composes. Ctrl-C stops the workers at once (they ignore
SIGINT and are terminated by the driver), keeps every run that finished and says how to resume."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from llm1bit.cache import ResultCache
from llm1bit.counters import Counters
from llm1bit.errors import Interrupted, UserError, unknown_choice, warn
from llm1bit.hardware import Hardware

BACKENDS = ("scalesim", "analytic")
Shape = tuple[int, int, int]
Pair = tuple[Shape, Hardware]
# progress(done, total) after each finished real simulator run
Progress = Callable[[int, int], None]


@dataclass
class RunReport:
    """What one evaluation did with the real simulator: runs found in the store, run now, rejected entries."""

    stored: int = 0
    simulated: int = 0
    rejected: int = 0

    def summary(self) -> str:
        if not self.stored and not self.simulated:
            return ""
        return f"SCALE-Sim runs: {self.stored} from the store, {self.simulated} simulated"


def _run_piece(shape: Shape, hw: Hardware) -> Counters:
    from llm1bit.backends.scalesim_runner import run_whole

    return run_whole([shape], hw)[0]


def _run_pair(pair: Pair) -> tuple[Pair, Counters]:
    return pair, _run_piece(*pair)


def _worker_init() -> None:
    """Workers leave Ctrl-C to the driver, and exit cleanly (temporary folders removed) when it terminates them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def piece_key(shape: Shape, hw: Hardware) -> str:
    from llm1bit.backends.scalesim_runner import SCALESIM_VERSION

    return ResultCache.key(
        backend="scalesim", m=shape[0], n=shape[1], k=shape[2], hw=hw.fingerprint(), scalesim=SCALESIM_VERSION
    )


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def evaluate(
    shapes: Iterable[Pair],
    backend: str,
    cache: ResultCache | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
    temporal_unit: int | None = None,
    report: RunReport | None = None,
) -> dict[Pair, Counters]:
    """Counters of every distinct (shape, hardware) pair."""
    if backend not in BACKENDS:
        raise unknown_choice("backend", backend, BACKENDS)
    wanted = list(dict.fromkeys(shapes))
    if backend == "analytic":
        from llm1bit.backends.analytic import analytic_counters

        return {(s, hw): analytic_counters(*s, hw) for s, hw in wanted}

    from llm1bit.backends import scalesim as composed

    cache = cache or ResultCache(None)
    report = report if report is not None else RunReport()
    unit = temporal_unit or composed.TEMPORAL_UNIT
    plans = {}
    for shape, hw in wanted:
        if hw.bandwidth_mode != "CALC":
            raise UserError(
                f"hardware {hw.name}: InterfaceBandwidth {hw.bandwidth_mode}; the study needs CALC"
            )
        composed.check_exact(*shape, hw)
        plans[(shape, hw)] = composed.plan(*shape, hw, unit)

    # Runs are keyed by hardware fingerprint: two names for one configuration share their runs.
    needed = list(dict.fromkeys((piece.shape, hw) for (_, hw), pl in plans.items() for piece in pl))
    keys = {pair: piece_key(*pair) for pair in needed}
    rejected_before = cache.rejected
    hits = cache.get_many(keys.values())
    pieces: dict[Pair, Counters] = {
        pair: Counters.from_dict(hits[key]) for pair, key in keys.items() if key in hits
    }
    report.stored += len(pieces)
    report.rejected += cache.rejected - rejected_before
    if cache.rejected > rejected_before:
        warn(
            f"{cache.rejected - rejected_before} stored results in {cache.path} failed verification; "
            "they were discarded and are recomputed"
        )
    missing = [pair for pair in needed if pair not in pieces]
    _run_missing(missing, pieces, cache, keys, jobs or default_jobs(), progress, report)

    out = {}
    for pair, piece_list in plans.items():
        total = Counters()
        for piece in piece_list:
            total = total + pieces[(piece.shape, pair[1])] * piece.weight
        if total.is_negative():
            raise UserError(
                f"GEMM M={pair[0][0]} N={pair[0][1]} K={pair[0][2]} on {pair[1].name}: the composed counters are "
                f"negative ({total}); the store at {cache.path} holds wrong results: run `llm1bit cache clear`"
            )
        out[pair] = total
    return out


def _run_missing(
    missing: list[Pair],
    pieces: dict[Pair, Counters],
    cache: ResultCache,
    keys: dict[Pair, str],
    jobs: int,
    progress: Progress | None,
    report: RunReport,
) -> None:
    """Run the pieces not in the store, largest first, storing each result as soon as it is done."""
    missing = sorted(missing, key=lambda p: p[0][0] * p[0][1] * p[0][2], reverse=True)
    total = len(missing)
    if progress:
        progress(0, total)

    from llm1bit.backends.scalesim_runner import SCALESIM_VERSION

    def record(pair: Pair, counters: Counters) -> None:
        pieces[pair] = counters
        cache.put(
            keys[pair],
            counters.to_dict(),
            backend="scalesim",
            simulator=SCALESIM_VERSION,
            m=pair[0][0],
            n=pair[0][1],
            k=pair[0][2],
            hw=pair[1].name,
        )
        report.simulated += 1
        if progress:
            progress(report.simulated, total)

    pool = None
    try:
        if jobs <= 1 or total <= 1:
            for pair in missing:
                record(pair, _run_piece(*pair))
            return
        pool = multiprocessing.Pool(min(jobs, total), initializer=_worker_init)
        for pair, counters in pool.imap_unordered(_run_pair, missing):
            record(pair, counters)
        pool.close()
        pool.join()
    except KeyboardInterrupt:
        if pool is not None:
            pool.terminate()
            pool.join()
        where = f" in the store {cache.path}" if cache.path else " (no store: --cache-dir is off)"
        raise Interrupted(
            f"interrupted: kept {report.simulated} of {total} SCALE-Sim runs finished by this run{where}; "
            "run the same command again to resume without recomputing them"
        ) from None
    finally:
        if pool is not None:
            pool.terminate()
