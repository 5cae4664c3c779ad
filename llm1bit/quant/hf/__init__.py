"""The Hugging Face side: `QuantLinear` (the packed layer, with its kernels in `kernel/`), packing, the
checkpoint folder's save and load, transformers' quantizer and config registration, and model loading
(folders, GGUF, hub ids)."""
