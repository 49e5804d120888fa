"""What every codec offers: bytes out, values back, and a smooth length for training."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch


class Codec(ABC):
    name: str  # registry name
    wire_id: int  # the id frames carry (3 bits)

    def encode(self, values) -> bytes:
        return self.encode_bits(values)[0]

    @abstractmethod
    def encode_bits(self, values) -> tuple[bytes, int]:
        """(bytes, bit count before final padding) for one message."""

    @abstractmethod
    def decode(self, data: bytes, count: int) -> np.ndarray:
        """The `count` values in `data`; anything else raises CodecError."""

    @abstractmethod
    def smooth_bits(self, y: torch.Tensor) -> torch.Tensor:
        """A differentiable stand-in for each element's code length, y = z_hat / delta
        shaped (..., D): one message per row. Used by the `codelength` rate loss."""

    def options(self) -> dict:
        """The options that rebuild this codec with `channel.codecs.get`."""
        return {}
