"""Dataflows: how SCALE-Sim's three dataflows lay a GEMM onto the systolic array, in one table.

SCALE-Sim takes a GEMM (M, N, K) as ifmap M x K times filter K x N into ofmap M x N. On an R x C array
each dataflow pins two GEMM dimensions to the array, folded in ceil splits (`for fc: for fr:`, each fold
padded to the whole array), and streams the third in time:

    dataflow   array rows   array cols   streamed   stationary in the PEs
    os         M            N            K          ofmap (sums accumulate in place)
    ws         K            N            M          filter
    is         K            M            N          ifmap

Everything the backends, the composition and its exactness check branch on follows from that mapping,
so it is written once, here: the step along each dimension (a fold of R or C, or a time unit), the fold
loop that brings an operand back (the one over the dimension the operand lacks), and whether a fold first
loads a stationary input (ws, is: R more cycles, one partial sum written per row fold)."""

from __future__ import annotations

from llm1bit.errors import unknown_choice

DIMS = "mnk"  # a GEMM's dimensions, in the order of its shape (M, N, K)
OPERANDS = ("ifmap", "filter", "ofmap")
OPERAND_DIMS = {"ifmap": "mk", "filter": "kn", "ofmap": "mn"}
# How often an operand goes through the array, as an index into (1, Fr, Fc): once, once per row fold (the inner
# loop: each tile several times in a row), once per column fold (the outer loop: the whole round again).
ONCE, PER_ROW_FOLD, PER_COL_FOLD = 0, 1, 2


class Dataflow:
    """One row of the table: which GEMM dimension ("m", "n" or "k") goes where on the array; the rest is derived
    once, here (the closed form reads it for every GEMM). Read-only by convention: a plain class, not a
    dataclass, because the CLI imports this module for its choices and a dataclass costs start-up time."""

    __slots__ = ("name", "rows", "cols", "streamed", "axes", "passes", "stationary", "preloads")

    def __init__(self, name: str, rows: str, cols: str, streamed: str) -> None:
        if sorted(rows + cols + streamed) != sorted(DIMS):
            raise ValueError(f"dataflow {name}: rows, cols and streamed must be m, n and k once each")
        self.name = name
        self.rows = rows  # folded over the array's R rows
        self.cols = cols  # folded over its C columns
        self.streamed = streamed  # streamed through the array in time
        # positions of the rows / cols / streamed dimension in (M, N, K)
        self.axes = tuple(DIMS.index(d) for d in (rows, cols, streamed))
        # per operand (ifmap, filter, ofmap): ONCE / PER_ROW_FOLD / PER_COL_FOLD. An operand lacks one dimension:
        # the fold loop over it brings the operand back; lacking the streamed one, it passes once.
        lacks = [next(d for d in DIMS if d not in OPERAND_DIMS[op]) for op in OPERANDS]
        self.passes = tuple(PER_ROW_FOLD if d == rows else PER_COL_FOLD if d == cols else ONCE for d in lacks)
        # the operand that holds both pinned dimensions and stays in the PEs for a whole fold
        self.stationary = OPERANDS[lacks.index(streamed)]
        # whether a fold first loads a stationary input (ws, is: R cycles) or accumulates the output in place (os)
        self.preloads = self.stationary != "ofmap"

    def __repr__(self) -> str:
        return f"Dataflow({self.name!r}, rows={self.rows!r}, cols={self.cols!r}, streamed={self.streamed!r})"

    def times(self, operand: str, row_folds: int, col_folds: int) -> int:
        """How many times `operand` goes through the array: 1, Fr or Fc."""
        return (1, row_folds, col_folds)[self.passes[OPERANDS.index(operand)]]

    def folds(self, m: int, n: int, k: int, rows: int, cols: int) -> tuple[int, int]:
        """(Fr, Fc): folds of the rows dimension over R rows and of the cols dimension over C columns."""
        shape = (m, n, k)
        return -(-shape[self.axes[0]] // rows), -(-shape[self.axes[1]] // cols)

    def step_units(self, rows: int, cols: int, temporal: int) -> tuple[int, int, int]:
        """The step along M, N and K: R or C on the pinned dimensions (one fold), `temporal` on the streamed one."""
        unit = {self.rows: rows, self.cols: cols, self.streamed: temporal}
        return unit["m"], unit["n"], unit["k"]


DATAFLOW_TABLE: dict[str, Dataflow] = {
    "os": Dataflow("os", rows="m", cols="n", streamed="k"),
    "ws": Dataflow("ws", rows="k", cols="n", streamed="m"),
    "is": Dataflow("is", rows="k", cols="m", streamed="n"),
}
DATAFLOWS: tuple[str, ...] = tuple(DATAFLOW_TABLE)


def dataflow(name: str) -> Dataflow:
    """The table's row for `name`; an unknown name is a one-line error listing the known ones."""
    flow = DATAFLOW_TABLE.get(name)
    if flow is None:
        raise unknown_choice("dataflow", name, DATAFLOWS)
    return flow
