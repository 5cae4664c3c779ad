"""The quantization methods and modes llm1bit knows (one registry the CLI, the solver, the pipeline and the
checkpoint read), and QuantSpec: every setting that decides how one linear layer is quantized.

A QuantSpec is validated once, handed to the solver, and written into `quantization_config` of a saved
checkpoint, so a result always carries the settings that produced it. A new method is one `Method` here plus
its branch in `llm1bit.quant.numerics.column_solver.quantize_weight`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llm1bit.errors import UserError, unknown_choice


@dataclass(frozen=True)
class Method:
    """One quantization method: what it needs and what it stores."""

    name: str
    needs_hessian: (
        bool  # calibration inputs (GPTQ-style column solver) or none (round-to-nearest / plain fit)
    )
    codes: (
        str  # "binary" (BinaryCodes: bit planes and scales, the LUT kernel's input) or "uniform" (integers)
    )
    has_modes: bool  # reads --mode (MODES)
    act_order: bool  # the reference's default for GPTQ's column order by decreasing Hessian diagonal
    about: str


@dataclass(frozen=True)
class Mode:
    """One shiftaddllm mode: how its power-of-two scales are shared."""

    name: str
    about: str


METHOD_REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "shiftaddllm", True, "binary", True, True, "BCQ with power-of-two scales in a GPTQ-style solver"
        ),
        Method("gptq", True, "uniform", False, False, "uniform integers in the GPTQ solver (OPTQ baseline)"),
        Method(
            "bcq", False, "binary", False, False, "binary-coding quantization, alternating fit, no Hessian"
        ),
        Method("rtn", False, "uniform", False, False, "uniform integers, round to nearest"),
    )
}
MODE_REGISTRY: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("acc", "column-wise scales, rescale + random rotations (accuracy)"),
        Mode("lat", "scales shared by 8-column x N/8-row blocks (latency)"),
    )
}
METHODS = tuple(METHOD_REGISTRY)
MODES = tuple(MODE_REGISTRY)


def choices_text(names: tuple[str, ...]) -> str:
    """'a, b, c or d': a registry's names for help texts."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


@dataclass(frozen=True)
class QuantSpec:
    method: str = "shiftaddllm"
    wbits: int = 3
    mode: str = "acc"  # shiftaddllm only: acc = column-wise scales, lat = 8-column x N/8-row block scales
    groupsize: int = -1  # -1: one scale tuple per whole column (acc) / N/8 rows (lat)
    bcq_rounds: int = 50
    apot_terms: int = 3
    blocksize: int = 128  # GPTQ lazy-update column block
    percdamp: float = 0.01
    # GPTQ's column order by decreasing Hessian diagonal; None = the reference's default per method:
    # on for shiftaddllm, off for gptq (the paper's OPTQ baseline), unused by rtn and bcq.
    act_order: bool | None = None
    incoherence: bool = True  # acc only: QuIP-style rescale + random rotations, seeded per module
    seed: int = 0
    # The module being quantized ("model.layers.0.mlp.down_proj"): with `seed` it keys that module's own acc
    # rotations. Set per call (`for_module`), not a setting: left out of `to_dict`.
    module: str = ""

    def validate(self) -> QuantSpec:
        if self.method not in METHODS:
            raise unknown_choice("method", self.method, METHODS)
        if self.act_order is None:
            return dataclasses.replace(self, act_order=METHOD_REGISTRY[self.method].act_order).validate()
        if self.mode not in MODES:
            raise unknown_choice("mode", self.mode, MODES)
        if not 1 <= self.wbits <= 8:
            raise UserError(f"--wbits {self.wbits} is out of range; allowed: 1 to 8")
        if self.groupsize == 0 or self.groupsize < -1:
            raise UserError(f"--groupsize {self.groupsize} is invalid; allowed: -1 (none) or a positive size")
        if (
            self.mode == "lat"
            and METHOD_REGISTRY[self.method].has_modes
            and self.groupsize > 0
            and self.groupsize % 8
        ):
            raise UserError(
                f"--groupsize {self.groupsize} must be a multiple of 8 in lat mode (8-column blocks)"
            )
        if self.bcq_rounds < 0:
            raise UserError(f"--bcq-rounds {self.bcq_rounds} must be >= 0")
        if not 1 <= self.apot_terms <= 8:
            raise UserError(f"--apot-terms {self.apot_terms} is out of range; allowed: 1 to 8")
        if self.blocksize <= 0 or self.blocksize % 8:
            raise UserError(f"blocksize {self.blocksize} must be a positive multiple of 8")
        if not 0 <= self.percdamp < 1:
            raise UserError(f"percdamp {self.percdamp} must be in [0, 1)")
        return self

    @property
    def info(self) -> Method:
        """The registry's entry of this spec's method."""
        return METHOD_REGISTRY[self.method]

    def with_bits(self, wbits: int) -> QuantSpec:
        return dataclasses.replace(self, wbits=wbits).validate()

    def for_module(self, module: str) -> QuantSpec:
        return dataclasses.replace(self, module=module)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        del out["module"]
        return out
