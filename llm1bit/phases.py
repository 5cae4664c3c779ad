"""Phases of a forward step: what `--phase` (and a space file's `phase`) takes, and the tokens a step yields.

Its own small module so that the CLI reads the choices without importing the workload."""

from __future__ import annotations

PHASES = ("decode", "prefill")  # decode: one new token per sequence; prefill: the whole prompt at once


def tokens_per_step(phase: str, batch: int, seq_len: int) -> int:
    """Tokens one forward step produces: decode, one per sequence; prefill, the whole prompt of each."""
    return batch if phase == "decode" else batch * seq_len
