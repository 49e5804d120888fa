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


class RiceCodec(Codec):
    name = "rice"
    wire_id = 2

    def encode_bits(self, values):
        m = B.as_values(values)
        u = B.zigzag(m)
        n = u.size
        k = optimal_k(int(u.sum(dtype=np.uint64)) / n) if n else 0
        q = u >> np.uint32(k)
        qc = np.minimum(q, np.uint32(ESC))
        ends = np.cumsum(qc, dtype=np.int64)
        ends += np.arange(1, n + 1)  # each quotient's terminating one, counted from 1
        unary_start = K_BITS + n * k
        unary_len = int(ends[-1]) if n else 0
        n_esc = int(np.count_nonzero(qc == ESC)) if n else 0
        total = unary_start + unary_len + 32 * n_esc
        out = np.zeros(-(-total // 8) * 8, dtype=np.uint8)
        out[:K_BITS] = [(k >> (K_BITS - 1 - i)) & 1 for i in range(K_BITS)]
        r = u.astype(_plane_dtype(k))
        for j in range(k):
            lo = K_BITS + j * n
            np.bitwise_and(r >> (k - 1 - j), 1, out=out[lo : lo + n], casting="unsafe")
        out[unary_start - 1 + ends] = 1
        if n_esc:
            out[unary_start + unary_len : total] = B.fixed_to_bits(q[q >= ESC], 32)
        return B.pack(out), total

    def decode(self, data, count):
        n = B.check_count(count)
        nbytes = len(data)
        if nbytes * 8 < K_BITS + n:
            raise CodecError(f"{nbytes} bytes cannot hold {n} Rice values")
        bits = B.unpack(data)
        k = int(np.packbits(bits[:K_BITS])[0]) >> (8 - K_BITS)
        unary_start = K_BITS + n * k
        if unary_start + n > bits.size:
            raise CodecError(f"{nbytes} bytes cannot hold {n} Rice values with k={k}")
        r = np.zeros(n, dtype=_plane_dtype(k))
        for j in range(k):
            r <<= 1
            r |= bits[K_BITS + j * n : K_BITS + (j + 1) * n]
        ends = np.nonzero(bits[unary_start:].view(bool))[0][:n]
        if ends.size < n:
            raise CodecError("truncated Rice stream: missing unary terminators")
        if n == 0:
            B.check_padding(bits, K_BITS, nbytes)
            return np.zeros(0, dtype=np.int64)
        q = np.empty(n, dtype=np.int64)
        q[0] = ends[0]
        np.subtract(ends[1:], ends[:-1], out=q[1:])
        q[1:] -= 1
        if q.max() > ESC:
            raise CodecError("Rice quotient run longer than the escape length")
        escaped = q == ESC
        n_esc = int(np.count_nonzero(escaped))
        esc_start = unary_start + int(ends[-1]) + 1
        end = esc_start + 32 * n_esc
        if end > bits.size:
            raise CodecError("truncated Rice stream: missing escaped quotients")
        B.check_padding(bits, end, nbytes)
        if n_esc:
            raw = B.bits_to_fixed(bits[esc_start:end], 32, n_esc).astype(np.int64)
            if raw.min() < ESC:
                raise CodecError("escaped Rice quotient below the escape length")
            if raw.max() >= (1 << 32) >> k:  # keeps q << k below 2**32
                raise CodecError("Rice value out of range")
            q[escaped] = raw
        return B.unzigzag((q << k) | r)

    def smooth_bits(self, y):
        # zigzag(m) ~ 2|m|; k follows the encoder's per-message rule on that mean.
        u = 2 * y.abs()
        with torch.no_grad():
            mean = u.mean(dim=-1, keepdim=True).clamp_min(1e-6)
            ratio = _LN_PHI_MINUS_1 / torch.log(mean / (mean + 1))
            k = (1 + torch.floor(torch.log2(ratio))).clamp(0, 31)
        return k + 1 + u / torch.exp2(k)
