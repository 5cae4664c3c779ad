"""The safetensors header (8-byte little-endian length, then JSON), read without loading any tensor, so the
simulation side needs neither torch nor safetensors to know what a checkpoint's layers weigh."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from llm1bit.errors import UserError

Entry = tuple[str, list[int], int]  # (dtype as safetensors spells it, shape, bytes)


def safetensors_header(path: Path) -> dict[str, Entry]:
    """Tensor name -> (dtype as safetensors spells it, shape, bytes), from the header alone, checked against
    the file's size: a truncated or foreign file is a one-line error."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: truncated safetensors file (no header length)")
            (length,) = struct.unpack("<Q", head)
            if length > 100_000_000:
                raise UserError(f"{path}: not a safetensors file (header length {length})")
            raw = f.read(length)
            f.seek(0, 2)
            size = f.tell()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) < length:
        raise UserError(f"{path}: truncated safetensors file (header cut short)")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{path}: not a safetensors file (header is not JSON)") from None
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            dtype, shape = str(info["dtype"]), [int(n) for n in info["shape"]]
        except (TypeError, KeyError, ValueError):
            raise UserError(f"{path}: malformed safetensors header entry {name!r}") from None
        if 8 + length + end > size:
            raise UserError(f"{path}: truncated safetensors file ({name} ends past the end of the file)")
        entries[name] = (dtype, shape, end - start)
    return entries


def safetensors_sizes(path: Path) -> dict[str, int]:
    """Tensor name -> bytes, from a safetensors header alone; a truncated or foreign file is a one-line error."""
    return {name: nbytes for name, (_, _, nbytes) in safetensors_header(path).items()}


def packed_by_module(header: dict[str, Entry]) -> dict[str, dict[str, Entry]]:
    """A safetensors header's entries grouped by owning module: {module: {suffix: (dtype, shape, bytes)}},
    a quantized module's packed tensors being `<module>.<suffix>`; biases are left out (they are not codes)."""
    grouped: dict[str, dict[str, Entry]] = {}
    for key, entry in header.items():
        owner, _, suffix = key.rpartition(".")
        if owner and suffix != "bias":
            grouped.setdefault(owner, {})[suffix] = entry
    return grouped


def bits_per_weight(weights: Path, modules: dict) -> dict[str, float]:
    """Bits per weight over all quantized modules, from the file: every tensor stored under a module's name
    (codes, scales, incoherence key and rescale; not its bias) x 8 / its weights."""
    packed = packed_by_module(safetensors_header(weights))
    n_weights = sum(m["shape"][0] * m["shape"][1] for m in modules.values())
    total = incoherence = 0
    for name in modules:
        for suffix, (_, _, nbytes) in packed.get(name, {}).items():
            total += nbytes
            incoherence += nbytes if suffix.startswith("incoherence") else 0
    return {
        "total": 8 * total / n_weights,
        "incoherence": 8 * incoherence / n_weights,
        "without_incoherence": 8 * (total - incoherence) / n_weights,
    }
