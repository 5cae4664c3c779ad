"""The backend interface: what a backend computes (`Backend`) and what the engine lends it (`Runs`).

Kept apart from the registry (llm1bit.backends) so that listing the backends' names, which every command's
--backend option does at start-up, defines no protocol classes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from llm1bit.cache import ResultCache
    from llm1bit.counters import Counters
    from llm1bit.hardware import Hardware

Shape = tuple[int, int, int]  # (M, N, K)
Pair = tuple[Shape, "Hardware"]


class Runs(Protocol):
    """What the engine lends a backend whose runs are expensive (engine.Runs): the result store, an executor,
    progress and a report behind one call."""

    cache: ResultCache
    temporal_unit: int | None  # the composition's step along the streamed dimension (None: the backend's own)

    def results(
        self, runs: dict[str, Pair], simulate: Callable[[Pair], tuple[Pair, Counters]], **meta: object
    ) -> dict[str, Counters]:
        """Counters of every run, by store key: found in the store, or `simulate`d and stored (with `meta`)."""
        ...


class Backend(Protocol):
    """Counters of a batch of (GEMM shape, hardware) pairs, field for field SCALE-Sim 2.0.2's."""

    name: str
    stored: bool  # runs are expensive: run them in one batch, through the store (else: computed on demand)
    fallback: (
        str | None
    )  # the backend that computes, exactly too, the GEMMs `check` refuses (None: no refusals)
    install: str  # what makes `available()` true, for its error

    def available(self) -> bool:
        """Whether this backend can run here (its simulator is installed)."""
        ...

    def check(self, shape: Shape, hw: Hardware) -> None:
        """Refuse (UserError, one line) a GEMM this backend does not compute exactly."""
        ...

    def counters(self, pairs: Sequence[Pair], runs: Runs | None = None) -> dict[Pair, Counters]:
        """Counters of every pair; `runs` is required by `stored` backends (engine.evaluate passes it)."""
        ...
