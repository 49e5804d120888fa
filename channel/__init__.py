"""The DDCL channel: quantizer, synchronized noise, codecs and frames. No sockets here."""

from . import codecs, frame
from .errors import ChannelError, CodecError, FrameError, QuantizerError
from .noise import DOMAIN_MESSAGE, NoiseKey, uniform_numpy, uniform_torch
from .philox import philox4x32_10
from .quantizer import dequantize_numpy, quantize, quantize_numpy

__all__ = [
    "ChannelError",
    "CodecError",
    "DOMAIN_MESSAGE",
    "FrameError",
    "NoiseKey",
    "QuantizerError",
    "codecs",
    "dequantize_numpy",
    "frame",
    "philox4x32_10",
    "quantize",
    "quantize_numpy",
    "uniform_numpy",
    "uniform_torch",
]
