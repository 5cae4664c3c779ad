"""Energy: a table of unit energies (a JSON file users can replace) and the operations of each GEMM.

Energy of one GEMM = Σ operations × energy per operation + SRAM bytes × energy per SRAM byte +
DRAM bytes × energy per DRAM byte. Which operations a product needs depends on its part and on
the weight format (README "Cost model"): multiply-accumulates for the attention heads and for
fp weights; dequantization plus a MAC at the activation precision for uniform integer weights
(as ShiftAddLLM's energy script models its GPTQ baseline); additions only for binary and ternary
weights; for BCQ with power-of-two scales, per bit plane 8-bit LUT queries (one per 8 weights, the
LUT built once per 8 inputs and token) or additions, plus a shift and an add per power-of-two term of
each scale (ShiftAddLLM §4.1 and its energy script, energy/shiftaddllm_energy.py)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from llm1bit.errors import UserError, unknown_choice
from llm1bit.precision import APOT_TERMS

TABLE_DIR = Path(__file__).resolve().parent / "energy_tables"
BUILTIN_TABLES = ("horowitz-45nm", "shiftaddllm")
OP_NAMES = (
    "fp32_mult",
    "fp32_add",
    "fp16_mult",
    "fp16_add",
    "int32_mult",
    "int32_add",
    "int8_mult",
    "int8_add",
    "int32_shift",
    "int16_shift",
    "int8_shift",
    "lut_query",
)
BCQ_COMPUTE = ("lut", "add")  # BCQ inner products by 8-bit LUT queries (ShiftAddLLM) or plain additions
LUT_INPUTS = 8  # one LUT per 8 inputs: 2**8 entries, one query stands for 8 multiply-free operations


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


def arith_class(bits: float) -> str:
    """The table entry an operand width computes in: > 16 bits fp32, > 8 bits fp16 (LLM activations),
    else int8 (the table's smallest entry)."""
    return "fp32" if bits > 16 else "fp16" if bits > 8 else "int8"


def _acc_add(cls: str) -> str:
    """Accumulation: fp32 / fp16 in their own precision, integers in int32."""
    return {"fp32": "fp32_add", "fp16": "fp16_add", "int8": "int32_add"}[cls]


def _shift(bits: float) -> str:
    return "int32_shift" if bits > 16 else "int16_shift" if bits > 8 else "int8_shift"


def _mac(cls: str, count: float) -> dict[str, float]:
    return {f"{cls}_mult": count, _acc_add(cls): count}


def _add(into: dict[str, float], ops: dict[str, float]) -> dict[str, float]:
    for name, count in ops.items():
        into[name] = into.get(name, 0.0) + count
    return into


def projection_ops(
    fmt: str, weight_bits: float, act_bits: float, m: int, n: int, k: int, bcq_compute: str = "lut"
) -> dict[str, float]:
    """Operations of one projection GEMM (M tokens, N outputs, K inputs) whose weights are in `fmt`."""
    a = arith_class(act_bits)
    macs = float(m) * n * k
    if fmt in ("fp", "raw"):
        return _mac(arith_class(max(weight_bits, act_bits)), macs)
    if fmt == "int":  # dequantize each weight once per step, (q - zero) * scale; MACs at the activation width
        return _add({"fp16_add": float(n) * k, "fp16_mult": float(n) * k}, _mac(a, macs))
    if fmt in ("binary", "ternary"):  # signed additions, one scale multiply per output
        return {_acc_add(a): macs, f"{a}_mult": float(m) * n}
    if fmt in ("bcq-lat", "bcq-acc"):
        # ShiftAddLLM §4.1 and its energy script: per token, a LUT of 2^8 partial sums for every 8 inputs
        # (8 mults + 8 adds + 255 adds to build), one LUT query per (output, plane, 8-input slab) standing
        # for 8 weights, each result shifted by its power-of-two scale terms and added up.
        q, t = weight_bits, APOT_TERMS
        slabs = -(-k // LUT_INPUTS)
        results = float(m) * n * q * slabs  # LUT results (or 8-weight inner sums): per output, plane, slab
        builds = float(m) * slabs
        if fmt == "bcq-lat":  # one scale per 8-column slab: shift each result by its t terms
            shifts = results * t
        else:  # bcq-acc: one scale per input column: scale the inputs per plane, one LUT per plane
            shifts, builds = float(m) * k * q * t, builds * q
        ops = {_shift(act_bits): shifts, _acc_add(a): results * t}
        if bcq_compute == "lut":
            _add(
                ops, {"lut_query": results, f"{a}_mult": builds * LUT_INPUTS, _acc_add(a): builds * (8 + 255)}
            )
        else:
            _add(ops, {_acc_add(a): macs * q})
        return ops
    raise unknown_choice(
        "weight format", fmt, ("fp", "raw", "int", "binary", "ternary", "bcq-lat", "bcq-acc")
    )


def attention_ops(act_bits: float, kv_bits: float, m: int, n: int, k: int) -> dict[str, float]:
    """The attention heads multiply activations by the cached K / V: MACs at the wider of the two widths."""
    return _mac(arith_class(max(act_bits, kv_bits)), float(m) * n * k)


def ops_energy_pj(ops: dict[str, float], table: EnergyTable) -> float:
    unit = dict(table.ops)
    return sum(count * unit[name] for name, count in ops.items())
