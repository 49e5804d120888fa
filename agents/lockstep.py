"""What world and agents exchange each step besides agent messages: one place for both
sides. Observations go as float32 channel frames, actions as Rice-coded integers, both
stamped with the full world step; control (join, config, end, stats) as msgpack maps."""

from __future__ import annotations

import numpy as np

from broker import protocol
# this exchange's control ops are in the protocol's one table of ops; world and agents
# read them here, beside the frames they travel with
from broker.protocol import AGENT_STATS, CONFIG, END, HELLO, JOIN, READY  # noqa: F401
from channel import ChannelError, codecs, frame

# the longest a role waits on its socket mid-step without asking whether to stop: a
# stopped run (or a dead parent) must not wait out a step deadline of seconds
STOP_POLL_S = 0.05

_F32 = codecs.get("float32")
_RICE = codecs.get("rice")


def pack_obs(step: int, obs: np.ndarray, first: np.ndarray) -> list[bytes]:
    """Every agent's frame from obs (B, N, obs_dim): its observations (B, obs_dim) plus a
    first-step-of-episode flag column. One array for all agents, laid out agent by agent."""
    batch, n, dim = obs.shape
    body = np.empty((n, batch, dim + 1), dtype=np.float32)
    body[:, :, :dim] = obs.transpose(1, 0, 2)
    body[:, :, dim] = first
    data = _F32.encode(body)  # one encode: agent k's payload is its slice
    size = len(data) // n
    return [frame.pack(kind=frame.Kind.OBSERVATION, sender=protocol.WORLD_SENDER, codec=_F32.wire_id, count=body[k].size,
                       payload=data[size * k:size * (k + 1)], stamp_mode=frame.StampMode.FULL, stamp=step)
            for k in range(n)]


def unpack_obs(f: frame.Frame, batch: int, obs_dim: int) -> tuple[int, np.ndarray, np.ndarray]:
    if f.kind != frame.Kind.OBSERVATION or f.stamp_mode != frame.StampMode.FULL:
        raise ChannelError("not an observation frame")
    if f.codec != _F32.wire_id or f.count != batch * (obs_dim + 1):
        raise ChannelError(f"observation frame of {f.count} values; expected {batch * (obs_dim + 1)}")
    body = _F32.decode(f.payload, f.count).reshape(batch, obs_dim + 1)
    return f.stamp, body[:, :obs_dim], body[:, obs_dim] > 0.5


def pack_actions(sender: int, step: int, actions: np.ndarray) -> bytes:
    return frame.pack(kind=frame.Kind.ACTION, sender=sender, codec=_RICE.wire_id, count=actions.size,
                      payload=_RICE.encode(actions), stamp_mode=frame.StampMode.FULL, stamp=step)


def unpack_actions(f: frame.Frame, batch: int, n_actions: int) -> np.ndarray:
    if f.kind != frame.Kind.ACTION or f.stamp_mode != frame.StampMode.FULL or f.count != batch:
        raise ChannelError("not an action frame for this batch")
    a = _RICE.decode(f.payload, f.count)
    if a.size and (a.min() < 0 or a.max() >= n_actions):
        raise ChannelError(f"actions outside 0..{n_actions - 1}")
    return a
