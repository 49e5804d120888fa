"""Codec registry: `get(name, **options)` -> an object with encode/decode/encode_bits."""

from __future__ import annotations

import numpy as np

from ..errors import CodecError
from ..frame import MAX_COUNT
from .base import Codec
from .categorical import CategoricalModel
from .expgolomb import ExpGolombCodec
from .float32 import Float32Codec
from .range_coder import DEFAULT_MODEL, RangeCodec
from .rice import RiceCodec

REGISTRY: dict[str, type[Codec]] = {
    c.name: c for c in (Float32Codec, ExpGolombCodec, RiceCodec, RangeCodec)
}
BY_WIRE_ID: dict[int, type[Codec]] = {c.wire_id: c for c in REGISTRY.values()}
NAMES = tuple(REGISTRY)


def get(name: str, **options) -> Codec:
    """A codec by name.

    Args:
        name: ``float32``, ``expgolomb``, ``rice`` or ``range`` (`NAMES`).
        **options: The codec's options: ``range`` takes ``model``, a `CategoricalModel`
            (default: a discretized Laplace); the others take none.

    Returns:
        A new `Codec`.

    Raises:
        CodecError: an unknown name, or options the codec does not take.
    """
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise CodecError(f"unknown codec {name!r}; choose one of {', '.join(NAMES)}") from None
    try:
        return cls(**options)
    except TypeError as e:
        raise CodecError(f"bad options for codec {name!r}: {e}") from None


def stream_bits(codec: Codec, values) -> int:
    """Real bits of integer values encoded as bitstreams of at most MAX_COUNT values each:
    one stream where they fit, as one frame would carry them.

    Args:
        codec: The codec that writes the streams.
        values: Integer message values, any shape (flattened in C order).

    Returns:
        The streams' lengths in bits, summed.

    Raises:
        CodecError: the codec cannot write these values.
    """
    flat = np.asarray(values).reshape(-1)
    return sum(codec.encode_bits(flat[i:i + MAX_COUNT])[1] for i in range(0, flat.size, MAX_COUNT))


__all__ = ["Codec", "CategoricalModel", "DEFAULT_MODEL", "NAMES", "get", "REGISTRY", "BY_WIRE_ID", "stream_bits"]
