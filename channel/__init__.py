"""The DDCL channel: quantizer, synchronized noise, codecs and frames. No sockets here."""

import numpy as np

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
    "load_kernels",
    "philox4x32_10",
    "quantize",
    "quantize_numpy",
    "uniform_numpy",
    "uniform_torch",
]


def load_kernels() -> None:
    """Load the numba kernels (compiling them if their cache is cold) now: a process's
    first message would otherwise pay 0.3-3 s for it, past a lockstep deadline."""
    key = NoiseKey(0, 0, 0)
    u = uniform_numpy(4, key, 0).reshape(1, 4)
    for shape in ((1, 4), (4,)):  # agents quantize (B, D) batches; tools flat arrays
        z_hat, m = quantize_numpy(np.zeros(shape, dtype=np.float32), 1.0, u.reshape(shape))
        dequantize_numpy(m, 1.0, u.reshape(shape))
    philox4x32_10(np.zeros(4, dtype=np.uint32), np.zeros(2, dtype=np.uint32))
    rice = codecs.get("rice")
    rice.decode(rice.encode([0, 1, -1]), 3)
