"""The message path: z -> (z_hat, frame bytes) at the sender; frame bytes -> z_hat at a
receiver. The networked agent, the in-process runner and the trainer's evaluation all
call these two functions, so they produce the same bits and the same z_hat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from channel import ChannelError, NoiseKey, dequantize_numpy, frame, quantize, uniform_numpy, uniform_torch
from channel.codecs import Codec


@dataclass
class MessageChannel:
    codec: Codec
    delta: float
    run_seed: int
    epoch_seed: int

    def key(self, sender: int) -> NoiseKey:
        return NoiseKey(self.run_seed, self.epoch_seed, sender)

    def speak(self, z: torch.Tensor, sender: int, step: int) -> tuple[torch.Tensor, bytes, int]:
        """Quantize and encode one message batch (B, D) -> (z_hat, frame, payload bits)."""
        u = uniform_torch(z.numel(), self.key(sender), step, device=z.device).view_as(z)
        z_hat, m = quantize(z, self.delta, u)
        payload, nbits = self.codec.encode_bits(m.detach().cpu().numpy().astype(np.int64).reshape(-1))
        data = frame.pack(kind=frame.Kind.MESSAGE, sender=sender, codec=self.codec.wire_id, count=z.numel(), payload=payload)
        return z_hat, data, nbits

    def hear(self, data: bytes, step: int, shape: tuple[int, int]) -> tuple[int, np.ndarray]:
        """Decode a peer's frame with noise regenerated from this receiver's step view."""
        f = frame.unpack(data)
        if f.kind != frame.Kind.MESSAGE or f.codec != self.codec.wire_id or f.count != shape[0] * shape[1]:
            raise ChannelError(f"unexpected message: kind {f.kind}, codec {f.codec}, count {f.count}")
        m = self.codec.decode(f.payload, f.count).reshape(shape)
        u = uniform_numpy(f.count, self.key(f.sender), step).reshape(shape)
        return f.sender, dequantize_numpy(m, np.float32(self.delta), u)
