"""Signed exponential-Golomb, H.264 se(v): m > 0 -> 2m - 1, m <= 0 -> -2m, then ue(v).

ue(v) of c writes x = c + 1 in 2*bitlen(x) - 1 bits: its leading zeros are the prefix.
Length: 2*floor(log2(2|m| + [m <= 0])) + 1 bits.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CodecError
from ..frame import CODEC_IDS
from . import bits
from .base import Codec

MAX_PREFIX = 32  # x < 2**33 for |m| < 2**31


class ExpGolombCodec(Codec):
    name = "expgolomb"
    wire_id = CODEC_IDS["expgolomb"]

    def encode_bits(self, values):
        m = bits.as_values(values)
        x = np.where(m > 0, 2 * m - 1, -2 * m).astype(np.uint64) + np.uint64(1)
        widths = 2 * bits.bit_length(x) - 1
        ends = np.cumsum(widths)
        total = int(ends[-1]) if m.size else 0
        out = np.zeros(-(-total // 8) * 8, dtype=np.uint8)
        bits.scatter_fields(out, x, widths, ends - widths)
        return bits.pack(out), total

    def decode(self, data, count):
        n = bits.check_count(count)
        nbytes = len(data)
        if nbytes * 8 < n:
            raise CodecError(f"{nbytes} bytes cannot hold {n} exp-Golomb values")
        stream = bits.unpack(data)
        size = stream.size
        # next_one[j]: position of the first 1 at or after bit j (size when none).
        marks = np.full(size + 1, size, dtype=np.int64)
        ones = np.nonzero(stream.view(bool))[0]
        marks[ones] = ones
        next_one = np.minimum.accumulate(marks[::-1])[::-1].tolist()
        lead = np.empty(n, dtype=np.int64)
        width = np.empty(n, dtype=np.int64)
        s = 0
        for i in range(n):  # each codeword's start depends on the previous one
            p = next_one[s]
            w = p - s + 1
            if p >= size or w > MAX_PREFIX + 1 or p + w > size:
                raise CodecError(f"truncated or oversized exp-Golomb codeword {i}")
            lead[i], width[i] = p, w
            s = p + w
        bits.check_padding(stream, s, nbytes)
        x = bits.gather_fields(stream, lead, width).astype(np.int64)
        c = x - 1
        m = np.where(c & 1 == 1, (c + 1) >> 1, -(c >> 1))
        if n and np.abs(m).max() > bits.VALUE_LIMIT:
            raise CodecError("exp-Golomb value out of range")
        return m

    def smooth_bits(self, y):
        # The real length lies in (2s - 1, 2s + 1] with s = log2(2|m| + 1).
        return 2 * torch.log2(2 * y.abs() + 1)
