"""Range coding with constriction under an explicit CategoricalModel, with an escape.

Layout: the table symbols of positions d = 0, 1, ... D-1 (each position class with its
own row), then each escaped value's zigzag as two 16-bit uniform symbols; the coder's
32-bit words little-endian, trailing zero bytes dropped (the decoder puts them back).
The decoder re-encodes what it read and refuses bytes that differ: every garbled
stream that is not exactly what the encoder would write raises CodecError.
"""

from __future__ import annotations

import numpy as np

import constriction

from ..errors import CodecError
from ..frame import CODEC_IDS
from . import bits
from .base import Codec
from .categorical import CategoricalModel

_stream = constriction.stream

DEFAULT_MODEL = CategoricalModel.laplace(scale=2.0, radius=32, escape=1e-4)


def _guard(call, *args):
    """Run a constriction call; its failures (Rust panics included) become CodecError."""
    try:
        return call(*args)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # pyo3's PanicException derives from BaseException
        raise CodecError(f"range coder: {type(e).__name__}: {e}") from None


class RangeCodec(Codec):
    """Options: `model`, a CategoricalModel (or its dict). Default: `DEFAULT_MODEL`,
    a discretized Laplace(0, 2) on -32..32 with escape mass 1e-4."""

    name = "range"
    wire_id = CODEC_IDS["range"]

    def __init__(self, model: CategoricalModel | dict | None = None):
        if isinstance(model, dict):
            model = CategoricalModel.from_dict(model)
        self.model = model or DEFAULT_MODEL
        self._rows = [
            _stream.model.Categorical(row.astype(np.float64), perfect=False)
            for row in self.model.probs
        ]
        self._raw = _stream.model.Uniform(1 << 16)

    def options(self):
        return {"model": self.model.to_dict()}

    def __reduce__(self):
        # constriction's models do not pickle: copies (copy.deepcopy, torch.save of a
        # module holding this codec) carry the model and rebuild them
        return type(self), (self.model,)

    def encode_bits(self, values):
        m = bits.as_values(values)
        k = self.model.size
        sym = m - self.model.lo
        escaped = (sym < 0) | (sym >= k)
        sym = np.where(escaped, k, sym).astype(np.int32)
        enc = _stream.queue.RangeEncoder()
        d = len(self._rows)
        for r, row in enumerate(self._rows):
            part = sym[r::d]
            if part.size:
                _guard(enc.encode, part, row)
        if escaped.any():
            u = bits.zigzag(m[escaped])
            halves = np.stack([u >> np.uint64(16), u & np.uint64(0xFFFF)], axis=1)
            _guard(enc.encode, halves.reshape(-1).astype(np.int32), self._raw)
        data = enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0")
        if not data:
            return data, 0
        last = data[-1]
        return data, 8 * len(data) - ((last & -last).bit_length() - 1)

    def decode(self, data, count):
        n = bits.check_count(count)
        data = bytes(data)
        if data and data[-1] == 0:
            raise CodecError("range stream has a trailing zero byte")
        if n == 0:
            if data:
                raise CodecError("range stream has bytes but no values")
            return np.zeros(0, dtype=np.int64)
        words = np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)
        dec = _guard(_stream.queue.RangeDecoder, words)
        sym = np.empty(n, dtype=np.int64)
        d = len(self._rows)
        for r, row in enumerate(self._rows):
            size = len(range(r, n, d))
            if size:
                sym[r::d] = _guard(dec.decode, row, size)
        k = self.model.size
        m = sym + self.model.lo
        escaped = sym == k
        if escaped.any():
            raw = _guard(dec.decode, self._raw, 2 * int(escaped.sum())).astype(np.uint64)
            u = (raw[0::2] << np.uint64(16)) | raw[1::2]
            m[escaped] = bits.unzigzag(u)
        if np.abs(m).max() > bits.VALUE_LIMIT or self.encode(m) != data:
            raise CodecError("range stream is not a valid encoding of any message")
        return m

    def smooth_bits(self, y):
        return self.model.relaxed_bits(y)
