"""Amdahl's law of LLMs: the whole model's speedup when only one of its two parts is sped up.

With F the MatMul-free (projection) fraction of the cost:
    projections sped up by S:      S_total = 1 / ((1 - F) + F / S)      -> 1 / (1 - F) as S -> inf
    attention heads sped up by S:  S_total = 1 / (F + (1 - F) / S)      -> 1 / F       as S -> inf"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm1bit.errors import UserError

SIDES = ("projection", "attention")


def overall_speedup(part: float, s_partial: float) -> float:
    """Amdahl: the speedup of the whole when a fraction `part` of it runs `s_partial` times faster."""
    if not 0.0 <= part <= 1.0:
        raise UserError(f"fraction {part} must be within [0, 1]")
    if not (s_partial > 0 and math.isfinite(s_partial)):
        raise UserError(f"S_partial {s_partial} must be a positive finite number")
    return 1.0 / ((1.0 - part) + part / s_partial)


def asymptote(part: float) -> float:
    """The limit of `overall_speedup(part, S)` as S -> infinity."""
    return math.inf if part >= 1.0 else 1.0 / (1.0 - part)


@dataclass(frozen=True)
class AmdahlCurve:
    """Both sides of the law for one MatMul-free fraction F."""

    fraction: float  # MatMul-free share F
    s_partial: tuple[float, ...]

    def side(self, name: str) -> list[float]:
        part = self.fraction if name == "projection" else 1.0 - self.fraction
        return [overall_speedup(part, s) for s in self.s_partial]

    def asymptote(self, name: str) -> float:
        return asymptote(self.fraction if name == "projection" else 1.0 - self.fraction)


MAX_S_POINTS = 1000  # a curve is read or plotted; more points add nothing but output


def parse_s_partial(values: str | None, s_range: str | None) -> tuple[float, ...]:
    """`--s-partial 1,2,5` or `--s-range 1:100[:N]` (N log-spaced points, default 25)."""
    if values and s_range:
        raise UserError("give either --s-partial or --s-range, not both")
    if s_range:
        parts = s_range.split(":")
        if len(parts) not in (2, 3):
            raise UserError(f"--s-range {s_range!r} must look like 1:100 or 1:100:50")
        try:
            lo, hi = float(parts[0]), float(parts[1])
            n = int(parts[2]) if len(parts) == 3 else 25
        except ValueError:
            raise UserError(f"--s-range {s_range!r} must look like 1:100 or 1:100:50") from None
        if not (lo > 0 and hi > lo and math.isfinite(hi)) or n < 2:
            raise UserError(f"--s-range {s_range!r}: need 0 < start < end and at least 2 points")
        if n > MAX_S_POINTS:
            raise UserError(f"--s-range {s_range!r}: {n} points; at most {MAX_S_POINTS} are allowed")
        return tuple(lo * (hi / lo) ** (i / (n - 1)) for i in range(n))
    out = []
    for item in (values or "1,2,5,10,100").split(","):
        try:
            value = float(item)
        except ValueError:
            raise UserError(
                f"--s-partial {item.strip()!r} is not a number; give positive numbers like 1,2,5"
            ) from None
        if not (value > 0 and math.isfinite(value)):
            raise UserError(f"--s-partial {item.strip()} must be > 0 (values below 1 are slowdowns)")
        out.append(value)
    return tuple(out)


METRIC_FRACTION = {
    "cycles": "frac_cycles",
    "memory": "frac_memory",
    "time": "frac_time",
    "energy": "frac_energy",
}


def derive(base, new) -> dict[str, float]:
    """S_partial and S_total derived from two simulated points (Splits): the study's 16-bit one and one at
    the requested precisions, for time and for energy. When only the projections change, S_total equals
    Amdahl's law of the 16-bit fraction at the derived S_partial, exactly (both are sums of the same parts)."""
    out = {}
    for metric, attr, total in (("time", "time_s", "latency_s"), ("energy", "energy_j", "energy_j")):
        out[f"s_partial_{metric}"] = getattr(base.costs["matmul_free"], attr) / getattr(
            new.costs["matmul_free"], attr
        )
        out[f"s_total_{metric}"] = getattr(base, total) / getattr(new, total)
        out[f"fraction_{metric}_16bit"] = getattr(base, f"frac_{metric}")
    return out
