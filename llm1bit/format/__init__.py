"""The quantized-model format, in one place and without torch: what `llm1bit quantize` writes and every
reader (the loaders, `simulate --quantized`, `bits`, `eval`, fig16) checks.

* here           the constants: the folder's model type, the key keeping the original one, the quant-method
                 prefix, the format version, the weights file's name
* `folder`       "is this a quantized folder", its config and quantization_config, read strictly
* `safetensors`  the safetensors header reader (no tensor is loaded) and the packed tensors per module
* `bits_file`    the bits-config file `llm1bit bits` writes and `quantize` / `simulate` read: one parser
* `hf_names`     the one table of Hugging Face module names of each decoder-layer layout, with the workload
                 projection each one is

The packed tensors themselves (bit planes, scales, rotations) are written and read by
`llm1bit.quant.hf.packing`, which needs torch."""

# A quantized folder's config.json says model_type "llm1bit" (so that transformers refuses it unless llm1bit
# is imported) and keeps the original model_type under BASE_MODEL_TYPE_KEY, every other field as the original.
QUANTIZED_MODEL_TYPE = "llm1bit"
BASE_MODEL_TYPE_KEY = "llm1bit_base_model_type"
QUANT_METHOD_PREFIX = "llm1bit-"  # quantization_config.quant_method = "llm1bit-<method>"
FORMAT_VERSION = 3  # 2: one byte per power-of-two scale term; 3: model_type "llm1bit", per-layer rotations
WEIGHTS_NAME = "model.safetensors"
# dtype of the tensors kept unquantized (embeddings, norms, lm_head); recorded as quantization_config.save_dtype
SAVE_DTYPES = ("auto", "float16", "bfloat16", "float32")


def quant_method(method: str) -> str:
    """quantization_config.quant_method of a method ("shiftaddllm" -> "llm1bit-shiftaddllm")."""
    return QUANT_METHOD_PREFIX + method
