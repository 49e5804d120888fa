"""Shared codec helpers: value checks, zigzag, and the vectorized bit fields of the numpy
codecs (Rice is a compiled kernel of its own).

A bitstream is handled as a uint8 array of 0/1 values (np.unpackbits order: most
significant bit first) and packed with np.packbits at the end.
"""

from __future__ import annotations

import numpy as np

from ..errors import CodecError
from ..frame import MAX_COUNT

# |m| < 2**31 on the wire, so zigzag values fit 32 bits.
VALUE_LIMIT = 2**31 - 1


def check_count(count: int) -> int:
    if not isinstance(count, (int, np.integer)) or not 0 <= count <= MAX_COUNT:
        raise CodecError(f"count must be an integer in 0..{MAX_COUNT}, got {count!r}")
    return int(count)


def as_values(values, check_limit: bool = True) -> np.ndarray:
    """Integer message values as contiguous int64, refusing what the wire cannot carry.
    check_limit=False leaves |m| <= VALUE_LIMIT to a caller that checks it in its own pass;
    inputs whose cast to int64 could wrap (uint64, floats) are checked here regardless."""
    a = np.asarray(values)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise CodecError("integer codecs take whole, finite numbers")
    elif a.dtype.kind not in "iub":
        raise CodecError(f"integer codecs take integer arrays, got dtype {a.dtype}")
    a = a.reshape(-1)
    check_count(a.size)
    exact_cast = a.dtype.kind in "ib" or (a.dtype.kind == "u" and a.dtype.itemsize < 8)
    if (check_limit or not exact_cast) and a.size and (a.max() > VALUE_LIMIT or a.min() < -VALUE_LIMIT):
        raise CodecError(f"values must satisfy |m| <= {VALUE_LIMIT}")
    return np.ascontiguousarray(a, dtype=np.int64)


def zigzag(m: np.ndarray) -> np.ndarray:
    """0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ... as uint32 (|m| < 2**31 fits)."""
    return ((m << 1) ^ (m >> 63)).astype(np.uint32)


def unzigzag(u: np.ndarray) -> np.ndarray:
    """Inverse of zigzag, as int64."""
    u = u.astype(np.int64, copy=False)
    return (u >> 1) ^ -(u & 1)


def bit_length(x: np.ndarray) -> np.ndarray:
    """Bit length of each value below 2**52 (frexp is exact there)."""
    return np.frexp(x.astype(np.float64))[1].astype(np.int64)


def scatter_fields(out: np.ndarray, values: np.ndarray, widths: np.ndarray, starts) -> None:
    """Write each value's low widths[i] bits (<= 64) into the bit array at starts[i]."""
    if values.size == 0:
        return
    planes = np.unpackbits(values.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
    col = np.arange(64)
    keep = col >= (64 - widths)[:, None]
    dest = (np.asarray(starts) - (64 - widths))[:, None] + col
    out[dest[keep]] = planes[keep]


def gather_fields(bits: np.ndarray, starts: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Read fields of widths[i] (<= 64) bits at starts[i]; the caller checks bounds."""
    if starts.size == 0:
        return np.zeros(0, dtype=np.uint64)
    col = np.arange(64)
    keep = col >= (64 - widths)[:, None]
    src = (starts - (64 - widths))[:, None] + col
    planes = np.zeros((starts.size, 64), dtype=np.uint8)
    planes[keep] = bits[src[keep]]
    return np.packbits(planes, axis=1).view(">u8").reshape(-1).astype(np.uint64)


def pack(bits: np.ndarray) -> bytes:
    return np.packbits(bits).tobytes()


def unpack(data: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def check_padding(bits: np.ndarray, end: int, nbytes: int) -> None:
    """Strict end of stream: exactly the bytes needed, padded with zero bits."""
    if -(-end // 8) != nbytes:
        raise CodecError(f"stream ends at bit {end} but has {nbytes} bytes")
    if bits[end:].any():
        raise CodecError("non-zero padding bits")
