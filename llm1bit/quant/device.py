"""The device quantization and evaluation run on: "cpu" or a CUDA device that exists, else one line."""

from __future__ import annotations

from llm1bit.errors import UserError


def check_device(device: str) -> str:
    """'cpu' or a CUDA device that exists; a one-line error otherwise."""
    import torch

    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {device}: no CUDA device is available on this machine (use --device cpu)"
            )
        return device
    raise UserError(f"unknown --device {device!r}; known: cpu, cuda")
