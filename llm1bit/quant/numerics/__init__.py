"""The numerics of quantization, on tensors alone (no model, no Hugging Face): binary-coded weights (BCQ) and
their power-of-two scales (APoT), uniform integer grids, acc mode's rotations, the stored code types and the
GPTQ-style column solver that ties them to a calibration Hessian. `methods` is the registry of methods and
modes the rest of llm1bit reads."""
