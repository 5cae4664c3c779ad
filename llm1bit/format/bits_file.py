"""The bits-config file: {"layers": {"<module name>": bits or {"bits": bits}}, "settings": {"mode": ...}, ...}.

`llm1bit bits` writes it (`write_bits_file`); `quantize --bits-config`, `simulate --bits-config` and the
figures read it through `read_bits_file`, strictly: a module (or any key) given twice, an unknown top-level
key, a per-layer object with keys other than `bits`, an unknown mode or a storage setting of the wrong kind is a
one-line error, never a silently dropped value. Module names are those of `llm1bit.format.hf_names`.

The settings that decide how `quantize` stores the widths (mode, groupsize, apot_terms, incoherence: the bytes
each width moves) are returned with the layers: `simulate --bits-config` prices those bytes and `quantize
--bits-config` refuses flags that contradict them, so neither ignores them."""

from __future__ import annotations

import json
from pathlib import Path

from llm1bit.errors import UserError

# The top-level keys of a bits file: what `llm1bit bits` writes. Only `layers` and the STORAGE settings decide
# numbers when it is read; any other key is a typo the simulation would silently ignore. `budget` is
# {"kind": ..., "value": ...} (average_bits, min_tokens_per_s, max_energy_per_token_mj, max_weight_bytes; files
# written before hardware budgets hold the average-bits number alone) and `predicted` the allocation's value in
# the budget's unit.
BITS_FILE_KEYS = (
    "layers", "average_bits", "budget", "predicted", "objective", "solver", "solve_seconds", "settings", "error", "fits",
    "kendall_tau", "kendall_tau_per_param", "kendall_tau_refined", "kendall_tau_refined_held_out",
    "sublayers", "fallback", "timings",
)  # fmt: skip
BITS_MODES = {"lat": "bcq-lat", "acc": "bcq-acc"}  # settings.mode -> the weight format of the widths it holds
# settings that decide the stored bytes of a shiftaddllm width -> (what is allowed, the check)
STORAGE = {
    "mode": (", ".join(BITS_MODES), lambda v: v in BITS_MODES),
    "groupsize": ("-1 or a positive integer", lambda v: _is_int(v) and (v == -1 or v > 0)),
    "apot_terms": ("an integer 1 to 8", lambda v: _is_int(v) and 1 <= v <= 8),
    "incoherence": ("true or false", lambda v: isinstance(v, bool)),
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_bits_file(path: str | Path) -> tuple[dict[str, object], dict[str, object]]:
    """({module: bits as given}, {STORAGE setting: value} for those the file's settings give), read strictly."""
    from llm1bit.jsonfile import check_keys, read_json

    data = read_json(path, "bits config")
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, dict) or not layers:
        raise UserError(f'bits config {path} needs a non-empty "layers" object {{"<module name>": bits}}')
    if "mode" in data:  # the likeliest slip: the mode beside the layers, where nothing reads it
        raise UserError(
            f'bits config {path}: "mode" belongs in "settings" ({{"settings": {{"mode": "lat"}}}})'
        )
    check_keys(data, BITS_FILE_KEYS, f"bits config {path}")
    budget = data.get("budget")
    if isinstance(budget, dict):
        check_keys(budget, ("kind", "value"), f"bits config {path}: budget")
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise UserError(f"bits config {path}: settings must be an object")
    storage = {key: settings[key] for key in STORAGE if settings.get(key) is not None}
    for key, value in storage.items():
        allowed, ok = STORAGE[key]
        if not ok(value):
            raise UserError(f"bits config {path}: settings.{key} {value!r}; allowed: {allowed}")
    out = {}
    for name, value in layers.items():
        if isinstance(value, dict):
            check_keys(value, ("bits",), f"bits config {path}: layers.{name}")
            value = value.get("bits")
        out[name] = value
    return out, storage


def write_bits_file(path: str | Path, data: dict) -> None:
    """Write a bits file atomically (nothing half-written); a key `read_bits_file` would refuse is a bug here."""
    from llm1bit.atomic import atomic_write_text

    unknown = [key for key in data if key not in BITS_FILE_KEYS]
    if unknown:
        raise ValueError(f"bits file keys {unknown} are not the format's (BITS_FILE_KEYS)")
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def check_storage(path: str | Path, stored: dict[str, object], given: dict[str, object]) -> None:
    """Refuse quantize settings (`given`: mode, groupsize, apot_terms, incoherence) that contradict the STORAGE
    settings the file's widths were chosen and priced under: the folder would not store what the file predicts
    (acc's incoherence only matters in acc)."""
    for key, value in stored.items():
        if key == "incoherence" and given.get("mode") != "acc":
            continue
        if key in given and given[key] != value:
            flag = "--no-incoherence" if key == "incoherence" else "--" + key.replace("_", "-")
            raise UserError(
                f"--bits-config {path} was chosen for settings.{key} {json.dumps(value)}, but this run has "
                f"{key} {json.dumps(given[key])} ({flag}): quantize with the file's, or choose bits for yours"
            )
