"""Backends: what turns a batch of GEMMs on hardware into SCALE-Sim's counters, one module each.

A backend is an object with the `Backend` protocol (backends.base), defined in its own module and registered
in REGISTRY by name as "module:attribute" (imported on first use, so listing the names imports no simulator).
What offers or runs a backend reads it from here: `engine.evaluate`, `sweep.run_points` and the bulk table
(with their fallback), every `--backend` option and a space file's `backend`. A new backend is a module and
one line in REGISTRY."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from llm1bit.errors import unknown_choice

if TYPE_CHECKING:
    from llm1bit.backends.base import Backend

# name -> "module:attribute"; the first is the default of the commands that run the real simulator.
REGISTRY: dict[str, str] = {
    "scalesim": "llm1bit.backends.scalesim:BACKEND",
    "analytic": "llm1bit.backends.analytic:BACKEND",
}
BACKENDS: tuple[str, ...] = tuple(REGISTRY)


def get_backend(name: str) -> Backend:
    """The registered backend `name` (its module imported now); an unknown name is a one-line error."""
    target = REGISTRY.get(name)
    if target is None:
        raise unknown_choice("backend", name, BACKENDS)
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
