"""What every codec offers: bytes out, values back, and a smooth length for training."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch


class Codec(ABC):
    """An integer codec: `channel.codecs.get` makes one; `DDCL` writes its messages with it.

    Attributes:
        name: The registry name (`channel.codecs.NAMES`).
        wire_id: The id a frame carries for it (3 bits).
    """

    name: str  # registry name
    wire_id: int  # the id frames carry (3 bits)

    def encode(self, values) -> bytes:
        """Encode integer values as one bitstream.

        Args:
            values: Integers, any shape (flattened in C order).

        Returns:
            The payload bytes of `encode_bits`.

        Raises:
            CodecError: a value the codec cannot write.
        """
        return self.encode_bits(values)[0]

    @abstractmethod
    def encode_bits(self, values) -> tuple[bytes, int]:
        """Encode integer values as one bitstream.

        Args:
            values: Integers, any shape (flattened in C order).

        Returns:
            (payload, bits): the bytes, and the stream's length in bits before the last
            byte's padding.

        Raises:
            CodecError: a value the codec cannot write.
        """

    @abstractmethod
    def decode(self, data: bytes, count: int) -> np.ndarray:
        """Decode one bitstream.

        Args:
            data: The payload bytes (from a peer: untrusted).
            count: How many values it holds.

        Returns:
            The count values as an int64 array.

        Raises:
            CodecError: data is not a valid stream of exactly `count` values.
        """

    @abstractmethod
    def smooth_bits(self, y: torch.Tensor) -> torch.Tensor:
        """A differentiable stand-in for each element's code length (the `codelength`
        rate loss).

        Args:
            y: ``z_hat / delta`` shaped (..., D), one message per row.

        Returns:
            Bits per element, shaped like y, differentiable in y.
        """

    def options(self) -> dict:
        """What rebuilds this codec.

        Returns:
            The options dict: ``get(codec.name, **codec.options())`` is the same codec.
        """
        return {}
