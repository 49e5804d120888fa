"""The channel's typed errors: every failure on untrusted input is one of these."""


class ChannelError(Exception):
    """Base of every error the channel raises on bad input."""


class FrameError(ChannelError):
    """A frame is malformed, truncated, oversized or inconsistent."""


class CodecError(ChannelError):
    """A codec cannot encode these values or decode these bytes."""


class QuantizerError(ChannelError):
    """A signal cannot be quantized (non-finite, or outside the integer range)."""
