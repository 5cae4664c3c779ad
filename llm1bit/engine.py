"""Engine: counters for a batch of GEMMs from one registered backend, deduplicated, stored and in parallel.

`evaluate` looks the backend up in the registry (llm1bit.backends) and hands it the distinct pairs with a
`Runs`: what a backend whose runs are expensive (`stored`, the real SCALE-Sim) needs besides its own
knowledge. `Runs.results` looks every run up in the verified result store (each store key once), runs the
missing ones on an executor (a local process pool, or Ray tasks; largest first) and stores each finished run
at once in this driver. Ctrl-C stops the workers at once (pool workers ignore SIGINT and are terminated; Ray
tasks are cancelled), keeps every run that finished and says how to resume. A cheap backend (the closed
form) computes in-process and never touches the store."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from llm1bit.backends import get_backend
from llm1bit.backends.base import Pair
from llm1bit.cache import ResultCache
from llm1bit.counters import Counters
from llm1bit.errors import Interrupted, UserError, unknown_choice, warn

EXECUTORS = ("local", "ray")
# progress(done, total) after each finished real simulator run
Progress = Callable[[int, int], None]
# one run on a worker: (shape, hardware) -> the pair and its counters (a top-level function: shipped by name)
Simulate = Callable[[Pair], tuple[Pair, Counters]]


@dataclass
class RunReport:
    """What one evaluation did with the real simulator: runs found in the store, run now."""

    stored: int = 0
    simulated: int = 0

    def summary(self) -> str:
        if not self.stored and not self.simulated:
            return ""
        return f"SCALE-Sim runs: {self.stored} from the store, {self.simulated} simulated"


def _worker_init() -> None:
    """Workers leave Ctrl-C to the driver, and exit cleanly (temporary folders removed) when it terminates them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


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
    executor: Executor | None = None,
) -> dict[Pair, Counters]:
    """Counters of every distinct (shape, hardware) pair from the registered backend `backend`."""
    chosen = get_backend(backend)
    if not chosen.available():
        raise UserError(f"backend {backend} is not installed here: {chosen.install}")
    runs = Runs(
        cache or ResultCache(None),
        jobs or default_jobs(),
        progress,
        report if report is not None else RunReport(),
        executor or Executor(),
        temporal_unit,
    )
    return chosen.counters(list(dict.fromkeys(shapes)), runs)


@dataclass
class Runs:
    """What `evaluate` lends a backend whose runs are expensive (backends.Runs): the result store, an executor,
    the progress callback and the report, behind `results`."""

    cache: ResultCache
    jobs: int
    progress: Progress | None
    report: RunReport
    executor: Executor
    temporal_unit: int | None = None  # the composition's step along the streamed dimension (tests shrink it)

    def results(self, runs: dict[str, Pair], simulate: Simulate, **meta: object) -> dict[str, Counters]:
        """Counters of every run, by store key: the stored ones from the store, the others `simulate`d on the
        executor (largest first) and stored, with `meta` (backend, simulator version), as each finishes."""
        cache, report = self.cache, self.report
        rejected_before = cache.rejected
        hits = cache.get_many(runs)
        pieces: dict[str, Counters] = {key: Counters.from_dict(value) for key, value in hits.items()}
        report.stored += len(pieces)
        if cache.rejected > rejected_before:
            warn(
                f"{cache.rejected - rejected_before} stored results in {cache.path} failed verification; "
                "they were discarded and are recomputed"
            )
        missing = [pair for key, pair in runs.items() if key not in pieces]
        keys = {pair: key for key, pair in runs.items()}
        _run_missing(
            missing, pieces, cache, keys, simulate, meta, self.jobs, self.progress, report, self.executor
        )
        return pieces


def _run_missing(
    missing: list[Pair],
    pieces: dict[str, Counters],
    cache: ResultCache,
    keys: dict[Pair, str],
    simulate: Simulate,
    meta: dict[str, object],
    jobs: int,
    progress: Progress | None,
    report: RunReport,
    executor: Executor,
) -> None:
    """Run the pieces not in the store, largest first, storing each result as soon as it is done."""
    missing = sorted(missing, key=lambda p: p[0][0] * p[0][1] * p[0][2], reverse=True)
    total = len(missing)
    if progress:
        progress(0, total)
    if not missing:  # everything stored: no pool, no Ray runtime to start or reach
        return

    def record(pair: Pair, counters: Counters) -> None:
        pieces[keys[pair]] = counters
        cache.put(
            keys[pair],
            counters.to_dict(),
            **meta,
            m=pair[0][0],
            n=pair[0][1],
            k=pair[0][2],
            hw=pair[1].name,
        )
        report.simulated += 1
        if progress:
            progress(report.simulated, total)

    results = (
        _serial(missing, simulate)
        if executor.kind == "local" and (jobs <= 1 or total <= 1)
        else _pool(missing, min(jobs, total), simulate)
        if executor.kind == "local"
        else _ray(missing, executor, simulate)
    )
    try:
        for pair, counters in results:
            record(pair, counters)
    except KeyboardInterrupt:
        where = f" in the store {cache.path}" if cache.path else " (no store: --cache-dir is off)"
        raise Interrupted(
            f"interrupted: kept {report.simulated} of {total} SCALE-Sim runs finished by this run{where}; "
            "run the same command again to resume without recomputing them"
        ) from None
    finally:
        results.close()  # stops the workers (pool terminated / Ray tasks cancelled), on Ctrl-C before the message


def _serial(missing: list[Pair], simulate: Simulate) -> Iterator[tuple[Pair, Counters]]:
    for pair in missing:
        yield simulate(pair)


def _pool(missing: list[Pair], processes: int, simulate: Simulate) -> Iterator[tuple[Pair, Counters]]:
    """A local process pool; closing the generator (done, Ctrl-C, error) terminates its workers at once."""
    import multiprocessing  # here: only runs of the real simulator start a pool (a few ms of every start-up)

    pool = multiprocessing.Pool(processes, initializer=_worker_init)
    try:
        yield from pool.imap_unordered(simulate, missing)
        pool.close()
        pool.join()
    finally:
        pool.terminate()
        pool.join()


def _ray(missing: list[Pair], executor: Executor, simulate: Simulate) -> Iterator[tuple[Pair, Counters]]:
    """Ray tasks, one per run, results back to this driver (which verifies and stores them): the existing
    cluster at `address`, else a local Ray runtime on loopback with `jobs` CPUs. Closing early (Ctrl-C, an
    error) shuts Ray down, which stops the tasks left (cancelling them one by one races their completion
    and can abort Ray itself)."""
    try:
        import ray
    except ModuleNotFoundError:
        raise UserError("--executor ray needs Ray: pip install 'llm1bit[ray]'") from None
    started = not ray.is_initialized()
    if started and executor.address:
        check_ray_address(executor.address)
    if started:
        options = {"address": executor.address} if executor.address else {
            "num_cpus": executor.jobs, "_node_ip_address": "127.0.0.1", "include_dashboard": False,
        }  # fmt: skip
        logging.getLogger("ray").setLevel(logging.ERROR)  # its start-up notices are not ours to print
        try:
            ray.init(**options, log_to_driver=False, logging_level="ERROR", configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(
                f"cannot start or reach Ray at {executor.address or 'a local runtime'}: {exc}"
            ) from None
    task = ray.remote(num_cpus=1, max_retries=2)(simulate)
    pending = {task.remote(pair): pair for pair in missing}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                del pending[ref]
                yield ray.get(ref)
    finally:
        if started:
            ray.shutdown()


RAY_CONNECT_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001  # Ray Client's default port (ray://HOST)


def check_ray_address(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Refuse, within seconds, a HOST:PORT (a cluster's GCS) or ray://HOST[:PORT] (Ray Client) where nothing
    listens: Ray itself retries for minutes (GCS) or 30 s (ray://), printing warnings. `auto` and other
    forms are left to Ray."""
    scheme, sep, rest = address.strip().partition("://")
    if not sep:
        scheme, rest = "", address.strip()
    rest = rest.rstrip("/")
    if scheme not in ("", "ray") or (not scheme and ":" not in rest) or not rest:
        return
    host, colon, port_text = rest.rpartition(":")
    if not colon or "]" in port_text:  # ray://HOST or ray://[v6]: the client's default port
        host, port_text = rest, str(RAY_CLIENT_PORT)
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise UserError(
            f"--ray-address {address}: {port_text!r} is not a port; give HOST:PORT, ray://HOST:10001 or auto"
        ) from None
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = (
            "connection refused"
            if isinstance(exc, ConnectionRefusedError)
            else f"no answer within {timeout_s:g} s"
            if isinstance(exc, TimeoutError)
            else exc.strerror or str(exc)
        )
        raise UserError(
            f"cannot reach a Ray cluster at {address}: {reason}; start one there (`ray start --head`) "
            "or check the address and port"
        ) from None


@dataclass(frozen=True)
class Executor:
    """Where the missing simulator runs execute: `local` (a process pool of `jobs`) or `ray` (tasks on the
    cluster at `address`, or on a local Ray runtime with `jobs` CPUs). Results are identical either way."""

    kind: str = "local"
    jobs: int = 0
    address: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise unknown_choice("executor", self.kind, EXECUTORS)
