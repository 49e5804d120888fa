"""Every byte the broker moves, split by direction, kind and link, and per lockstep step.

Kinds: `message` (agent DDCL messages from registered agents), `env` (observations and
actions), `control` (everything else the broker accepted). What it refused is counted on
lines of its own (REFUSED: from unregistered connections, over the size limit, malformed,
from ignored connections) and never in the kinds, so the per-step figures describe the
agents only. Agent messages keep the identity sent = delivered + dropped + rejected. Bytes are split into payload (codec bytes), header (channel header
plus command and address frames) and framing (ZMTP: 2 bytes per frame up to 255 bytes
of body, 9 above). Agent messages are also priced as raw float32 in the same pass.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass


from .protocol import zmtp_framing

DIRECTIONS = ("up", "down")  # up: peer -> broker, down: broker -> peer
KINDS = ("message", "env", "control", "gradient")  # gradient: learners' frames (agents/learn_wire.py)
REFUSED = ("unregistered", "oversize", "malformed", "ignored")


@dataclass
class Bytes:
    payload: int = 0
    header: int = 0
    framing: int = 0
    frames: int = 0  # ZeroMQ messages, not ZMTP frames

    @property
    def total(self) -> int:
        return self.payload + self.header + self.framing

    def add(self, payload: int, header: int, framing: int) -> None:
        self.payload += payload
        self.header += header
        self.framing += framing
        self.frames += 1

    def as_dict(self, per: float = 1.0) -> dict:
        d = {k: v / per for k, v in asdict(self).items() if k != "frames"}
        d["total"] = self.total / per
        return d


def parts_cost(parts: list[bytes], payload: int) -> tuple[int, int, int]:
    size = framing = 0
    for part in parts:  # a plain loop: two generator sums cost twice as much per message
        size += len(part)
        framing += zmtp_framing(len(part))
    return payload, size - payload, framing


class Accounting:
    def __init__(self):
        self.bytes = {d: {k: Bytes() for k in KINDS} for d in DIRECTIONS}
        self.float32 = {d: Bytes() for d in DIRECTIONS}  # agent messages priced as float32
        self.links: dict[str, dict[str, int]] = defaultdict(lambda: {"up": 0, "down": 0})
        self.messages = {"sent": 0, "delivered": 0, "dropped": 0, "rejected": 0}
        self.other = {"rejected": 0, "unknown_destination": 0, "dropped": 0}
        self.refused = {why: {"messages": 0, "bytes": 0} for why in REFUSED}
        self.steps = 0
        self.step = None  # last step the world announced
        self._mark = self._message_totals()
        self.last_step: dict = {}

    def record(self, direction: str, kind: str, link: str, parts: list[bytes], payload: int = 0) -> None:
        payload, header, framing = parts_cost(parts, payload)
        self.bytes[direction][kind].add(payload, header, framing)
        self.links[link][direction] += payload + header + framing

    def refuse(self, why: str, parts: list[bytes]) -> None:
        """A message the broker did not accept: counted on its reason's line, whole."""
        line = self.refused[why]
        line["messages"] += 1
        line["bytes"] += sum(parts_cost(parts, 0))

    def record_float32(self, direction: str, header: int, count: int) -> None:
        """An agent message of `count` values priced as float32 with the same header."""
        body = header + 4 * count
        self.float32[direction].add(4 * count, header, zmtp_framing(body))

    def _message_totals(self) -> dict:
        return {d: self.bytes[d]["message"].total for d in DIRECTIONS}

    def mark_step(self, step: int) -> None:
        now = self._message_totals()
        self.last_step = {d: now[d] - self._mark[d] for d in DIRECTIONS}
        self.last_step["total"] = sum(self.last_step.values())
        self._mark = now
        self.steps += 1
        self.step = step

    def snapshot(self) -> dict:
        per = max(self.steps, 1)

        def split(table) -> dict:
            out = {d: table[d].as_dict(per) for d in DIRECTIONS}
            out["sum"] = {k: out["up"][k] + out["down"][k] for k in out["up"]}
            return out

        return {
            "steps": self.steps,
            "step": self.step,
            "bytes_per_step": split({d: self.bytes[d]["message"] for d in DIRECTIONS}),
            "float32_bytes_per_step": split(self.float32),
            "by_kind_per_step": {k: split({d: self.bytes[d][k] for d in DIRECTIONS}) for k in KINDS},
            "totals": {d: {k: self.bytes[d][k].as_dict() for k in KINDS} for d in DIRECTIONS},
            "last_step_message_bytes": self.last_step,
            "links": dict(self.links),
            "messages": dict(self.messages),
            "other": dict(self.other),
            "refused": {why: dict(line) for why, line in self.refused.items()},
        }
