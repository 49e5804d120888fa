"""The channel's typed errors: every failure on untrusted input is one of these."""


class ChannelError(Exception):
    """Base of every error the channel raises on bad input."""


class FrameError(ChannelError):
    """A frame is malformed, truncated, oversized or inconsistent."""


class CodecError(ChannelError):
    """A codec cannot encode these values or decode these bytes."""


class QuantizerError(ChannelError):
    """A signal cannot be quantized (non-finite, or outside the integer range)."""


class LayerError(ChannelError):
    """The DDCL layer was given something it cannot take (base of the three below)."""


class ShapeError(LayerError, ValueError):
    """A signal's shape does not fit the layer (last dimension, sender axis, bitstream)."""


class DtypeError(LayerError, TypeError):
    """A signal is not float32: the dtype the wire reconstructs bit for bit."""


class DeltaError(LayerError, ValueError):
    """A quantization step is not a finite positive number (or one per dimension)."""
