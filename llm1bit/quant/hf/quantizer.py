"""The `HfQuantizer` that lets transformers load llm1bit checkpoints (registered with transformers when first imported; `llm1bit.quant.hf.register`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from llm1bit.format import quant_method
from llm1bit.quant.numerics.methods import METHODS

QUANT_METHODS = tuple(quant_method(method) for method in METHODS)


class Llm1bitQuantizationConfig(QuantizationConfigMixin):
    """The `quantization_config` block as written by `llm1bit quantize`, kept as it is."""

    def __init__(self, quant_method: str, **fields: Any) -> None:
        self.quant_method = quant_method
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": self.quant_method, **self.fields}

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(name)


class Llm1bitHfQuantizer(HfQuantizer):
    """Loads (never creates) llm1bit quantized checkpoints; see the module docstring."""

    requires_calibration = True  # only pre-quantized folders: quantize with `llm1bit quantize`

    def __init__(self, quantization_config: Llm1bitQuantizationConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self._weights: Path | None = None
        self._layer_shapes: dict[str, tuple[int, int]] = {}

    @property
    def _modules(self) -> dict[str, dict[str, Any]]:
        return self.quantization_config.to_dict()["modules"]

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, dtype=None, **kwargs):

        from llm1bit.errors import UserError
        from llm1bit.format.folder import check_format_version
        from llm1bit.quant.hf.checkpoint import build_shells

        check_format_version(
            getattr(model.config, "name_or_path", "checkpoint"), self.quantization_config.to_dict()
        )
        files = list(checkpoint_files or [])
        if len(files) != 1 or not str(files[0]).endswith(".safetensors"):
            raise UserError(f"an llm1bit checkpoint is one model.safetensors file, found {files or 'none'}")
        self._weights = Path(files[0])
        self._layer_shapes = build_shells(model, self._modules, self._weights, dtype or model.dtype)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        from llm1bit.quant.hf.checkpoint import check_loaded
        from llm1bit.quant.hf.kernel.bf16 import attach as attach_bf16_gemv

        check_loaded(model, self._modules, self._layer_shapes, self._weights)
        attach_bf16_gemv(model)  # decode calls of its unquantized linears (lm_head): the kernel's bf16 GEMV
        return model

    def is_serializable(self) -> bool:
        return False  # write folders with `llm1bit quantize`; save_pretrained would lose the model_type guard

    @property
    def is_trainable(self) -> bool:
        return False


def _register() -> None:
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
    from transformers.quantizers.auto import register_quantization_config as register_qconfig
    from transformers.quantizers.auto import register_quantizer as register_hf_quantizer

    for method in QUANT_METHODS:
        if method not in AUTO_QUANTIZATION_CONFIG_MAPPING:
            register_qconfig(method)(Llm1bitQuantizationConfig)
        if method not in AUTO_QUANTIZER_MAPPING:
            register_hf_quantizer(method)(Llm1bitHfQuantizer)


_register()  # with transformers' quantizer registry, on first import (see llm1bit.quant.hf.register)
