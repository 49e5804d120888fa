"""Desync and link faults: validated, numbered, applied live by the broker.

Clock faults (skew, drift) are sent to the target agent's clock object; sync faults
(beacon-loss, stale-seed) filter the sync service's beacons on their way to the agent;
link faults (delay, drop, duplicate, reorder) act on agent messages in the broker's
delivery path, on one link ("agent-0>agent-1"), every link into or out of one agent
("agent-1"), or all ("*"). Modelled on Toxiproxy's named, removable "toxics".
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from .protocol import clip, shown

CLOCK_KINDS = ("skew", "drift")
SYNC_KINDS = ("beacon-loss", "stale-seed")
LINK_KINDS = ("delay", "drop", "duplicate", "reorder")
KINDS = CLOCK_KINDS + SYNC_KINDS + LINK_KINDS

MAX_SKEW = 10**6  # steps (logical clocks) or milliseconds (wall clocks)
MAX_DRIFT_PPM = 10**6
MAX_DELAY_MS = 60_000
MAX_REORDER = 1000
MAX_BEACONS = 10**6
MAX_FAULTS = 256  # active at once: the table is walked for every agent-message copy


class FaultError(ValueError):
    """A fault request that cannot be applied; nothing was changed."""


@dataclass
class Fault:
    id: int
    kind: str
    target: str  # agent-K, a link "agent-J>agent-K", or "*"
    value: float = 0.0  # steps/ms, ppm, ms, probability, window or beacon count
    step: int | None = None  # world step when applied
    remaining: int | None = None  # beacon-loss: beacons still to drop

    def as_dict(self) -> dict:
        return asdict(self)

    def matches_agent(self, agent: str) -> bool:
        return self.target == agent

    def matches_link(self, src: str, dst: str) -> bool:
        return self.target in ("*", src, dst, f"{src}>{dst}")


def _number(req: dict, name: str) -> float:
    v = req.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise FaultError(f"{name} must be a number, got {clip(repr(v))}")
    return float(v)


@dataclass
class FaultTable:
    faults: dict[int, Fault] = field(default_factory=dict)
    next_id: int = 1
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def validate(self, req: dict, agents: set[str]) -> Fault:
        """A Fault for this request (not yet added), or FaultError saying what is wrong."""
        kind = req.get("kind")
        if kind not in KINDS:
            raise FaultError(f"unknown fault kind {clip(repr(kind))}; choose one of {', '.join(KINDS)}")
        target = req.get("target", "*")
        if not isinstance(target, str):
            raise FaultError("target must be a string")
        if kind in CLOCK_KINDS + SYNC_KINDS:
            if target not in agents:
                raise FaultError(f"unknown agent {shown(target)}; connected agents: {', '.join(sorted(agents)) or 'none'}")
        elif target != "*":
            ends = target.split(">")
            if len(ends) > 2 or any(e not in agents for e in ends):
                raise FaultError(f"unknown agent or link {shown(target)}; use agent-K, agent-J>agent-K or *")
        value, remaining = 0.0, None
        if kind == "skew":
            value = _number(req, "value")
            if abs(value) > MAX_SKEW or value != int(value):
                raise FaultError(f"skew must be a whole number within +-{MAX_SKEW}")
        elif kind == "drift":
            value = _number(req, "value")
            if abs(value) > MAX_DRIFT_PPM:
                raise FaultError(f"drift must be within +-{MAX_DRIFT_PPM} ppm")
        elif kind == "beacon-loss":
            value = _number(req, "value") if req.get("value") is not None else 1
            if not 1 <= value <= MAX_BEACONS or value != int(value):
                raise FaultError(f"beacon count must be a whole number in 1..{MAX_BEACONS}")
            remaining = int(value)
        elif kind == "delay":
            value = _number(req, "value")
            if not 0 <= value <= MAX_DELAY_MS:
                raise FaultError(f"delay must be 0..{MAX_DELAY_MS} ms")
        elif kind in ("drop", "duplicate"):
            value = _number(req, "value")
            if not 0 <= value <= 1:
                raise FaultError(f"{kind} probability must be within 0..1, got {value}")
        elif kind == "reorder":
            value = _number(req, "value")
            if not 2 <= value <= MAX_REORDER or value != int(value):
                raise FaultError(f"reorder window must be a whole number in 2..{MAX_REORDER}")
        return Fault(self.next_id, kind, target, value, remaining=remaining)

    def add(self, fault: Fault, step: int | None) -> Fault:
        if len(self.faults) >= MAX_FAULTS:
            raise FaultError(f"{MAX_FAULTS} faults are active already; clear some first")
        fault.step = step
        self.faults[fault.id] = fault
        self.next_id = max(self.next_id, fault.id + 1)
        return fault

    def clear(self, fault_id: int | None) -> list[Fault]:
        """Remove one fault (or all with None); FaultError for an unknown id."""
        if fault_id is None:
            gone = list(self.faults.values())
            self.faults.clear()
            return gone
        if fault_id not in self.faults:
            raise FaultError(f"no fault with id {fault_id}; active: {sorted(self.faults) or 'none'}")
        return [self.faults.pop(fault_id)]

    def of_kind(self, *kinds: str):
        return [f for f in self.faults.values() if f.kind in kinds]

    def clock_of(self, agent: str) -> dict:
        """The clock an agent should run: total skew and drift of its clock faults."""
        fs = [f for f in self.of_kind(*CLOCK_KINDS) if f.matches_agent(agent)]
        return {"skew": sum(f.value for f in fs if f.kind == "skew"),
                "drift_ppm": sum(f.value for f in fs if f.kind == "drift")}

    def blocks_beacon(self, agent: str) -> bool:
        """Whether a beacon to `agent` is lost; counts down beacon-loss faults."""
        for f in self.of_kind(*SYNC_KINDS):
            if not f.matches_agent(agent):
                continue
            if f.kind == "stale-seed":
                return True
            if f.remaining:
                f.remaining -= 1
                if f.remaining == 0:
                    del self.faults[f.id]
                return True
        return False

    def link_plan(self, src: str, dst: str) -> tuple[int, float]:
        """(copies, delay in seconds) for one agent message on src>dst; 0 copies: dropped."""
        copies, delay = 1, 0.0
        if not self.faults:  # the common case, on every message copy
            return copies, delay
        for f in self.of_kind(*LINK_KINDS):
            if not f.matches_link(src, dst):
                continue
            if f.kind == "drop" and self.rng.random() < f.value:
                return 0, 0.0
            if f.kind == "duplicate" and self.rng.random() < f.value:
                copies += 1
            if f.kind == "delay":
                delay += f.value / 1000
        return copies, delay

    def reorder_window(self, src: str, dst: str) -> int:
        if not self.faults:
            return 1
        return max([int(f.value) for f in self.of_kind("reorder") if f.matches_link(src, dst)], default=1)

    def listing(self) -> list[dict]:
        return [f.as_dict() for f in sorted(self.faults.values(), key=lambda f: f.id)]
