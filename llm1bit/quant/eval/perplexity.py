"""Perplexity over non-overlapping windows (the GPTQ / ShiftAddLLM protocol, design §5).

The text is cut into floor(T / seqlen) windows (the tail is dropped, no context carried over); each
window's loss is the mean cross-entropy of its seqlen - 1 next-token predictions, and
PPL = exp(mean of the window losses)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from llm1bit.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class Perplexity:
    seqlen: int
    windows: int
    tokens: int  # windows * seqlen
    perplexity: float
    window_losses: list[float]

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("window_losses")
        return out


def window_count(total: int, seqlen: int, max_windows: int | None = None) -> int:
    n = total // seqlen
    if n == 0:
        raise UserError(f"evaluation text has {total} tokens, fewer than one window of --seqlen {seqlen}")
    return n if max_windows is None else min(n, max_windows)


def perplexity(
    model: nn.Module,
    ids: torch.Tensor,
    seqlen: int,
    max_windows: int | None = None,
    device: str = "cpu",
    on_window: Callable[[], None] | None = None,
) -> Perplexity:
    """Perplexity of `model` (already on `device`) on the token ids `ids` (T,); `on_window()` after each window."""
    import torch
    import torch.nn.functional as F

    if seqlen < 2:
        raise UserError(f"--seqlen {seqlen} must be at least 2")
    if max_windows is not None and max_windows < 1:
        raise UserError(f"--max-windows {max_windows} must be at least 1")
    n = window_count(ids.numel(), seqlen, max_windows)
    losses = []
    with torch.inference_mode():
        for w in range(n):
            window = ids[w * seqlen : (w + 1) * seqlen].to(device)[None]
            logits = model(input_ids=window, use_cache=False).logits
            loss = F.cross_entropy(logits[0, :-1].float(), window[0, 1:])
            losses.append(loss.item())
            if on_window is not None:
                on_window()
    return Perplexity(
        seqlen=seqlen,
        windows=n,
        tokens=n * seqlen,
        perplexity=math.exp(sum(losses) / n),
        window_losses=losses,
    )
