"""Hardware: SCALE-Sim `.cfg` files read, validated and written back (the format users already speak)."""

from __future__ import annotations

import configparser
import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from llm1bit.dataflows import DATAFLOWS
from llm1bit.errors import UserError, unknown_choice

# cloud.cfg and edge.cfg, package data; the top-level hw_configs/ of the repository links here.
HW_DIR = Path(__file__).resolve().parent / "hw_configs"
BUILTIN_HW = ("cloud", "edge")
# A .cfg without an [llm1bit] section: TPU v1 (Jouppi et al., ISCA 2017), 700 MHz and 34 GB/s DDR3.
DEFAULT_FREQ_MHZ = 700.0
DEFAULT_DRAM_GBPS = 34.0
LLM1BIT_SECTION = "llm1bit"


@dataclass(frozen=True)
class Hardware:
    """A systolic-array accelerator as SCALE-Sim describes it. Sizes in kB, one-byte words."""

    name: str
    rows: int
    cols: int
    ifmap_sram_kb: int
    filter_sram_kb: int
    ofmap_sram_kb: int
    dataflow: str = "os"
    bandwidth_mode: str = "CALC"
    bandwidth: int = 10
    ifmap_offset: int = 0
    filter_offset: int = 10_000_000
    ofmap_offset: int = 20_000_000
    source: str = ""  # absolute path of the .cfg it was read from
    # llm1bit's own [llm1bit] section (SCALE-Sim ignores it): clock and DRAM bandwidth for time.
    freq_mhz: float = DEFAULT_FREQ_MHZ
    dram_gbps: float = DEFAULT_DRAM_GBPS  # 10^9 bytes per second

    def with_dataflow(self, dataflow: str | None) -> Hardware:
        if dataflow is None:
            return self
        if dataflow not in DATAFLOWS:
            raise unknown_choice("dataflow", dataflow, DATAFLOWS)
        return dataclasses.replace(self, dataflow=dataflow)

    def with_clock(self, freq_mhz: float | None = None, dram_gbps: float | None = None) -> Hardware:
        """Override the clock (MHz) and the DRAM bandwidth (10^9 bytes/s); both must be > 0."""
        for flag, value in (("--freq-mhz", freq_mhz), ("--dram-gbps", dram_gbps)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"{flag} {value:g} must be a positive number")
        return dataclasses.replace(
            self,
            freq_mhz=self.freq_mhz if freq_mhz is None else float(freq_mhz),
            dram_gbps=self.dram_gbps if dram_gbps is None else float(dram_gbps),
        )

    def to_cfg(self, run_name: str | None = None) -> str:
        """SCALE-Sim 2.0.2 config text (no [network_presets]: 2.0.2 misreads it)."""
        return (
            "[general]\n"
            f"run_name = {run_name or self.name}\n\n"
            "[architecture_presets]\n"
            f"ArrayHeight: {self.rows}\nArrayWidth: {self.cols}\n"
            f"IfmapSramSzkB: {self.ifmap_sram_kb}\nFilterSramSzkB: {self.filter_sram_kb}\n"
            f"OfmapSramSzkB: {self.ofmap_sram_kb}\n"
            f"IfmapOffset: {self.ifmap_offset}\nFilterOffset: {self.filter_offset}\n"
            f"OfmapOffset: {self.ofmap_offset}\n"
            f"Dataflow: {self.dataflow}\nBandwidth: {self.bandwidth}\n\n"
            "[run_presets]\n"
            f"InterfaceBandwidth: {self.bandwidth_mode}\n"
        )

    def fingerprint(self) -> str:
        """Hash of everything that decides a simulation's answer (the name is left out)."""
        return hashlib.sha256(self.to_cfg(run_name="x").encode()).hexdigest()[:16]


def _int_field(cp: configparser.ConfigParser, path: Path, key: str, minimum: int = 0) -> int:
    raw = cp.get("architecture_presets", key, fallback=None)
    if raw is None:
        raise UserError(f"malformed hardware config {path}: [architecture_presets] lacks {key}")
    try:
        value = int(raw.strip())
    except ValueError:
        raise UserError(f"malformed hardware config {path}: {key} = {raw!r} is not an integer") from None
    if value < minimum:
        raise UserError(f"malformed hardware config {path}: {key} = {value} must be >= {minimum}")
    return value


def read_cfg(path: str | Path) -> Hardware:
    """Parse a SCALE-Sim `.cfg`; every problem is a one-line UserError naming the field."""
    path = Path(path)
    cp = configparser.ConfigParser()
    try:
        text = path.read_text()
        cp.read_string(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read hardware config {path}: {exc}") from None
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"malformed hardware config {path}: {first}") from None
    for section in ("architecture_presets", "run_presets"):
        if not cp.has_section(section):
            raise UserError(f"malformed hardware config {path}: missing section [{section}]")
    dataflow = cp.get("architecture_presets", "Dataflow", fallback="os").strip().lower()
    if dataflow not in DATAFLOWS:
        raise UserError(
            f"malformed hardware config {path}: Dataflow {dataflow!r}; allowed: {', '.join(DATAFLOWS)}"
        )
    mode = cp.get("run_presets", "InterfaceBandwidth", fallback="CALC").strip().upper()
    if mode not in ("CALC", "USER"):
        raise UserError(f"malformed hardware config {path}: InterfaceBandwidth {mode!r}; allowed: CALC, USER")
    bandwidth_raw = cp.get("architecture_presets", "Bandwidth", fallback="10").split(",")[0]
    try:
        bandwidth = int(bandwidth_raw.strip())
    except ValueError:
        raise UserError(
            f"malformed hardware config {path}: Bandwidth {bandwidth_raw!r} is not an integer"
        ) from None
    if cp.has_section(
        LLM1BIT_SECTION
    ):  # our own section: a misspelt key would silently keep the default clock
        known = ("FrequencyMHz", "DramBandwidthGBps")
        unknown = [
            k for k in cp[LLM1BIT_SECTION] if k not in {x.lower() for x in known} and k not in cp.defaults()
        ]
        if unknown:
            raise UserError(
                f"malformed hardware config {path}: [{LLM1BIT_SECTION}] has unknown key {unknown[0]!r}; "
                f"allowed: {', '.join(known)}"
            )
    name = cp.get("general", "run_name", fallback=path.stem).strip() or path.stem
    return Hardware(
        name=name,
        rows=_int_field(cp, path, "ArrayHeight", 1),
        cols=_int_field(cp, path, "ArrayWidth", 1),
        ifmap_sram_kb=_int_field(cp, path, "IfmapSramSzkB", 1),
        filter_sram_kb=_int_field(cp, path, "FilterSramSzkB", 1),
        ofmap_sram_kb=_int_field(cp, path, "OfmapSramSzkB", 1),
        dataflow=dataflow,
        bandwidth_mode=mode,
        bandwidth=bandwidth,
        ifmap_offset=_int_field(cp, path, "IfmapOffset"),
        filter_offset=_int_field(cp, path, "FilterOffset"),
        ofmap_offset=_int_field(cp, path, "OfmapOffset"),
        freq_mhz=_clock_field(cp, path, "FrequencyMHz", DEFAULT_FREQ_MHZ),
        dram_gbps=_clock_field(cp, path, "DramBandwidthGBps", DEFAULT_DRAM_GBPS),
    )


def _clock_field(cp: configparser.ConfigParser, path: Path, key: str, default: float) -> float:
    raw = cp.get(LLM1BIT_SECTION, key, fallback=None)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise UserError(
            f"malformed hardware config {path}: [{LLM1BIT_SECTION}] {key} = {raw!r} is not a number"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise UserError(
            f"malformed hardware config {path}: [{LLM1BIT_SECTION}] {key} = {value:g} must be > 0"
        )
    return value


def load_hardware(spec: str, dataflow: str | None = None) -> Hardware:
    """`cloud`, `edge`, or a path to any SCALE-Sim `.cfg`; `dataflow` overrides the file's.

    The label (`name`) is what the user typed: the built-in name or the path, never the file's
    run_name, so two different files never share a label."""
    text = spec.strip()
    if text in BUILTIN_HW:
        path, label = HW_DIR / f"{text}.cfg", text
    else:
        path, label = Path(text), text
        if not path.is_file():
            if not text:
                raise UserError("no hardware given; give cloud, edge or a SCALE-Sim .cfg path")
            if path.exists():
                raise UserError(f"hardware {text!r} is not a regular .cfg file")
            if "/" in text or text.endswith(".cfg"):
                raise UserError(f"hardware config {text} does not exist")
            raise unknown_choice("hardware", text, BUILTIN_HW + ("a .cfg path",))
    hw = dataclasses.replace(read_cfg(path), name=label, source=str(path.resolve()))
    return hw.with_dataflow(dataflow)


def load_hardware_list(specs: list[str]) -> list[Hardware]:
    """Several `--hw` items; repeats of one file (by its resolved path) are dropped, none is an error."""
    out: dict[str, Hardware] = {}
    for spec in specs:
        hw = load_hardware(spec)
        out.setdefault(hw.source, hw)
    if not out:
        raise UserError("no hardware given; example: --hw cloud,edge or --hw my_array.cfg")
    return list(out.values())
