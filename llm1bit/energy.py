"""Energy: a table of unit energies (a JSON file users can replace) and the pricing of operations with it.

Energy of one GEMM = Σ operations × energy per operation + SRAM bytes × energy per SRAM byte +
DRAM bytes × energy per DRAM byte. Which operations a product needs depends on its part and on
the weight format (README "Cost model"): multiply-accumulates for the attention heads (here); for
a projection, what its weight format says (`WeightFormat.ops` in llm1bit.weight_formats: MACs for
fp weights, dequantization plus a MAC at the activation precision for uniform integer weights,
additions only for binary and ternary weights, LUT queries or additions plus shifts for BCQ with
power-of-two scales). Operations are named in the table's vocabulary (llm1bit.ops)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from llm1bit.errors import UserError, unknown_choice
from llm1bit.ops import OP_NAMES, arith_class, mac

TABLE_DIR = Path(__file__).resolve().parent / "energy_tables"
BUILTIN_TABLES = ("horowitz-45nm", "shiftaddllm")


@dataclass(frozen=True)
class EnergyTable:
    """Unit energies in pJ: per operation, per SRAM byte, per DRAM byte; `sha256` of the file's canonical JSON."""

    name: str
    source: str
    ops: tuple[tuple[str, float], ...]
    sram_per_byte: float
    dram_per_byte: float
    sha256: str

    def to_dict(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "source": self.source}


def _number(path: Path, key: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise UserError(f"malformed energy table {path}: {key} = {value!r} must be a number >= 0 (pJ)")
    return float(value)


TABLE_KEYS = ("name", "unit", "source", "ops", "sram_per_byte", "dram_per_byte")


@functools.lru_cache(maxsize=64)
def load_energy_table(spec: str | Path | None = None) -> EnergyTable:
    """A built-in table name (`horowitz-45nm`, the default; `shiftaddllm`) or a JSON file of the same format.

    A file is labelled by the path given, never by the `name` inside it: a user's table that calls itself
    `shiftaddllm` must not pass for the built-in one (its sha256 tells the contents apart)."""
    if spec is not None and not str(spec).strip():
        raise UserError(f"--energy-table '': give {' or '.join(BUILTIN_TABLES)} or a JSON file")
    spec = str(spec or BUILTIN_TABLES[0])
    builtin = spec in BUILTIN_TABLES
    path = TABLE_DIR / f"{spec}.json" if builtin else Path(spec)
    if not path.is_file():
        if "/" in spec or spec.endswith(".json"):
            raise UserError(f"energy table {spec} does not exist")
        raise unknown_choice("energy table", spec, BUILTIN_TABLES)
    from llm1bit.jsonfile import check_keys, read_json

    data = read_json(path, "energy table")
    if not isinstance(data, dict) or not isinstance(data.get("ops"), dict):
        raise UserError(
            f"malformed energy table {path}: expected an object with an `ops` object (see README)"
        )
    check_keys(data, TABLE_KEYS, f"malformed energy table {path}")
    missing = [k for k in (*("sram_per_byte", "dram_per_byte"),) if k not in data]
    missing += [f"ops.{k}" for k in OP_NAMES if k not in data["ops"]]
    if missing:
        raise UserError(f"malformed energy table {path}: missing {', '.join(missing)}")
    unknown = sorted(set(data["ops"]) - set(OP_NAMES))
    if unknown:
        raise UserError(
            f"malformed energy table {path}: unknown operation {unknown[0]!r}; known: {', '.join(OP_NAMES)}"
        )
    if data.get("unit", "pJ") != "pJ":
        raise UserError(f"malformed energy table {path}: unit {data.get('unit')!r}; allowed: pJ")
    ops = tuple((k, _number(path, f"ops.{k}", data["ops"][k])) for k in OP_NAMES)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return EnergyTable(
        name=spec,
        source=str(data.get("source", "")),
        ops=ops,
        sram_per_byte=_number(path, "sram_per_byte", data["sram_per_byte"]),
        dram_per_byte=_number(path, "dram_per_byte", data["dram_per_byte"]),
        sha256=hashlib.sha256(canonical).hexdigest()[:16],
    )


def attention_ops(act_bits: float, kv_bits: float, m: int, n: int, k: int) -> dict[str, float]:
    """The attention heads multiply activations by the cached K / V: MACs at the wider of the two widths."""
    return mac(arith_class(max(act_bits, kv_bits)), float(m) * n * k)


def ops_energy_pj(ops: dict[str, float], table: EnergyTable) -> float:
    unit = dict(table.ops)
    return sum(count * unit[name] for name, count in ops.items())
