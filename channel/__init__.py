"""The DDCL channel: quantizer, synchronized noise, codecs and frames. No sockets here.

Public surface, version 1 (`API_VERSION`): the names `PUBLIC` below lists, module by
module (the layer: `from channel.torch import DDCL`, also `channel.DDCL`). Everything
else, and every name starting with an underscore, is private and may change without
notice. docs/layer.md is the guide; tests/test_layer.py checks that every listed name
exists and documents its arguments, returns and errors.

The names below load on first use. The broker parses frames (`channel.frame`) and so
imports this package, but needs none of torch, numba and the codecs that the quantizer
and noise bring: importing them would cost its start a second, and a restarted broker
is what every peer waits for.
"""

from importlib import import_module

# name -> the module that holds it
_HOMES = {
    "ChannelError": "errors", "CodecError": "errors", "FrameError": "errors", "QuantizerError": "errors",
    "LayerError": "errors", "ShapeError": "errors", "DtypeError": "errors", "DeltaError": "errors",
    "DDCL": "torch", "Encoded": "torch",
    "DOMAIN_MESSAGE": "noise", "NoiseKey": "noise", "uniform_numpy": "noise", "uniform_torch": "noise",
    "philox4x32_10": "philox",
    "dequantize_numpy": "quantizer", "quantize": "quantizer", "quantize_numpy": "quantizer",
}
_SUBMODULES = ("codecs", "frame", "rate", "torch")
API_VERSION = 1  # raised when a public name changes meaning or goes away
# the one list of what is public, by module (as strings: agents.pettingzoo sits above
# channel in the import order and is not imported here)
PUBLIC = {
    "channel": ("API_VERSION", "ChannelError", "CodecError", "DDCL", "DOMAIN_MESSAGE", "DeltaError", "DtypeError",
                "Encoded", "FrameError", "LayerError", "NoiseKey", "QuantizerError", "ShapeError", "dequantize_numpy",
                "load_kernels", "philox4x32_10", "quantize", "quantize_numpy", "uniform_numpy", "uniform_torch"),
    "channel.torch": ("DDCL", "Encoded", "LEARNED_DELTA_RANGE"),
    "channel.codecs": ("get", "NAMES", "Codec", "CategoricalModel", "stream_bits"),
    "channel.rate": ("RATE_LOSSES", "FactorizedPrior", "rate_bits", "surrogate_bits"),
    "channel.frame": ("pack", "unpack", "Frame", "Kind", "StampMode"),
    "agents.pettingzoo": ("DDCLParallelEnv", "GoalParallelEnv"),
}

__all__ = sorted([*_HOMES, *_SUBMODULES, "API_VERSION", "PUBLIC", "load_kernels"])


def __getattr__(name: str):
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value


def load_kernels() -> None:
    """Load the numba kernels (compiling them if their cache is cold) now: a process's
    first message would otherwise pay 0.3-3 s for it, past a lockstep deadline."""
    import numpy as np

    from . import codecs
    from .noise import NoiseKey, uniform_numpy
    from .philox import philox4x32_10
    from .quantizer import dequantize_numpy, quantize_numpy

    key = NoiseKey(0, 0, 0)
    u = uniform_numpy(4, key, 0).reshape(1, 4)
    for shape in ((1, 4), (4,)):  # agents quantize (B, D) batches; tools flat arrays
        z_hat, m = quantize_numpy(np.zeros(shape, dtype=np.float32), 1.0, u.reshape(shape))
        dequantize_numpy(m, 1.0, u.reshape(shape))
    philox4x32_10(np.zeros(4, dtype=np.uint32), np.zeros(2, dtype=np.uint32))
    rice = codecs.get("rice")
    rice.decode(rice.encode([0, 1, -1]), 3)
