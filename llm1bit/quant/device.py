"""Where quantization and evaluation compute: the device ("cpu" or a CUDA device that exists, else one line)
the kernel modes of binary-coded layers, and the decode steps `bench` times."""

from __future__ import annotations

from llm1bit.errors import UserError

# How binary-coded layers compute (`--kernel`, LLM1BIT_KERNEL; llm1bit.quant.hf.kernel): auto = the LUT kernel
# where it applies and is faster, lut = the kernel or a one-line refusal, dense = W rebuilt.
KERNEL_MODES = ("auto", "lut", "dense")
# The decode step `llm1bit bench` times (`--loop`; llm1bit.quant.eval.speed.decode_step): lean = the model's
# modules in a short loop of their own, hf = transformers' forward, auto = lean where the model can run it.
DECODE_LOOPS = ("auto", "lean", "hf")


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
