"""Engine: counters for a batch of GEMMs from one backend, deduplicated, cached and in parallel.

`analytic` evaluates the closed forms in-process (microseconds each, no cache needed).
`scalesim` plans each GEMM as a few small real SCALE-Sim runs (backends.scalesim), looks each
run up in the cache, runs the missing ones in worker processes (largest first), stores every
finished run at once (so an interrupted sweep resumes where it stopped) and composes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed

from llm1bit.cache import ResultCache
from llm1bit.counters import Counters
from llm1bit.errors import UserError, unknown_choice
from llm1bit.hardware import Hardware

BACKENDS = ("scalesim", "analytic")
Shape = tuple[int, int, int]
# progress(done, total) after each finished real simulator run
Progress = Callable[[int, int], None]


def _run_piece(shape: Shape, hw: Hardware) -> Counters:
    from llm1bit.backends.scalesim_runner import run_whole

    return run_whole([shape], hw)[0]


def piece_key(shape: Shape, hw: Hardware) -> str:
    from llm1bit.backends.scalesim_runner import SCALESIM_VERSION

    return ResultCache.key(
        backend="scalesim", m=shape[0], n=shape[1], k=shape[2], hw=hw.fingerprint(), scalesim=SCALESIM_VERSION
    )


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def evaluate(
    shapes: Iterable[tuple[Shape, Hardware]],
    backend: str,
    cache: ResultCache | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
    temporal_unit: int | None = None,
) -> dict[tuple[Shape, Hardware], Counters]:
    """Counters of every distinct (shape, hardware) pair."""
    if backend not in BACKENDS:
        raise unknown_choice("backend", backend, BACKENDS)
    wanted = list(dict.fromkeys(shapes))
    if backend == "analytic":
        from llm1bit.backends.analytic import analytic_counters

        return {(s, hw): analytic_counters(*s, hw) for s, hw in wanted}

    from llm1bit.backends import scalesim as composed

    cache = cache or ResultCache(None)
    unit = temporal_unit or composed.TEMPORAL_UNIT
    plans = {}
    for shape, hw in wanted:
        if hw.bandwidth_mode != "CALC":
            raise UserError(
                f"hardware {hw.name}: InterfaceBandwidth {hw.bandwidth_mode}; the study needs CALC"
            )
        composed.check_exact(*shape, hw)
        plans[(shape, hw)] = composed.plan(*shape, hw, unit)

    pieces: dict[tuple[Shape, Hardware], Counters] = {}
    missing: dict[tuple[Shape, Hardware], None] = {}  # ordered set
    for (_, hw), piece_list in plans.items():
        for pair in ((piece.shape, hw) for piece in piece_list):
            if pair in pieces or pair in missing:
                continue
            hit = cache.get(piece_key(*pair))
            if hit is None:
                missing[pair] = None
            else:
                pieces[pair] = Counters.from_dict(hit)
    _run_missing(list(missing), pieces, cache, jobs or default_jobs(), progress)

    out = {}
    for pair, piece_list in plans.items():
        total = Counters()
        for piece in piece_list:
            total = total + pieces[(piece.shape, pair[1])] * piece.weight
        out[pair] = total
    return out


def _run_missing(
    missing: list[tuple[Shape, Hardware]],
    pieces: dict[tuple[Shape, Hardware], Counters],
    cache: ResultCache,
    jobs: int,
    progress: Progress | None,
) -> None:
    """Run the uncached pieces, largest first, storing each result as soon as it is done."""
    missing = sorted(missing, key=lambda p: p[0][0] * p[0][1] * p[0][2], reverse=True)
    total = len(missing)
    if progress:
        progress(0, total)

    def record(pair: tuple[Shape, Hardware], counters: Counters, done: int) -> None:
        pieces[pair] = counters
        cache.put(
            piece_key(*pair), counters.to_dict(), m=pair[0][0], n=pair[0][1], k=pair[0][2], hw=pair[1].name
        )
        if progress:
            progress(done, total)

    if jobs <= 1 or total <= 1:
        for done, pair in enumerate(missing, 1):
            record(pair, _run_piece(*pair), done)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, total)) as pool:
        futures = {pool.submit(_run_piece, *pair): pair for pair in missing}
        for done, future in enumerate(as_completed(futures), 1):
            record(futures[future], future.result(), done)
