"""zigzag + Rice with k chosen per message, in a split layout that numpy can vectorize.

    [k: 5 bits][remainder bit-planes: k planes of n bits, MSB plane first]
    [quotients in unary][escaped quotients: 32 bits each][zero padding]

Quotient q is sent as min(q, ESC) zeros and a one; q >= ESC also puts q in the escape
section, so one outlier costs ESC + 33 bits instead of q + 1. The length is exactly
interleaved Rice's; keeping planes, unary quotients and escapes apart lets the decoder
find every quotient with one np.nonzero and every remainder with k shifts.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import CodecError
from . import bits as B
from .base import Codec

K_BITS = 5
ESC = 32
MAX_BITS_PER_VALUE = 31 + ESC + 1 + 32  # remainder, escaped unary, escaped quotient
SMALL = 64  # up to this many values, plain Python ints beat ~15 numpy calls
_LN2 = math.log(2.0)
_LN_PHI_MINUS_1 = math.log((math.sqrt(5.0) - 1.0) / 2.0)


def optimal_k(mean: float) -> int:
    """Rice parameter for geometric data of this mean (Kiely 2004): one pass, no search."""
    if mean <= 0:
        return 0
    ratio = _LN_PHI_MINUS_1 / math.log(mean / (mean + 1.0))
    return min(31, max(0, 1 + math.floor(math.log2(ratio))))


def _plane_dtype(k: int):
    return np.uint8 if k <= 8 else np.uint16 if k <= 16 else np.uint32


def _write_planes(out: np.ndarray, u: np.ndarray, k: int) -> None:
    """u's k low bits into out as k bit-planes of n bits, MSB plane first. One shift and
    one mask per plane: numpy's bit (un)packing along a strided axis is several times slower."""
    n = u.size
    r = u.astype(_plane_dtype(k))
    for j in range(k):
        np.bitwise_and(r >> (k - 1 - j), 1, out=out[j * n : (j + 1) * n], casting="unsafe")


def _read_planes(bits: np.ndarray, k: int, n: int) -> np.ndarray:
    """Inverse of _write_planes."""
    r = np.zeros(n, dtype=_plane_dtype(k))
    for j in range(k):
        r <<= 1
        r |= bits[j * n : (j + 1) * n]
    return r


def _encode_small(u: list[int], k: int) -> tuple[bytes, int]:
    """The same layout as the vectorized encoder, built in one Python int."""
    acc, nbits = k, K_BITS + k * len(u)
    for j in range(k - 1, -1, -1):
        for x in u:
            acc = (acc << 1) | ((x >> j) & 1)
    escaped = []
    for x in u:
        q = x >> k
        if q >= ESC:
            escaped.append(q)
            q = ESC
        acc = (acc << (q + 1)) | 1
        nbits += q + 1
    for q in escaped:
        acc = (acc << 32) | q
    nbits += 32 * len(escaped)
    pad = -nbits % 8
    return (acc << pad).to_bytes((nbits + pad) // 8, "big"), nbits


def _decode_small(data: bytes, n: int) -> np.ndarray:
    s = format(int.from_bytes(data, "big"), f"0{8 * len(data)}b")
    k = int(s[:K_BITS], 2)
    pos = K_BITS + n * k
    if pos + n > len(s):
        raise CodecError(f"{len(data)} bytes cannot hold {n} Rice values with k={k}")
    r = [0] * n
    for j in range(k):
        for i, c in enumerate(s[K_BITS + j * n : K_BITS + (j + 1) * n]):
            r[i] = (r[i] << 1) | (c == "1")
    q = []
    for _ in range(n):
        end = s.find("1", pos)
        if end < 0:
            raise CodecError("truncated Rice stream: missing unary terminators")
        if end - pos > ESC:
            raise CodecError("Rice quotient run longer than the escape length")
        q.append(end - pos)
        pos = end + 1
    for i in range(n):
        if q[i] == ESC:
            if pos + 32 > len(s):
                raise CodecError("truncated Rice stream: missing escaped quotients")
            raw = int(s[pos : pos + 32], 2)
            if raw < ESC:
                raise CodecError("escaped Rice quotient below the escape length")
            if raw >= (1 << 32) >> k:
                raise CodecError("Rice value out of range")
            q[i] = raw
            pos += 32
    if -(-pos // 8) != len(data) or "1" in s[pos:]:
        raise CodecError("Rice stream has trailing bytes or non-zero padding")
    return B.unzigzag(np.array([(qi << k) | ri for qi, ri in zip(q, r)], dtype=np.int64))


class RiceCodec(Codec):
    name = "rice"
    wire_id = 2

    def encode_bits(self, values):
        u = B.zigzag(B.as_values(values))
        k = optimal_k(int(u.sum(dtype=np.uint64)) / u.size) if u.size else 0
        return _encode_small(u.tolist(), k) if u.size <= SMALL else _encode_vector(u, k)

    def decode(self, data, count):
        n = B.check_count(count)
        nbytes = len(data)
        if not K_BITS + n <= nbytes * 8 < K_BITS + n * MAX_BITS_PER_VALUE + 8:
            raise CodecError(f"{nbytes} bytes cannot be {n} Rice values")
        return _decode_small(data, n) if n <= SMALL else _decode_vector(data, n)

    def smooth_bits(self, y):
        # zigzag(m) ~ 2|m|; k follows the encoder's per-message rule on that mean.
        u = 2 * y.abs()
        with torch.no_grad():
            mean = u.mean(dim=-1, keepdim=True).clamp_min(1e-6)
            ratio = _LN_PHI_MINUS_1 / torch.log(mean / (mean + 1))
            k = (1 + torch.floor(torch.log2(ratio))).clamp(0, 31)
        return k + 1 + u / torch.exp2(k)


def _encode_vector(u: np.ndarray, k: int) -> tuple[bytes, int]:
    """numpy encoder for messages above SMALL values."""
    n = u.size
    q = u >> np.uint32(k)
    escaped = q[q >= ESC] if q.max() >= ESC else None  # outliers are rare
    if escaped is not None:
        q = np.minimum(q, np.uint32(ESC))
    q += np.uint32(1)
    ends = np.cumsum(q, dtype=np.int64)  # 1-based position of each quotient's one
    unary_start = K_BITS + n * k
    unary_len = int(ends[-1])
    total = unary_start + unary_len + (32 * escaped.size if escaped is not None else 0)
    out = np.zeros(-(-total // 8) * 8, dtype=np.uint8)
    out[:K_BITS] = [(k >> (K_BITS - 1 - i)) & 1 for i in range(K_BITS)]
    _write_planes(out[K_BITS:unary_start], u, k)
    out[unary_start - 1 :][ends] = 1
    if escaped is not None:
        out[unary_start + unary_len : total] = B.fixed_to_bits(escaped, 32)
    return B.pack(out), total


def _decode_vector(data: bytes, n: int) -> np.ndarray:
    """numpy decoder for messages above SMALL values."""
    nbytes = len(data)
    bits = B.unpack(data)
    k = data[0] >> (8 - K_BITS)
    unary_start = K_BITS + n * k
    if unary_start + n > bits.size:
        raise CodecError(f"{nbytes} bytes cannot hold {n} Rice values with k={k}")
    ends = np.nonzero(bits[unary_start:].view(bool))[0][:n]
    if ends.size < n:
        raise CodecError("truncated Rice stream: missing unary terminators")
    q = np.empty(n, dtype=np.int64)
    q[0] = ends[0]
    np.subtract(ends[1:], ends[:-1], out=q[1:])
    q[1:] -= 1
    top = q.max()
    if top > ESC:
        raise CodecError("Rice quotient run longer than the escape length")
    esc_start = unary_start + int(ends[-1]) + 1
    end = esc_start
    if top == ESC:
        escaped = q == ESC
        end += 32 * int(np.count_nonzero(escaped))
        if end > bits.size:
            raise CodecError("truncated Rice stream: missing escaped quotients")
        raw = B.bits_to_fixed(bits[esc_start:end], 32, (end - esc_start) // 32).astype(np.int64)
        if raw.min() < ESC:
            raise CodecError("escaped Rice quotient below the escape length")
        if raw.max() >= (1 << 32) >> k:  # keeps q << k below 2**32
            raise CodecError("Rice value out of range")
        q[escaped] = raw
    B.check_padding(bits, end, nbytes)
    if k:
        q <<= k
        q |= _read_planes(bits[K_BITS:unary_start], k, n)
    return B.unzigzag(q)
