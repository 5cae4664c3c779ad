"""Explore's table in bulk: a space's points priced as arrays, handed out in row order, block by block.

Why: `sweep.run_points` builds a Split per point (Python objects per GEMM and point): exact, but about
5,000 points/s and memory that grows with the space. Here the counters of each distinct (GEMM shape,
design) come once (the closed form, or the real SCALE-Sim through `engine.evaluate`), and all that is
priced on top of them (bytes, time, energy, the fractions) is computed for every design x clock x pricing
of one workload at once with NumPy, through the same helpers and in the same float operations as
`costs.price` and `Split`: every row is byte for byte the one `run_points` + `sweep.csv_row` give
(tests/test_explore.py compares them). Blocks come in the space's order and hold a bounded number of
rows, so a caller writes each as it comes and memory stays flat however large the space.

What decides what (so each piece is computed once, not once per row):
  counters, totals, frac_cycles / frac_memory     workload x design (a design: hardware without its clock)
  bytes, energy, frac_energy / frac_dram_bytes     workload x design x pricing
  time, tokens/s, frac_time                        workload x design x clock x pricing (one per row)"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from llm1bit.backends import BACKENDS, get_backend
from llm1bit.cache import ResultCache
from llm1bit.costs import Pricing, joules, operand_costs, seconds, word_bytes
from llm1bit.counters import Counters
from llm1bit.engine import Executor, Progress, RunReport, evaluate
from llm1bit.hardware import DEFAULT_DRAM_GBPS, DEFAULT_FREQ_MHZ, Hardware
from llm1bit.model_spec import ModelSpec
from llm1bit.phases import tokens_per_step
from llm1bit.split import point_label
from llm1bit.sweep import CSV_COLUMNS
from llm1bit.workload import MATMUL_FREE, Gemm, build_workload

# The leading (label) columns, by what decides them; the rest are metrics.
BY_MODEL_AND_DESIGN = CSV_COLUMNS[: CSV_COLUMNS.index("seq_len")]
BY_WORKLOAD = CSV_COLUMNS[len(BY_MODEL_AND_DESIGN) : CSV_COLUMNS.index("weight_bits")]
BY_PRICING_AND_CLOCK = CSV_COLUMNS[CSV_COLUMNS.index("weight_bits") : CSV_COLUMNS.index("matmul_free_cycles")]
METRICS = CSV_COLUMNS[CSV_COLUMNS.index("matmul_free_cycles") :]
# Metric columns that hold counter totals: integers, or floats where a count is fractional (MoE experts).
TOTALS = {
    MATMUL_FREE: ("matmul_free_cycles", "matmul_free_accesses", "matmul_free_dram"),
    "matmul": ("matmul_cycles", "matmul_accesses", "matmul_dram"),
}
COUNTER_FIELDS = tuple(f.name for f in fields(Counters))
ROWS_PER_BLOCK = 65_536


class SpaceAxes(Protocol):
    """What a table is the product of (explore.Space), in row order: models x hardware x seq_lens x phases
    x batches x pricings."""

    backend: str
    models: Sequence[ModelSpec]
    hardware: Sequence[Hardware]
    seq_lens: Sequence[int]
    phases: Sequence[str]
    batches: Sequence[int]
    pricings: Sequence[Pricing]


def design(hw: Hardware) -> Hardware:
    """The hardware without its clock and bandwidth: what decides the counters."""
    return dataclasses.replace(hw, freq_mhz=DEFAULT_FREQ_MHZ, dram_gbps=DEFAULT_DRAM_GBPS)


def csv_fields(values: Sequence) -> str:
    """Values as csv.DictWriter writes them inside a row (quoted where needed), joined by commas."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([*values, ""])  # never a lone empty field ('""')
    return buf.getvalue()[:-2]


def number_or_text(value: object) -> object:
    """A CSV text field that holds a number is that number (the Parquet table's values)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _fmt6(values: list[float]) -> list[str]:
    return [f"{x:.6f}" for x in values]


@dataclass
class Block:
    """Consecutive rows of the table: one model, a run of hardware entries, each with every workload and
    pricing (row order: hardware, then workload, then pricing)."""

    model: ModelSpec
    lines: list[str]  # the rows as CSV text, each ending in a newline
    tokens_per_s: np.ndarray  # per row
    energy_j: np.ndarray  # per row
    tokens: np.ndarray  # per row: tokens per forward step
    columns: dict[str, list | np.ndarray]  # per column, the Parquet values (numbers as numbers)

    def __len__(self) -> int:
        return len(self.lines)

    def csv(self) -> str:
        return "".join(self.lines)


class BulkTable:
    """A space's table: simulator runs first (the real SCALE-Sim's, through the store and an executor), then
    blocks of rows priced in bulk as `blocks()` is iterated."""

    def __init__(
        self,
        space: SpaceAxes,
        cache: ResultCache | None = None,
        jobs: int | None = None,
        progress: Progress | None = None,
        report: RunReport | None = None,
        executor: Executor | None = None,
        parquet: bool = False,
    ) -> None:
        if any(m.proj_bits for m in space.models):  # their label is Split._per_layer_bits: not priced here
            raise ValueError("bulk pricing takes no models with per-layer widths; use sweep.run_points")
        self.space = space
        self.workloads = list(itertools.product(space.seq_lens, space.phases, space.batches))
        self.design_of = {h: design(h) for h in space.hardware}
        self.parquet = parquet
        self.backend = get_backend(space.backend)
        self._uncovered: set[tuple] = set()
        self._stored: dict[str, dict] = {}
        if self.backend.stored:
            self._simulate(cache, jobs, progress, report, executor)
        self._pricing_label = {p: point_label(*self._ref(), backend="", pricing=p) for p in space.pricings}

    def __len__(self) -> int:
        s = self.space
        return len(s.models) * len(s.hardware) * len(self.workloads) * len(s.pricings)

    def _ref(self) -> tuple:
        s = self.space
        return s.models[0], s.hardware[0], s.seq_lens[0], s.phases[0], s.batches[0]

    def _simulate(self, cache, jobs, progress, report, executor) -> None:
        """Every distinct (shape, design) pair through a stored backend (the real SCALE-Sim), the pairs of a
        workload it does not compute exactly through its fallback (the closed form), as `sweep.run_points`
        does (the store first, then the executor)."""
        from llm1bit.errors import UserError

        chosen, fallback = self.backend, self.backend.fallback

        def covered(pair: tuple) -> bool:
            if fallback is None:  # nothing to fall back on: evaluate refuses what the backend cannot do
                return True
            try:
                chosen.check(*pair)
                return True
            except UserError:
                self._uncovered.add(pair)
                return False

        designs = list(dict.fromkeys(self.design_of.values()))
        wanted: dict[str, dict[tuple, None]] = {name: {} for name in (chosen.name, fallback) if name}
        checked: dict[tuple, bool] = {}
        for model in self.space.models:
            for w in self.workloads:
                shapes = [g.shape for g in build_workload(model, *w)]
                for d in designs:
                    pairs = [(shape, d) for shape in shapes]
                    for pair in pairs:
                        if pair not in checked:
                            checked[pair] = covered(pair)
                    exact = all(checked[pair] for pair in pairs)
                    wanted[chosen.name if exact else fallback].update(dict.fromkeys(pairs))
        for name, pairs in wanted.items():
            if pairs:
                self._stored[name] = evaluate(
                    pairs, name, cache=cache, jobs=jobs, progress=progress, report=report, executor=executor
                )

    def blocks(self, rows_per_block: int | None = None) -> Iterator[Block]:
        """The table in row order, about `rows_per_block` rows at a time (at least one hardware entry's)."""
        s = self.space
        per_hw = len(self.workloads) * len(s.pricings)
        step = max(1, (rows_per_block or ROWS_PER_BLOCK) // per_hw)
        for model in s.models:
            priced = _ModelPricer(self, model)
            for start in range(0, len(s.hardware), step):
                yield priced.block(s.hardware[start : start + step])

    def parquet_samples(self) -> dict[str, list]:
        """Per column, values with every Python type the column will hold (pyarrow infers the same type from
        them as from the whole column)."""
        s, (model0, hw0, seq0, phase0, batch0) = self.space, self._ref()
        labels = [point_label(m, hw0, seq0, phase0, batch0, "", s.pricings[0]) for m in s.models]
        labels += [point_label(model0, h, seq0, phase0, batch0, "", s.pricings[0]) for h in s.hardware]
        labels += [point_label(model0, hw0, *w, b, s.pricings[0]) for w in self.workloads for b in BACKENDS]
        labels += list(self._pricing_label.values())
        out = {
            c: list(dict.fromkeys(number_or_text(label[c]) for label in labels))
            for c in CSV_COLUMNS
            if c not in METRICS
        }
        fractional = {  # parts with a fractional count somewhere: float totals
            g.part for model in s.models for w in self.workloads for g in build_workload(model, *w)
            if isinstance(g.count, float)
        }  # fmt: skip
        out.update({c: [0.0] for c in METRICS})
        out.update({c: [0.0 if part in fractional else 0] for part, cols in TOTALS.items() for c in cols})
        return out


@dataclass
class _Priced:
    """One workload priced on a block's designs (D) and hardware entries (H), per pricing (P)."""

    backend: list[str]  # per design
    totals: list[tuple]  # per design: the six counter totals, frac_cycles and frac_memory as text
    dram_bytes: tuple[np.ndarray, np.ndarray]  # MatMul-free and MatMul parts, D x P
    energy: np.ndarray  # D x P
    frac_energy: np.ndarray  # D x P
    frac_dram_bytes: np.ndarray  # D x P
    time: np.ndarray  # H x P
    tokens_per_s: np.ndarray  # H x P
    frac_time: np.ndarray  # H x P


def _counter_totals(gemms: list[Gemm], counters: list[np.ndarray]) -> list[tuple]:
    """Per design, the counter columns of a row: Split's sums of Counters x count in Python numbers (object
    arrays: integers stay exact, fractional counts give the same floats)."""
    zero = np.zeros(counters[0].shape, dtype=object)
    totals = {part: zero for part in TOTALS}
    for g, c in zip(gemms, counters):
        totals[g.part] = totals[g.part] + c.astype(object) * g.count
    free, mm = totals[MATMUL_FREE], totals["matmul"]
    total = mm + free  # Split.total
    accesses = [x[:, 1] + x[:, 2] + x[:, 3] for x in (free, mm, total)]  # Counters.memory_accesses
    dram = [x[:, 4] + x[:, 5] + x[:, 6] for x in (free, mm)]  # dram_reads + dram_writes
    frac_c, frac_m = free[:, 0] / total[:, 0], accesses[0] / accesses[2]
    columns = (free[:, 0], mm[:, 0], accesses[0], accesses[1], dram[0], dram[1])
    return list(zip(*(c.tolist() for c in columns), _fmt6(frac_c.tolist()), _fmt6(frac_m.tolist())))


class _ModelPricer:
    """One model's workloads, their counters per design and their operand costs per pricing, kept while its
    blocks are priced."""

    def __init__(self, table: BulkTable, model: ModelSpec) -> None:
        self.table, self.model = table, model
        pricings = table.space.pricings
        self.gemms = [build_workload(model, *w) for w in table.workloads]
        self.tokens = [tokens_per_step(ph, b, seq) for seq, ph, b in table.workloads]
        operand = {
            g: [operand_costs(g, p) for p in pricings] for g in dict.fromkeys(itertools.chain(*self.gemms))
        }
        # per GEMM: bits moved per filter element and operations' energy, per pricing
        self.filter_bits = {g: np.array([x[1] for x in costs]) for g, costs in operand.items()}
        self.ops_j = {g: np.array([x[2] for x in costs]) for g, costs in operand.items()}
        self.act = np.array([p.precision.act_bits for p in pricings])
        self.sram_pj = np.array([p.energy.sram_per_byte for p in pricings])
        self.dram_pj = np.array([p.energy.dram_per_byte for p in pricings])
        self._counters: dict[tuple, tuple[int, ...]] = {}

    def _counter_row(self, shape: tuple[int, int, int], d: Hardware, backend: str) -> tuple[int, ...]:
        key = (shape, d, backend)
        if key not in self._counters:
            stored = self.table._stored.get(backend)
            # a backend that is not `stored` (the closed form) computes on demand: memory stays flat
            c = (
                stored[(shape, d)]
                if stored is not None
                else self.table.backend.counters([(shape, d)])[(shape, d)]
            )
            self._counters[key] = tuple(getattr(c, f) for f in COUNTER_FIELDS)
        return self._counters[key]

    def _backend(self, gemms: list[Gemm], d: Hardware) -> str:
        t = self.table
        if t._uncovered and any((g.shape, d) in t._uncovered for g in gemms):
            return t.backend.fallback
        return t.space.backend

    def _price(self, wi: int, designs: list[Hardware], dix: np.ndarray, freq, gbps) -> _Priced:
        """Costs.price and Split's sums for every design / hardware entry x pricing of one workload at once:
        the same helpers, the same operations in the same order, on arrays."""
        gemms, tokens = self.gemms[wi], self.tokens[wi]
        backend = [self._backend(gemms, d) for d in designs]
        counters = [
            np.array([self._counter_row(g.shape, d, b) for d, b in zip(designs, backend)], dtype=np.int64)
            for g in gemms
        ]
        zero = np.zeros((len(designs), len(self.act)))
        dram_b, ops_j, sram_j, dram_j = ({p: zero for p in TOTALS} for _ in range(4))  # PartCost fields
        time = {p: np.zeros((len(dix), len(self.act))) for p in TOTALS}
        for g, c in zip(gemms, counters):
            cycles, s_if, s_fi, s_of, d_if, d_fi, d_of = (c[:, i : i + 1] for i in range(7))
            sram = word_bytes(s_if, s_fi, s_of, self.act, self.filter_bits[g])
            dram = word_bytes(d_if, d_fi, d_of, self.act, self.filter_bits[g])
            compute_s, memory_s = seconds(cycles[dix], dram[dix], freq, gbps)
            n, part = g.count, g.part
            time[part] = time[part] + np.maximum(compute_s, memory_s) * n
            dram_b[part] = dram_b[part] + dram * n
            ops_j[part] = ops_j[part] + self.ops_j[g] * n
            sram_j[part] = sram_j[part] + joules(sram, self.sram_pj) * n
            dram_j[part] = dram_j[part] + joules(dram, self.dram_pj) * n
        free_e, mm_e = (ops_j[p] + sram_j[p] + dram_j[p] for p in (MATMUL_FREE, "matmul"))
        free_t, mm_t = time[MATMUL_FREE], time["matmul"]
        free_b, mm_b = dram_b[MATMUL_FREE], dram_b["matmul"]
        latency = free_t + mm_t
        return _Priced(
            backend=backend,
            totals=_counter_totals(gemms, counters),
            dram_bytes=(free_b, mm_b),
            energy=free_e + mm_e,
            frac_energy=free_e / (free_e + mm_e),
            frac_dram_bytes=free_b / (free_b + mm_b),
            time=latency,
            tokens_per_s=tokens / latency,
            frac_time=free_t / (free_t + mm_t),
        )

    def block(self, hardware: Sequence[Hardware]) -> Block:
        t = self.table
        index = {d: i for i, d in enumerate(dict.fromkeys(t.design_of[h] for h in hardware))}
        dix = np.array([index[t.design_of[h]] for h in hardware])
        freq = np.array([h.freq_mhz for h in hardware])[:, None]
        gbps = np.array([h.dram_gbps for h in hardware])[:, None]
        priced = [self._price(wi, list(index), dix, freq, gbps) for wi in range(len(t.workloads))]
        n_w, n_p = len(t.workloads), len(t.space.pricings)
        # row order: hardware entry, then workload, then pricing
        h_idx = np.repeat(np.arange(len(hardware)), n_w * n_p)
        w_idx = np.tile(np.repeat(np.arange(n_w), n_p), len(hardware))
        p_idx = np.tile(np.arange(n_p), len(hardware) * n_w)
        rows = (h_idx, w_idx, p_idx, dix[h_idx])
        tokens_per_s = np.stack([x.tokens_per_s for x in priced], axis=1).reshape(-1)
        energy = np.stack([x.energy for x in priced])[w_idx, rows[3], p_idx]
        return Block(
            model=self.model,
            lines=self._csv_lines(hardware, dix, priced),
            tokens_per_s=tokens_per_s,
            energy_j=energy,
            tokens=np.array(self.tokens)[w_idx],
            columns=self._columns(hardware, priced, rows) if t.parquet else {},
        )

    def _design_label(self, h: Hardware) -> dict:
        label = point_label(
            self.model, h, *self.table._ref()[2:], backend="", pricing=self.table.space.pricings[0]
        )
        return {c: label[c] for c in BY_MODEL_AND_DESIGN}

    def _workload_label(self, wi: int, backend: str) -> dict:
        t = self.table
        label = point_label(self.model, t.space.hardware[0], *t.workloads[wi], backend, t.space.pricings[0])
        return {c: label[c] for c in BY_WORKLOAD}

    def _pricing_and_clock_label(self, pricing: Pricing, h: Hardware) -> dict:
        label = {**self.table._pricing_label[pricing], "freq_mhz": h.freq_mhz, "dram_gbps": h.dram_gbps}
        return {c: label[c] for c in BY_PRICING_AND_CLOCK}

    def _csv_lines(self, hardware: Sequence[Hardware], dix: np.ndarray, priced: list[_Priced]) -> list[str]:
        """The rows as sweep.csv_row + csv.DictWriter write them: pieces shared by many rows are formatted
        once (labels per hardware entry, workload and clock; counters per design; bytes and energy per design
        and pricing), what differs per row (time, tokens/s, frac_time) per row."""
        pricings = self.table.space.pricings
        design_text = [csv_fields(self._design_label(h).values()) + "," for h in hardware]
        clock_text: dict[tuple, list[str]] = {}
        for h in hardware:
            if (h.freq_mhz, h.dram_gbps) not in clock_text:
                clock_text[(h.freq_mhz, h.dram_gbps)] = [
                    csv_fields(self._pricing_and_clock_label(p, h).values()) + "," for p in pricings
                ]
        workload_text, counters_text, energy_text, tail_text, per_row = [], [], [], [], []
        for wi, x in enumerate(priced):
            workload_text.append(
                {b: csv_fields(self._workload_label(wi, b).values()) + "," for b in dict.fromkeys(x.backend)}
            )
            free_b, mm_b = (b.tolist() for b in x.dram_bytes)
            counters_text.append(
                [
                    [f"{','.join(map(str, totals))},{a!r},{b!r}," for a, b in zip(free, mm)]
                    for totals, free, mm in zip(x.totals, free_b, mm_b)
                ]
            )
            energy_text.append([[f"{e!r}," for e in row] for row in x.energy.tolist()])
            tail_text.append(
                [
                    [f"{a:.6f},{b:.6f}\n" for a, b in zip(fe, fd)]
                    for fe, fd in zip(x.frac_energy.tolist(), x.frac_dram_bytes.tolist())
                ]
            )
            per_row.append(list(zip(x.time.tolist(), x.tokens_per_s.tolist(), x.frac_time.tolist())))
        lines = []
        for hi, h in enumerate(hardware):
            d, clock = dix[hi], clock_text[(h.freq_mhz, h.dram_gbps)]
            for wi, x in enumerate(priced):
                lead = design_text[hi] + workload_text[wi][x.backend[d]]
                counters, energy, tail = counters_text[wi][d], energy_text[wi][d], tail_text[wi][d]
                for pi, (time, tps, frac_time) in enumerate(zip(*per_row[wi][hi])):
                    row = f"{lead}{clock[pi]}{counters[pi]}{time!r},{tps!r},{energy[pi]}{frac_time:.6f},"
                    lines.append(row + tail[pi])
        return lines

    def _columns(
        self, hardware: Sequence[Hardware], priced: list[_Priced], rows: tuple
    ) -> dict[str, list | np.ndarray]:
        """The block's Parquet values, column by column: numbers as numbers (`number_or_text`)."""
        h_idx, w_idx, p_idx, d_idx = (x.tolist() for x in rows)
        pricings = self.table.space.pricings
        out: dict[str, list | np.ndarray] = {}
        design = [{c: number_or_text(v) for c, v in self._design_label(h).items()} for h in hardware]
        workload = [
            {
                b: {c: number_or_text(v) for c, v in self._workload_label(wi, b).items()}
                for b in dict.fromkeys(x.backend)
            }
            for wi, x in enumerate(priced)
        ]
        pricing_and_clock = [
            [{c: number_or_text(v) for c, v in self._pricing_and_clock_label(p, h).items()} for p in pricings]
            for h in hardware
        ]
        for c in BY_MODEL_AND_DESIGN:
            out[c] = [design[h][c] for h in h_idx]
        for c in BY_WORKLOAD:
            out[c] = [workload[w][priced[w].backend[d]][c] for w, d in zip(w_idx, d_idx)]
        for c in BY_PRICING_AND_CLOCK:
            out[c] = [pricing_and_clock[h][p][c] for h, p in zip(h_idx, p_idx)]
        for j, c in enumerate(METRICS[:8]):
            out[c] = [number_or_text(priced[w].totals[d][j]) for w, d in zip(w_idx, d_idx)]
        w, d, h, p = (np.asarray(x) for x in (w_idx, d_idx, h_idx, p_idx))
        per_design = {  # W x D x P
            "matmul_free_dram_bytes": np.stack([x.dram_bytes[0] for x in priced]),
            "matmul_dram_bytes": np.stack([x.dram_bytes[1] for x in priced]),
            "energy_j": np.stack([x.energy for x in priced]),
        }
        for c, values in per_design.items():
            out[c] = values[w, d, p]
        for c, attr in (("time_s", "time"), ("tokens_per_s", "tokens_per_s")):
            out[c] = np.stack([getattr(x, attr) for x in priced])[w, h, p]
        fractions = {
            "frac_time": np.stack([x.frac_time for x in priced])[w, h, p],
            "frac_energy": np.stack([x.frac_energy for x in priced])[w, d, p],
            "frac_dram_bytes": np.stack([x.frac_dram_bytes for x in priced])[w, d, p],
        }
        for c, values in fractions.items():
            out[c] = [float(x) for x in _fmt6(values.tolist())]
        return out
