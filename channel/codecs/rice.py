"""zigzag + Rice with k chosen per message, in a split layout:

    [k: 5 bits][remainder bit-planes: k planes of n bits, MSB plane first]
    [quotients in unary][escaped quotients: 32 bits each][zero padding]

Quotient q is sent as min(q, ESC) zeros and a one; q >= ESC also puts q in the escape
section, so one outlier costs ESC + 33 bits instead of q + 1. The length is exactly
interleaved Rice's.

Both directions are numba kernels: a message is a few thousand values, and a numpy coder
pays ~15 array passes of call overhead per message, which at 4096 values cost more than
the bits (40-60 M values/s against 150-400 compiled). The kernels read and write bytes
directly and check every index themselves (numba does not), so hostile bytes end in a
status code that decode turns into a CodecError.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from ..errors import CodecError
from ..frame import CODEC_IDS
from . import bits
from .base import Codec

K_BITS = 5
ESC = 32
MAX_BITS_PER_VALUE = 31 + ESC + 1 + 32  # remainder, escaped unary, escaped quotient
_LN_PHI_MINUS_1 = math.log((math.sqrt(5.0) - 1.0) / 2.0)

# decode status codes, each a distinct way bytes can fail to be a Rice message
_OK, _SHORT, _NO_TERMINATOR, _LONG_RUN, _NO_ESCAPE, _LOW_ESCAPE, _RANGE, _TRAILING = range(8)
_ERRORS = {
    _SHORT: "too few bytes for {n} Rice values with k={k}",
    _NO_TERMINATOR: "truncated Rice stream: missing unary terminators",
    _LONG_RUN: "Rice quotient run longer than the escape length",
    _NO_ESCAPE: "truncated Rice stream: missing escaped quotients",
    _LOW_ESCAPE: "escaped Rice quotient below the escape length",
    _RANGE: "Rice value out of range",
    _TRAILING: "Rice stream has trailing bytes or non-zero padding",
}


@njit(cache=True, nogil=True)
def optimal_k(mean: float) -> int:
    """Rice parameter for geometric data of this mean (Kiely 2004): one pass, no search."""
    if mean <= 0.0:
        return 0
    ratio = _LN_PHI_MINUS_1 / math.log(mean / (mean + 1.0))
    return min(31, max(0, 1 + int(math.floor(math.log2(ratio)))))


@njit(cache=True, nogil=True, inline="always")
def _put(out, pos, acc, held, value, width):
    """Append width (<= 33) bits; acc keeps < 8 pending bits between calls, so the
    uint64 never overflows. Returns the new (pos, acc, held)."""
    acc = (acc << np.uint64(width)) | np.uint64(value)
    held += width
    while held >= 8:
        held -= 8
        out[pos] = (acc >> np.uint64(held)) & np.uint64(0xFF)
        pos += 1
    return pos, acc & np.uint64((1 << held) - 1), held


@njit(cache=True, nogil=True)
def _encode(m, limit):
    """int64 values -> (bytes as uint8, bit count); bit count -1 if some |m| > limit."""
    n = m.size
    u = np.empty(n, dtype=np.int64)
    total = 0
    for i in range(n):
        v = m[i]
        if v > limit or v < -limit:
            return np.empty(0, dtype=np.uint8), -1
        z = (v << 1) ^ (v >> 63)
        u[i] = z
        total += z
    k = optimal_k(total / n) if n else 0
    nbits = K_BITS + n * k
    escapes = 0
    for i in range(n):
        q = u[i] >> k
        escapes += q >= ESC
        nbits += min(q, ESC) + 1
    nbits += 32 * escapes
    out = np.zeros((nbits + 7) // 8, dtype=np.uint8)
    pos, acc, held = _put(out, 0, np.uint64(0), 0, k, K_BITS)
    whole = n - n % 8
    for j in range(k - 1, -1, -1):
        for i in range(0, whole, 8):  # eight values' bits per byte written
            byte = 0
            for t in range(8):
                byte = (byte << 1) | ((u[i + t] >> j) & 1)
            pos, acc, held = _put(out, pos, acc, held, byte, 8)
        for i in range(whole, n):
            pos, acc, held = _put(out, pos, acc, held, (u[i] >> j) & 1, 1)
    for i in range(n):
        pos, acc, held = _put(out, pos, acc, held, 1, min(u[i] >> k, ESC) + 1)
    if escapes:
        for i in range(n):
            if u[i] >> k >= ESC:
                pos, acc, held = _put(out, pos, acc, held, u[i] >> k, 32)
    if held:
        out[pos] = acc << np.uint64(8 - held)
    return out, nbits


@njit(cache=True, nogil=True)
def _decode(data, n, out):
    """Rice bytes -> n values into out (int64); returns (status, k). The bytes are unpacked
    to one byte per bit first, so every loop below is plain loads, and the unary section
    is read without branches (each bit position written, the count advanced by the bit)."""
    nbits = data.size * 8
    bits = np.empty(nbits, dtype=np.uint8)
    for b in range(data.size):
        byte = data[b]
        for t in range(8):
            bits[8 * b + t] = (byte >> (7 - t)) & 1
    k = 0
    for t in range(K_BITS):
        k = (k << 1) | bits[t]
    start = K_BITS + n * k
    if start + n > nbits:
        return _SHORT, k
    r = out  # remainders first, quotients added on top
    r[:] = 0
    for j in range(k):
        plane = bits[K_BITS + j * n : K_BITS + (j + 1) * n]
        for i in range(n):
            r[i] = (r[i] << 1) | plane[i]
    ones = np.empty(nbits - start + 1, dtype=np.int64)  # positions of the set bits
    count = 0
    for p in range(start, nbits):
        ones[count] = p
        count += bits[p]
    if count < n:
        return _NO_TERMINATOR, k
    escapes = 0
    prev = start - 1
    for i in range(n):
        q = ones[i] - prev - 1
        prev = ones[i]
        if q > ESC:
            return _LONG_RUN, k
        if q == ESC:
            escapes += 1
            r[i] = -1 - r[i]  # mark; the real quotient comes from the escape section
        else:
            r[i] |= q << k
    pos = prev + 1
    if escapes:
        if pos + 32 * escapes > nbits:
            return _NO_ESCAPE, k
        for i in range(n):
            if r[i] < 0:
                q = 0
                for t in range(32):
                    q = (q << 1) | bits[pos + t]
                pos += 32
                if q < ESC:
                    return _LOW_ESCAPE, k
                if q >= (1 << 32) >> k:  # keeps q << k below 2**32
                    return _RANGE, k
                r[i] = (q << k) | (-1 - r[i])
    if (pos + 7) >> 3 != data.size:
        return _TRAILING, k
    for t in range(pos, nbits):
        if bits[t]:
            return _TRAILING, k
    for i in range(n):
        v = r[i]
        r[i] = (v >> 1) ^ -(v & 1)
    return _OK, k


class RiceCodec(Codec):
    name = "rice"
    wire_id = CODEC_IDS["rice"]

    def encode_bits(self, values):
        out, nbits = _encode(bits.as_values(values, check_limit=False), bits.VALUE_LIMIT)
        if nbits < 0:
            raise CodecError(f"values must satisfy |m| <= {bits.VALUE_LIMIT}")
        return out.tobytes(), nbits

    def decode(self, data, count):
        n = bits.check_count(count)
        nbytes = len(data)
        if not K_BITS + n <= nbytes * 8 < K_BITS + n * MAX_BITS_PER_VALUE + 8:
            raise CodecError(f"{nbytes} bytes cannot be {n} Rice values")
        out = np.empty(n, dtype=np.int64)
        status, k = _decode(np.frombuffer(data, dtype=np.uint8), n, out)
        if status != _OK:
            raise CodecError(_ERRORS[status].format(n=n, k=k))
        return out

    def smooth_bits(self, y):
        # zigzag(m) ~ 2|m|; k follows the encoder's per-message rule on that mean.
        u = 2 * y.abs()
        with torch.no_grad():
            mean = u.mean(dim=-1, keepdim=True).clamp_min(1e-6)
            ratio = _LN_PHI_MINUS_1 / torch.log(mean / (mean + 1))
            k = (1 + torch.floor(torch.log2(ratio))).clamp(0, 31)
        return k + 1 + u / torch.exp2(k)
