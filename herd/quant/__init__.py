"""Quantized weights: schemes (int8, int4), modules that own codes and scales, and the pass applying them."""

from herd.quant.apply import DEFAULT_GROUPS, GROUPS, quantize_model
from herd.quant.modules import QuantExperts, QuantLinear
from herd.quant.schemes import SCHEMES, QuantError, Scheme, dequantize, quantize, quantize_activations, scheme

__all__ = ["DEFAULT_GROUPS", "GROUPS", "SCHEMES", "QuantError", "QuantExperts", "QuantLinear", "Scheme",
           "dequantize", "quantize", "quantize_activations", "quantize_model", "scheme"]
