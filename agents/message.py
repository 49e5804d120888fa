"""The message path: z -> (z_hat, frame bytes) at the sender; frame bytes -> z_hat at a
receiver. The networked agent, the in-process runner and the trainer all call these, so
they produce the same bits and the same z_hat.

The sync mode decides what the frame carries so the receiver finds the sender's noise:
`implicit` nothing (the receiver's own clock view), `stamped` the full step,
`checked:K` its K low bits, resolved within +-2**(K-1) of the receiver's view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from channel import ChannelError, frame
from channel.codecs import Codec
from channel.frame import StampMode, resolve_low_stamp
from channel.torch import DDCL


@dataclass(frozen=True)
class SyncMode:
    stamp: StampMode = StampMode.NONE
    bits: int = 0

    @classmethod
    def parse(cls, text: str) -> "SyncMode":
        if text == "implicit":
            return cls()
        if text == "stamped":
            return cls(StampMode.FULL)
        if text.startswith("checked:") and text[8:].isdigit() and 1 <= int(text[8:]) <= frame.MAX_STAMP_BITS:
            return cls(StampMode.LOW, int(text[8:]))
        raise ValueError(f"sync mode must be implicit, stamped or checked:K (1 <= K <= {frame.MAX_STAMP_BITS}), got {text!r}")

    def __str__(self) -> str:
        return {StampMode.NONE: "implicit", StampMode.FULL: "stamped"}.get(self.stamp, f"checked:{self.bits}")


@dataclass
class MessageChannel:
    """The frames around each sender's DDCL layer: the layer quantizes and encodes (the
    same layer the trainer backpropagates through), the frame carries what the sync
    mode lets a receiver know of the sender's step."""

    layers: list[DDCL]  # per sender: its step, codec and noise stream
    sync: SyncMode = SyncMode()

    @classmethod
    def build(cls, codecs: list[Codec], dim: int, delta: float, run_seed: int, sync: SyncMode = SyncMode()):
        """One layer per sender, each with its own codec (a checkpoint's per-agent range models)."""
        return cls([DDCL(dim, delta=delta, codec=c, run_seed=run_seed) for c in codecs], sync)

    def speak(self, z: torch.Tensor, sender: int, step: int, seed: int) -> tuple[np.ndarray, bytes, int]:
        """Quantize and encode one message batch (B, D) -> (z_hat on the CPU, frame, payload bits)."""
        # the layer's numpy path, whatever z's device: m goes to the codec on the CPU anyway,
        # and a message is a few values, where each torch op costs more than its arithmetic.
        # It is the layer's forward, bit for bit (tests/test_layer.py).
        layer = self.layers[sender]
        z_hat, m, payload, nbits = layer.encode(z, step, sender, seed)
        data = frame.pack(kind=frame.Kind.MESSAGE, sender=sender, codec=layer.codec.wire_id, count=m.size,
                          payload=payload, stamp_mode=self.sync.stamp, stamp=step, stamp_bits=self.sync.bits)
        return z_hat, data, nbits

    def hear(self, data: bytes, own_step: int, seed_for: Callable[[int], int], shape):
        """Decode a peer's frame with noise regenerated here -> (sender, z_hat, (step, seed) used)."""
        f = frame.unpack(data)
        if f.kind != frame.Kind.MESSAGE or f.sender >= len(self.layers) or f.count != shape[0] * shape[1]:
            raise ChannelError(f"unexpected message: kind {f.kind}, sender {f.sender}, count {f.count}")
        layer = self.layers[f.sender]
        if f.codec != layer.codec.wire_id or f.stamp_mode != self.sync.stamp:
            raise ChannelError(f"message from {f.sender} has codec {f.codec}, stamp {f.stamp_mode}")
        if f.stamp_mode == StampMode.FULL:
            step = f.stamp
        elif f.stamp_mode == StampMode.LOW:
            step = resolve_low_stamp(f.stamp, f.stamp_bits, own_step)
        else:
            step = own_step
        seed = seed_for(step)
        return f.sender, layer.decode(f.payload, shape, step, f.sender, seed), (step, seed)
