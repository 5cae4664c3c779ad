"""Reading the JSON files users hand to the simulator (configs, bits files, energy tables), strictly.

Python's `json` keeps the last of two equal keys and reads `NaN` / `Infinity`; either would price a
point by a value nobody meant to give (a bits file naming a module twice keeps one of its widths
silently). Here both are one-line errors, and `check_keys` refuses keys a format does not know, so a
misspelt key is not a silently ignored one."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llm1bit.errors import UserError


class _Refused(ValueError):
    """Raised inside the decoder's hooks, turned into a UserError naming the file."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"key {key!r} appears twice")
        out[key] = value
    return out


def _no_constant(name: str) -> float:
    raise _Refused(f"{name} is not a number JSON allows")


def read_json(path: str | Path, what: str, constants: bool = False) -> Any:
    """The parsed file; a missing, unreadable or malformed file, a repeated key or (unless `constants`:
    a Hugging Face config may hold them in fields nobody reads) NaN / Infinity is a one-line error that
    names `what` (e.g. "energy table") and the path."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None
    try:
        return json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=None if constants else _no_constant
        )
    except _Refused as exc:
        raise UserError(f"malformed {what} {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed {what} {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def check_keys(obj: dict, allowed: Iterable[str], where: str) -> None:
    """Refuse the first key of `obj` not in `allowed`, naming the allowed ones."""
    allowed = tuple(allowed)
    unknown = [key for key in obj if key not in allowed]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], allowed, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"{where}: unknown key {unknown[0]!r}{hint}; allowed: {', '.join(allowed)}")
