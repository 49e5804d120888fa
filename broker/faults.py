"""Desync and link faults: validated, numbered, applied live by the broker.

Clock faults (skew, drift) are sent to the target agent's clock object; sync faults
(beacon-loss, stale-seed) filter the sync service's beacons on their way to the agent;
link faults act on agent messages in the broker's delivery path, on one link
("agent-0>agent-1"), every link into or out of one agent ("agent-1"), or all ("*").
Modelled on Toxiproxy's named, removable "toxics" and on tc-netem's link models:

    delay V        every copy V ms late           jitter V     +-V ms more, uniform
    drop P         lost with probability P        duplicate P  one copy more with probability P
    reorder W      W copies shuffled in a burst   partition    every copy lost, until cleared
    bandwidth V    V bits/s on the link: a copy waits its turn, and is lost if that
                   would take over MAX_QUEUE_S (the limited channel, made real)
    burst-loss P   Gilbert-Elliott: good -> bad with probability P a copy, bad -> good
                   with `r`; lost with `loss_bad` (default 1) in bad, `loss_good` (0) in good
    corrupt P      one payload bit flipped with probability P
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .protocol import clip, shown

CLOCK_KINDS = ("skew", "drift")
SYNC_KINDS = ("beacon-loss", "stale-seed")
LINK_KINDS = ("delay", "jitter", "drop", "duplicate", "reorder", "partition", "bandwidth", "burst-loss", "corrupt")
KINDS = CLOCK_KINDS + SYNC_KINDS + LINK_KINDS

MAX_SKEW = 10**6  # steps (logical clocks) or milliseconds (wall clocks)
MAX_DRIFT_PPM = 10**6
MAX_DELAY_MS = 60_000
MAX_REORDER = 1000
MAX_BEACONS = 10**6
MAX_FAULTS = 256  # active at once: the table is walked for every agent-message copy
MIN_BANDWIDTH, MAX_BANDWIDTH = 8.0, 1e10  # bits/s: a byte a second up to 10 Gbit/s
# a copy that would wait longer for its link is lost: a lockstep peer gave up on it long
# before (its wait is half the step deadline), and an unbounded queue is unbounded memory
MAX_QUEUE_S = 1.0
PROBABILITY_KINDS = ("drop", "duplicate", "burst-loss", "corrupt")
BURST_PARAMS = {"r": None, "loss_bad": 1.0, "loss_good": 0.0}  # name: default (None: required)


class FaultError(ValueError):
    """A fault request that cannot be applied; nothing was changed."""


@dataclass
class Fault:
    id: int
    kind: str
    target: str  # agent-K, a link "agent-J>agent-K", or "*"
    value: float = 0.0  # steps/ms, ppm, ms, probability, window, bits/s or beacon count
    step: int | None = None  # world step when applied
    remaining: int | None = None  # beacon-loss: beacons still to drop
    params: dict[str, float] | None = None  # burst-loss: r, loss_bad, loss_good

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


def _probability(req: dict, name: str, kind: str) -> float:
    v = _number(req, name)
    if not 0 <= v <= 1:
        raise FaultError(f"{kind} {name} must be a probability within 0..1, got {v}")
    return v


def _burst_params(req: dict) -> dict[str, float]:
    params = {}
    for name, default in BURST_PARAMS.items():
        if req.get(name) is None and default is not None:
            params[name] = default
        elif req.get(name) is None:
            raise FaultError(f"burst-loss needs {name}, the bad -> good probability a copy")
        else:
            params[name] = _probability(req, name, "burst-loss")
    return params


def flipped(data: bytes, bit: int) -> bytes:
    """`data` with one bit flipped (counted from the first byte's high bit): a corrupt
    link fault's copy."""
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


@dataclass(frozen=True)
class LinkPlan:
    """What happens to one agent-message copy on its link."""

    copies: int = 1  # 0: lost
    delay: float = 0.0  # seconds held before it goes
    flip: int | None = None  # corrupt: the payload bit to flip


@dataclass
class FaultTable:
    faults: dict[int, Fault] = field(default_factory=dict)
    next_id: int = 1
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    # per (fault id, src, dst): bandwidth's time the link is busy until; burst-loss's state
    busy_until: dict[tuple[int, str, str], float] = field(default_factory=dict)
    bad_state: dict[tuple[int, str, str], bool] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic  # the broker's delivery clock

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
        value, remaining, params = 0.0, None, None
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
        elif kind in ("delay", "jitter"):
            value = _number(req, "value")
            if not 0 <= value <= MAX_DELAY_MS:
                raise FaultError(f"{kind} must be 0..{MAX_DELAY_MS} ms")
        elif kind in PROBABILITY_KINDS:
            value = _probability(req, "value", kind)
            if kind == "burst-loss":
                params = _burst_params(req)
        elif kind == "bandwidth":
            value = _number(req, "value")
            if not MIN_BANDWIDTH <= value <= MAX_BANDWIDTH:
                raise FaultError(f"bandwidth must be {MIN_BANDWIDTH:g}..{MAX_BANDWIDTH:g} bits/s, got {value:g}")
        elif kind == "reorder":
            value = _number(req, "value")
            if not 2 <= value <= MAX_REORDER or value != int(value):
                raise FaultError(f"reorder window must be a whole number in 2..{MAX_REORDER}")
        return Fault(self.next_id, kind, target, value, remaining=remaining, params=params)

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
        elif fault_id not in self.faults:
            raise FaultError(f"no fault with id {fault_id}; active: {sorted(self.faults) or 'none'}")
        else:
            gone = [self.faults.pop(fault_id)]
        for state in (self.busy_until, self.bad_state):  # a link state dies with its fault
            for key in [k for k in state if k[0] not in self.faults]:
                del state[key]
        return gone

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

    def link_plan(self, src: str, dst: str, wire_bytes: int = 0, payload_bytes: int = 0) -> LinkPlan:
        """What happens to one agent message of `wire_bytes` on src>dst."""
        if not self.faults:  # the common case, on every message copy
            return LinkPlan()
        copies, delay, flip = 1, 0.0, None
        for f in self.of_kind(*LINK_KINDS):
            if not f.matches_link(src, dst):
                continue
            if f.kind == "partition" or (f.kind == "drop" and self.rng.random() < f.value):
                return LinkPlan(0)
            if f.kind == "burst-loss" and self._burst_lost(f, src, dst):
                return LinkPlan(0)
            if f.kind == "duplicate" and self.rng.random() < f.value:
                copies += 1
            if f.kind == "delay":
                delay += f.value / 1000
            if f.kind == "jitter":
                delay += self.rng.uniform(-f.value, f.value) / 1000
            if f.kind == "corrupt" and payload_bytes and self.rng.random() < f.value:
                flip = self.rng.randrange(8 * payload_bytes)
        delay = max(delay, 0.0)
        for f in self.of_kind("bandwidth"):  # last: the copies that survived take their turn
            if f.matches_link(src, dst):
                wait = self._queued(f, src, dst, copies * wire_bytes)
                if wait is None:
                    return LinkPlan(0)
                delay += wait
        return LinkPlan(copies, delay, flip)

    def _burst_lost(self, f: Fault, src: str, dst: str) -> bool:
        """Gilbert-Elliott: move the link's state a copy on, then lose at its rate."""
        key = (f.id, src, dst)
        bad = self.bad_state.get(key, False)
        bad = self.rng.random() >= f.params["r"] if bad else self.rng.random() < f.value
        self.bad_state[key] = bad
        return self.rng.random() < f.params["loss_bad" if bad else "loss_good"]

    def _queued(self, f: Fault, src: str, dst: str, nbytes: int) -> float | None:
        """Seconds until the copy has gone out on a link of f.value bits/s behind what
        waits before it; None (lost) when that is over MAX_QUEUE_S."""
        key, now = (f.id, src, dst), self.clock()
        start = max(now, self.busy_until.get(key, now))
        done = start + 8 * nbytes / f.value
        if done - now > MAX_QUEUE_S:
            return None
        self.busy_until[key] = done
        return done - now

    def reorder_window(self, src: str, dst: str) -> int:
        if not self.faults:
            return 1
        return max([int(f.value) for f in self.of_kind("reorder") if f.matches_link(src, dst)], default=1)

    def listing(self) -> list[dict]:
        return [f.as_dict() for f in sorted(self.faults.values(), key=lambda f: f.id)]
