"""The message path: z -> (z_hat, frame bytes) at the sender; frame bytes -> z_hat at a
receiver. The networked agent, the in-process runner and the trainer all call these, so
they produce the same bits and the same z_hat.

The sync mode decides what the frame carries so the receiver finds the sender's noise:
`implicit` nothing (the receiver's own clock view), `stamped` the full step,
`checked:K` its K low bits, resolved within +-2**(K-1) of the receiver's view;
`healing:K` the full step only when the sender's clock jumped (a skew, a drift step, a
beacon's correction), on its first messages and on every K-th step as a re-anchor, and
nothing otherwise: the receiver anchors on each stamp and counts its own lockstep ticks
from there, so a skew of any size costs one stamped frame instead of a stamp a message.
A healing agent also asks the sync service for the epoch once its clock passes a
rotation no beacon announced (agents/agent.py), which a stamp alone cannot heal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from channel import ChannelError, codecs, frame
from channel.codecs import Codec
from channel.frame import StampMode, resolve_low_stamp
from channel.torch import DDCL


@dataclass(frozen=True)
class SyncMode:
    stamp: StampMode = StampMode.NONE
    bits: int = 0
    every: int = 0  # healing: re-anchor period K in steps; 0 for the other modes

    @classmethod
    def parse(cls, text: str) -> "SyncMode":
        if text == "implicit":
            return cls()
        if text == "stamped":
            return cls(StampMode.FULL)
        if text.startswith("checked:") and text[8:].isdigit() and 1 <= int(text[8:]) <= frame.MAX_STAMP_BITS:
            return cls(StampMode.LOW, int(text[8:]))
        if text.startswith("healing:") and text[8:].isdigit() and 1 <= int(text[8:]) <= MAX_HEAL_EVERY:
            return cls(StampMode.FULL, every=int(text[8:]))
        raise ValueError(f"sync mode must be implicit, stamped, checked:K (1 <= K <= {frame.MAX_STAMP_BITS}) "
                         f"or healing:K (1 <= K <= {MAX_HEAL_EVERY}), got {text!r}")

    def __str__(self) -> str:
        if self.every:
            return f"healing:{self.every}"
        return {StampMode.NONE: "implicit", StampMode.FULL: "stamped"}.get(self.stamp, f"checked:{self.bits}")


MAX_HEAL_EVERY = 1 << 20  # steps between re-anchors: beyond a long run's length
# healing: a sender's first messages are all stamped. A run's first step is its slowest
# (every process still warming up), and a peer that missed its first frame would have no
# anchor until the K-th step: 40 steps of tj-easy decoded off at -64 skew, networked
STARTUP_STAMPS = 8


@dataclass
class Anchors:
    """healing: what each end remembers. The sender its last clock view (a jump means a
    stamp); the receiver, per sender, the last stamped step and its own tick then."""

    last_view: int | None = None
    sent: int = 0
    at: dict[int, tuple[int, int]] = field(default_factory=dict)  # sender -> (stamped step, receiver tick)

    def must_stamp(self, view: int, every: int) -> bool:
        jumped = self.last_view is None or view != self.last_view + 1
        self.last_view, self.sent = view, self.sent + 1
        return jumped or view % every == 0 or self.sent <= STARTUP_STAMPS

    def resolve(self, sender: int, stamp: int | None, tick: int, own_step: int) -> int:
        """The sender's step: its stamp (anchoring on it), else the anchor moved on by the
        ticks since, else (nothing heard stamped yet) the receiver's own view."""
        if stamp is not None:
            self.at[sender] = (stamp, tick)
            return stamp
        if sender in self.at:
            step, then = self.at[sender]
            return step + tick - then
        return own_step


@dataclass
class MessageChannel:
    """The frames around each sender's DDCL layer: the layer quantizes and encodes (the
    same layer the trainer backpropagates through), the frame carries what the sync
    mode lets a receiver know of the sender's step."""

    layers: list[DDCL]  # per sender: its step, codec and noise stream
    sync: SyncMode = SyncMode()
    anchors: Anchors = field(default_factory=Anchors)  # healing only

    @classmethod
    def build(cls, coders: list[Codec], dim: int, delta, run_seed: int, sync: SyncMode = SyncMode()):
        """One layer per sender, each with its own codec (a checkpoint's per-agent range
        models); `delta` one step for all, or a list of each sender's (learned) step."""
        deltas = delta if isinstance(delta, list) else [delta] * len(coders)
        return cls([DDCL(dim, delta=d, codec=c, run_seed=run_seed) for c, d in zip(coders, deltas)], sync)

    @classmethod
    def from_checkpoint(cls, spec: dict | None, codec: str, n: int, dim: int, delta: float, run_seed: int,
                        sync: SyncMode = SyncMode()):
        """The message path a checkpoint's policies were trained with, from its codec spec
        (`load_checkpoint` checked it): its range models where the run codes with `range`,
        its learned steps (per sender, per dimension) whatever the codec, else `delta`."""
        spec = spec or {}
        models = spec.get("models")
        coders = [codecs.get("range", model=m) for m in models] if models and codec == "range" else \
            [codecs.get(codec)] * n
        return cls.build(coders, dim, spec.get("deltas") or delta, run_seed, sync)

    def speak(self, z: torch.Tensor, sender: int, step: int, seed: int) -> tuple[np.ndarray, bytes, int]:
        """Quantize and encode one message batch (B, D) -> (z_hat on the CPU, frame, payload bits)."""
        # the layer's numpy path, whatever z's device: m goes to the codec on the CPU anyway,
        # and a message is a few values, where each torch op costs more than its arithmetic.
        # It is the layer's forward, bit for bit (tests/test_layer.py).
        layer = self.layers[sender]
        z_hat, m, payload, nbits = layer.encode(z, step, sender, seed)
        stamp = self.sync.stamp
        if self.sync.every and not self.anchors.must_stamp(step, self.sync.every):
            stamp = StampMode.NONE
        data = frame.pack(kind=frame.Kind.MESSAGE, sender=sender, codec=layer.codec.wire_id, count=m.size,
                          payload=payload, stamp_mode=stamp, stamp=step, stamp_bits=self.sync.bits)
        return z_hat, data, nbits

    def hear(self, data: bytes, own_step: int, seed_for: Callable[[int], int], shape, tick: int | None = None):
        """Decode a peer's frame with noise regenerated here -> (sender, z_hat, (step, seed) used).
        tick: the receiver's lockstep step, which a faulty clock does not move (healing
        counts from its anchors in it); default own_step."""
        f = frame.unpack(data)
        if f.kind != frame.Kind.MESSAGE or f.sender >= len(self.layers) or f.count != shape[0] * shape[1]:
            raise ChannelError(f"unexpected message: kind {f.kind}, sender {f.sender}, count {f.count}")
        layer = self.layers[f.sender]
        allowed = (self.sync.stamp, StampMode.NONE) if self.sync.every else (self.sync.stamp,)
        if f.codec != layer.codec.wire_id or f.stamp_mode not in allowed:
            raise ChannelError(f"message from {f.sender} has codec {f.codec}, stamp {f.stamp_mode}")
        if self.sync.every:
            step = self.anchors.resolve(f.sender, f.stamp if f.stamp_mode == StampMode.FULL else None,
                                        own_step if tick is None else tick, own_step)
        elif f.stamp_mode == StampMode.FULL:
            step = f.stamp
        elif f.stamp_mode == StampMode.LOW:
            step = resolve_low_stamp(f.stamp, f.stamp_bits, own_step)
        else:
            step = own_step
        seed = seed_for(step)
        return f.sender, layer.decode(f.payload, shape, step, f.sender, seed), (step, seed)
