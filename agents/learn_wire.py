"""What the learning world and the learner processes exchange besides today's lockstep
traffic (observations, agent messages, actions: agents/lockstep.py), packed and parsed
in one place. Everything parsed here came from the network: a defect raises WireError
(a ChannelError), never anything else, and no size is taken from the sender unchecked.

Per update, after the rollout's cfg.rollout lockstep steps:

    world -> learner k    ADVANTAGE  {update, adv: (T, B) float32 bytes}
    learner j -> k        GRADIENT frame (channel frame kind 3): dL_j/dz_hat_k, (T, B, D)
    learner k -> world    NORMS      {update, norms: per-parameter gradient norms, probe:
                                     decodes and desynced decodes, and with the desync
                                     probe the cosine per peer (agents/learn_desync.py)}
    world -> learners     CLIP       {update, total_norm}: every party clips by it
    learner k -> peers    PRIOR      {update, logits}: its learned range model, where the
                                     wire codec is `range` with a learned prior
    world -> learner      STATE?     -> STATE {tensors}: its policy and prior, for an
                                     evaluation or the checkpoint

When a learner rejoins mid-run (killed and restarted) or the broker restarts, the world
voids the update under way (learning_world.py): ROLLBACK {to, round} to every learner
(resent each second until answered), each restores its state saved after update `to`
and answers ROLLED {round}, then RESUME {round} to all, and the world redoes update
to + 1 from fresh episodes.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch

from broker import protocol
# this exchange's control ops are in the protocol's one table of ops (JOIN / READY /
# HELLO / END are lockstep's); learners and the learning world read them here
from broker.protocol import ADVANTAGE, CLIP, LEARNER_STATS, PRIOR, RESUME, ROLLBACK, ROLLED, STATE, STATE_ASK  # noqa: F401
from broker.protocol import GRAD_NORMS as NORMS, LEARN_CONFIG as CONFIG  # noqa: F401
from channel import ChannelError, codecs, frame
from channel.noise import DOMAIN_GRADIENT, NoiseKey, uniform_numpy
from channel.quantizer import dequantize_numpy, quantize_numpy

# Gradient payloads. float32 / float16: little-endian IEEE floats, the frame's codec field
# float32's id for both (raw floats), the run's --grad-codec says the width, checked
# against the length. ddcl: the chunk's largest magnitude s (a float32), then the values
# DDCL-quantized with step s / DDCL_LEVELS and a dither both ends draw (DOMAIN_GRADIENT),
# Rice-coded; subtractive dither keeps the gradient unbiased, its error within step / 2.
FLOAT_WIDTHS = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
GRAD_CODECS = (*FLOAT_WIDTHS, "ddcl")
DDCL_LEVELS = 64  # the chunk's largest value sits at level 64: a relative step of 1/64
_F16_MAX = float(np.finfo(np.float16).max)
_F32_ID = frame.CODEC_IDS["float32"]
_RICE = codecs.get("rice")
_SCALE = struct.Struct("<f")
# a gradient's dither counter: (update, speaker, chunk) in one 64-bit step
_SPEAKER_SHIFT, _UPDATE_SHIFT = 20, 28
MAX_TENSORS = 64  # a policy's and a prior's named tensors: a few dozen at most
# values per gradient frame: 1 MiB of float32, well under the broker's message limit
# (4 MiB by default); a rollout's gradient goes in frames of whole steps, in step order
GRAD_FRAME_VALUES = 1 << 18
MAX_PENDING_GRADIENT_FRAMES = 1024  # a learner holds at most this many unread from one peer
MAX_NAME = 64


class WireError(ChannelError):
    """A learning message that is malformed, out of bounds or not the one expected."""


def gradient_chunks(steps: int, per_step: int) -> list[int]:
    """Steps in each gradient frame of a rollout: whole steps, at most GRAD_FRAME_VALUES
    values a frame unless one step alone holds more (up to frame.MAX_COUNT)."""
    if per_step > frame.MAX_COUNT:
        raise WireError(f"one step's gradient is {per_step} values; a frame holds {frame.MAX_COUNT} "
                        "(lower --batch or --msg-dim)")
    size = max(1, GRAD_FRAME_VALUES // per_step)
    return [min(size, steps - t) for t in range(0, steps, size)]


class GradCodec:
    """How one run's gradients travel: the codec, and the run seed that keys the ddcl
    codec's dither (both ends know it from the run's config)."""

    def __init__(self, name: str, run_seed: int = 0):
        if name not in GRAD_CODECS:
            raise WireError(f"unknown gradient codec {str(name)[:MAX_NAME]!r}")
        self.name, self.run_seed = name, run_seed
        # the frame's codec field: Rice for ddcl's integers, float32's id for raw floats of either width
        self.wire_id = _RICE.wire_id if name == "ddcl" else _F32_ID

    def _dither(self, n: int, listener: int, speaker: int, update: int, chunk: int) -> np.ndarray:
        step = (update << _UPDATE_SHIFT) | (speaker << _SPEAKER_SHIFT) | chunk
        return uniform_numpy(n, NoiseKey(self.run_seed, 0, listener), step, DOMAIN_GRADIENT)

    def frames(self, listener: int, speaker: int, update: int, grad: torch.Tensor) -> list[bytes]:
        """dL/dz_hat of one speaker's messages of one update, (T, B, D), as the frames
        `gradient_chunks` sizes, in step order."""
        t, per_step = grad.shape[0], math.prod(grad.shape[1:])
        starts = np.cumsum([0] + gradient_chunks(t, per_step))
        return [self.pack(listener, speaker, update, k, grad[a:b])
                for k, (a, b) in enumerate(zip(starts[:-1], starts[1:]))]

    def pack(self, listener: int, speaker: int, update: int, chunk: int, grad: torch.Tensor) -> bytes:
        """One frame of gradient from `listener`, stamped with the update. float16
        saturates at its largest finite value (beyond it would be infinity, which the
        receiver refuses)."""
        values = grad.detach().to("cpu", torch.float32).numpy().reshape(-1)
        if self.name == "ddcl":
            scale = float(np.abs(values).max(initial=0.0))
            if scale > 0:
                u = self._dither(values.size, listener, speaker, update, chunk)
                _, m = quantize_numpy(values, np.float32(scale) / DDCL_LEVELS, u)
            else:
                m = np.zeros(values.size, dtype=np.int64)
            payload = _SCALE.pack(scale) + _RICE.encode(m)
        else:
            if self.name == "float16":
                values = np.clip(values, -_F16_MAX, _F16_MAX)
            payload = values.astype(FLOAT_WIDTHS[self.name]).tobytes()
        return frame.pack(kind=frame.Kind.GRADIENT, sender=listener, codec=self.wire_id, count=values.size,
                          payload=payload, stamp_mode=frame.StampMode.FULL, stamp=update)

    def unpack(self, data: bytes, speaker: int, update: int, chunk: int, shape: tuple[int, ...]) -> tuple[int, np.ndarray]:
        """-> (listener, float32 array shaped `shape`) of chunk `chunk` of a gradient frame
        for this speaker's messages of `update`."""
        f = frame.unpack(data)
        if f.kind != frame.Kind.GRADIENT or f.stamp_mode != frame.StampMode.FULL or f.codec != self.wire_id:
            raise WireError(f"not a {self.name} gradient frame: kind {f.kind}, stamp {f.stamp_mode}, codec {f.codec}")
        if f.stamp != update:
            raise WireError(f"gradient for update {f.stamp}, expected {update}")
        if f.count != math.prod(shape):
            raise WireError(f"gradient of {f.count} values; expected {math.prod(shape)}")
        if self.name == "ddcl":
            values = self._dequantize(f, speaker, update, chunk)
        else:
            dtype = FLOAT_WIDTHS[self.name]
            if len(f.payload) != f.count * dtype.itemsize:
                raise WireError(f"gradient of {f.count} values in {len(f.payload)} bytes; expected {self.name}")
            values = np.frombuffer(f.payload, dtype=dtype).astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise WireError("gradient holds NaN or infinity")
        return f.sender, values.reshape(shape)

    def _dequantize(self, f: frame.Frame, speaker: int, update: int, chunk: int) -> np.ndarray:
        if len(f.payload) < _SCALE.size:
            raise WireError("a ddcl gradient frame holds no scale")
        (scale,) = _SCALE.unpack_from(f.payload)
        if not (math.isfinite(scale) and scale >= 0):
            raise WireError(f"a ddcl gradient's scale must be finite and non-negative, got {scale!r}")
        m = _RICE.decode(f.payload[_SCALE.size:], f.count)  # a CodecError is a ChannelError
        if m.size and int(np.abs(m).max()) > DDCL_LEVELS + 1:  # |g| <= scale and |u| <= 1/2
            raise WireError(f"a ddcl gradient level beyond {DDCL_LEVELS + 1}")
        if scale == 0:
            return np.zeros(f.count, dtype=np.float32)
        u = self._dither(f.count, f.sender, speaker, update, chunk)
        return dequantize_numpy(m, np.float32(scale) / DDCL_LEVELS, u)


def unpack_rollback(body: bytes) -> tuple[int, int]:
    """ROLLBACK -> (the update to go back to, the round)."""
    req = parse(body, ROLLBACK)
    to, rnd = field(req, "to", int), field(req, "round", int)
    if not (0 <= to < 1 << 40 and 0 < rnd < 1 << 40):
        raise WireError(f"rollback to update {to} in round {rnd}")
    return to, rnd


def field(req, name: str, kind):
    if not isinstance(req, dict):
        raise WireError(f"a learning message is a map, got {type(req).__name__}")
    value = req.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise WireError(f"{req.get('op')!r}: field {name!r} must be {getattr(kind, '__name__', kind)}, "
                        f"got {type(value).__name__}")
    return value


def parse(body: bytes, op: str, update: int | None = None) -> dict:
    """A control body that must be `op` (for `update`, where given)."""
    try:
        req = protocol.unpack(body)
    except Exception as e:  # msgpack raises a zoo of types on bad input
        raise WireError(f"not a msgpack map: {type(e).__name__}") from None
    if field(req, "op", str) != op:
        raise WireError(f"expected {op!r}, got {protocol.clip(str(req.get('op')))!r}")
    if update is not None and field(req, "update", int) != update:
        raise WireError(f"{op!r} for update {req['update']}, expected {update}")
    return req


def op_of(body: bytes) -> str | None:
    """The op of a control body, or None for anything that is not a map with a text op."""
    try:
        req = protocol.unpack(body)
    except Exception:
        return None
    return req.get("op") if isinstance(req, dict) and isinstance(req.get("op"), str) else None


def _floats(raw, count: int, what: str) -> np.ndarray:
    if not isinstance(raw, bytes) or len(raw) != 4 * count:
        raise WireError(f"{what}: {count} float32 values need {4 * count} bytes")
    values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise WireError(f"{what} holds NaN or infinity")
    return values


def pack_advantage(update: int, adv: torch.Tensor) -> bytes:
    return protocol.pack({"op": ADVANTAGE, "update": update,
                   "adv": adv.detach().to("cpu", torch.float32).numpy().astype("<f4").tobytes()})


def unpack_advantage(body: bytes, update: int, shape: tuple[int, int]) -> np.ndarray:
    req = parse(body, ADVANTAGE, update)
    return _floats(req.get("adv"), math.prod(shape), "advantages").reshape(shape)


def gradient_bias(sent: torch.Tensor, ideal: torch.Tensor) -> dict:
    """Per peer (the last axis but one of (T, B, peers, D) gradients): the cosine between
    the gradient sent and the synchronized listener's, and the ratio of their norms
    (None where either is zero)."""
    cos, ratio = [], []
    for slot in range(sent.shape[2]):
        a, b = sent[:, :, slot].reshape(-1).double(), ideal[:, :, slot].reshape(-1).double()
        na, nb = float(a.norm()), float(b.norm())
        ok = na > 0 and nb > 0
        cos.append(max(-1.0, min(1.0, float(a @ b) / (na * nb))) if ok else None)
        ratio.append(na / nb if ok else None)
    return {"cos": cos, "ratio": ratio}


def pack_norms(update: int, norms: list[torch.Tensor], rate_bits: float, wire_bits: float,
               probe: dict | None = None) -> bytes:
    """Per-parameter gradient norms (float32 as Python floats: exact, so the world's total
    is the in-process one), with the update's mean rate-loss and real bits per message
    for the progress line, and what the desync probe saw."""
    return protocol.pack({"op": NORMS, "update": update, "norms": [float(n) for n in norms], "rate_bits": rate_bits,
                   "wire_bits": wire_bits, "probe": probe or {"decodes": 0, "desynced": 0}})


def _probe(req: dict, peers: int) -> dict:
    probe = field(req, "probe", dict)
    decodes, desynced = field(probe, "decodes", int), field(probe, "desynced", int)
    if not 0 <= desynced <= decodes <= 1 << 40:
        raise WireError(f"probe: {desynced} desynced of {decodes} decodes")
    out = {"decodes": decodes, "desynced": desynced}
    for name, low, high in (("cos", -1.0, 1.0), ("ratio", 0.0, math.inf)):
        if name not in probe:
            continue
        values = probe[name]
        if not (isinstance(values, list) and len(values) == peers and all(
                v is None or (isinstance(v, float) and low <= v <= high) for v in values)):
            raise WireError(f"probe {name}: expected {peers} floats in [{low}, {high}] or nil")
        out[name] = values
    return out


def unpack_norms(body: bytes, update: int, count: int, peers: int = 1) -> tuple[list[float], float, float, dict]:
    req = parse(body, NORMS, update)
    norms = field(req, "norms", list)
    if len(norms) != count or not all(isinstance(n, float) and math.isfinite(n) and n >= 0 for n in norms):
        raise WireError(f"gradient norms: expected {count} finite non-negative floats")
    return norms, field(req, "rate_bits", float), field(req, "wire_bits", float), _probe(req, peers)


def pack_clip(update: int, total_norm: float) -> bytes:
    return protocol.pack({"op": CLIP, "update": update, "total_norm": total_norm})


def unpack_clip(body: bytes, update: int) -> float:
    """The global gradient norm every party clips by (torch.nn.utils.clip_grads_with_norm_)."""
    total = field(parse(body, CLIP, update), "total_norm", float)
    if not (math.isfinite(total) and total >= 0):
        raise WireError(f"total gradient norm must be finite and non-negative, got {total!r}")
    return total


def pack_tensors(op: str, tensors: dict[str, torch.Tensor], **fields) -> bytes:
    """Named float32 tensors (a state dict), as (shape, little-endian bytes) pairs."""
    return protocol.pack({"op": op, **fields, "tensors": {
        name: [list(t.shape), t.detach().to("cpu", torch.float32).numpy().astype("<f4").tobytes()]
        for name, t in tensors.items()}})


def unpack_tensors(req: dict, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a parsed `pack_tensors` map, which must have exactly the names and
    shapes of `like` (this side's own copy): nothing is allocated from the sender's word."""
    got = field(req, "tensors", dict)
    if len(got) > MAX_TENSORS or set(got) != set(like):
        raise WireError(f"tensors {sorted(map(str, got))[:MAX_TENSORS]} do not match {sorted(like)}")
    out = {}
    for name, mine in like.items():
        entry = got[name]
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == list(mine.shape)):
            raise WireError(f"tensor {name!r}: expected shape {list(mine.shape)}")
        out[name] = torch.from_numpy(_floats(entry[1], mine.numel(), name).reshape(mine.shape))
    return out
