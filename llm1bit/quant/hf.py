"""Native loading: `AutoModelForCausalLM.from_pretrained(folder)` on an `llm1bit quantize` folder.

`import llm1bit` installs import hooks (`llm1bit/__init__.py`) that call the `register_*` functions below as
soon as the transformers modules they extend are imported (so `import llm1bit` itself stays light):

* `Llm1bitConfig`, model_type "llm1bit", with `AutoConfig`: a quantized folder's config.json says
  model_type "llm1bit", so a process that has not imported llm1bit gets transformers' "does not recognize
  this architecture" error instead of a model with random weights (transformers 5 only warns on an unknown
  `quant_method`).
* `Llm1bitForCausalLM` with `AutoModelForCausalLM`: its `from_pretrained` rebuilds the original
  architecture's config (`llm1bit_base_model_type`) and hands the folder to the original model class.
* `Llm1bitHfQuantizer` (an `HfQuantizer`, in `llm1bit.quant.hf_quantizer`) for every `llm1bit-<method>` quant_method: on the meta-device
  skeleton transformers builds, it replaces the quantized modules by empty `QuantLinear` shells shaped from
  the safetensors header (`checkpoint.build_shells`); transformers' loader fills them; afterwards
  `checkpoint.check_loaded` refuses anything missing or inconsistent."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PretrainedConfig

from llm1bit.hf_config import QUANTIZED_MODEL_TYPE


class Llm1bitConfig(PretrainedConfig):
    """A quantized folder's config: every field of the original model's, model_type "llm1bit"."""

    model_type = QUANTIZED_MODEL_TYPE


class Llm1bitForCausalLM:
    """Not a model class of its own: `from_pretrained` returns the original architecture's model, its
    quantized linears rebuilt by `Llm1bitHfQuantizer`."""

    config_class = Llm1bitConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        from transformers import AutoModelForCausalLM

        from llm1bit.quant.checkpoint import base_config

        if config is None or isinstance(config, (str, Path)):
            folder = Path(config or pretrained_model_name_or_path)
            config_dict = json.loads((folder / "config.json").read_text())
        else:
            config_dict = config.to_dict()
        quantization_config = config_dict.get("quantization_config")
        config = base_config(config_dict)
        config.quantization_config = quantization_config  # the quantizer takes it from here
        return AutoModelForCausalLM.from_pretrained(
            pretrained_model_name_or_path, *model_args, config=config, **kwargs
        )


def register_config() -> None:
    from transformers import AutoConfig

    AutoConfig.register(QUANTIZED_MODEL_TYPE, Llm1bitConfig, exist_ok=True)


def register_model() -> None:
    from transformers import AutoModelForCausalLM

    register_config()
    AutoModelForCausalLM.register(Llm1bitConfig, Llm1bitForCausalLM, exist_ok=True)


def register_quantizer() -> None:
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
    from transformers.quantizers.auto import register_quantization_config as register_qconfig
    from transformers.quantizers.auto import register_quantizer as register_hf_quantizer

    from llm1bit.quant.hf_quantizer import QUANT_METHODS, Llm1bitHfQuantizer, Llm1bitQuantizationConfig

    for method in QUANT_METHODS:
        if method not in AUTO_QUANTIZATION_CONFIG_MAPPING:
            register_qconfig(method)(Llm1bitQuantizationConfig)
        if method not in AUTO_QUANTIZER_MAPPING:
            register_hf_quantizer(method)(Llm1bitHfQuantizer)
