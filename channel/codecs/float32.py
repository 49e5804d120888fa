"""The baseline: the message as raw little-endian 32-bit floats."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CodecError
from ..frame import CODEC_IDS
from . import bits
from .base import Codec


class Float32Codec(Codec):
    name = "float32"
    wire_id = CODEC_IDS["float32"]

    def encode_bits(self, values):
        a = np.asarray(values, dtype=np.float32).reshape(-1)
        bits.check_count(a.size)
        if not np.all(np.isfinite(a)):
            raise CodecError("float32 codec refuses NaN and infinity")
        data = a.astype("<f4", copy=False).tobytes()
        return data, 8 * len(data)

    def decode(self, data, count):
        n = bits.check_count(count)
        if len(data) != 4 * n:
            raise CodecError(f"float32 message of {n} values needs {4 * n} bytes, got {len(data)}")
        a = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(a)):
            raise CodecError("float32 message holds NaN or infinity")
        return a

    def smooth_bits(self, y):
        return torch.full_like(y, 32.0)
