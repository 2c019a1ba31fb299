"""Quantization: specs and plans, observers, fake quantization, model preparation, PTQ, packing.

Example:
    >>> from quantbench.quant import PTQConfig, quantize_ptq, save_quantized
    >>> qm = quantize_ptq(model, PTQConfig(scheme="w8a8", algo="mse"), calib)  # doctest: +SKIP
"""

from quantbench.quant.prepare import QuantizedModel, calibrate, prepare
from quantbench.quant.ptq import ALGOS, PTQConfig, quantize_ptq
from quantbench.quant.save import load_quantized, save_quantized
from quantbench.quant.spec import LayerSpec, QuantPlan, QuantSpec, parse_scheme

__all__ = ["ALGOS", "LayerSpec", "PTQConfig", "QuantPlan", "QuantSpec", "QuantizedModel", "calibrate",
           "load_quantized", "parse_scheme", "prepare", "quantize_ptq", "save_quantized"]
