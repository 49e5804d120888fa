"""Codec registry: `get(name, **options)` -> an object with encode/decode/encode_bits."""

from __future__ import annotations

from ..errors import CodecError
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
    """A codec by name: float32, expgolomb, rice, range (option: model)."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise CodecError(f"unknown codec {name!r}; choose one of {', '.join(NAMES)}") from None
    try:
        return cls(**options)
    except TypeError as e:
        raise CodecError(f"bad options for codec {name!r}: {e}") from None


__all__ = ["Codec", "CategoricalModel", "DEFAULT_MODEL", "NAMES", "get", "REGISTRY", "BY_WIRE_ID"]
