"""Clock faults in a networked training run, and the probe that measures what they do
to the gradients.

A learning run has no sync service: every learner keys its noise by its own view of the
world's step (agents/clock.py's logical clock). Without faults that view is the step,
and `ddcl up --train` equals `ddcl train`. With a fault, one learner's view is off from
a given update on, by a skew, a drift, or a drift that beacon-like corrections set back
every few steps, and the frames carry what the sync mode lets a receiver know
(agents/message.py): a receiver then subtracts the wrong dither exactly as a desynced
deployment's agent would, its policy acts on that z_hat, and the gradient it sends the
speaker is taken there.

The probe: the fault's schedule is known to every learner (it comes in the world's
config), so a listener also knows each speaker's true noise step, off the wire, as the
oracle log of a deployment does (agents/desync.py). On the same rollout (the same
observations, actions and advantages) it decodes what a synchronized listener would
have heard and takes that loss's gradient too; the cosine between the two, per link and
update, is the gradient's bias measured directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .clock import Clock
from .message import SyncMode


@dataclass(frozen=True)
class LearnDesync:
    sync: str = "implicit"  # what the frames carry of the sender's step: implicit | stamped | checked:K | healing:K
    agent: int = 1  # the learner whose clock is faulted
    skew: int = 0  # its noise step runs this many steps ahead, from `from_update` on
    drift_ppm: float = 0.0  # its clock gains this many parts per million of steps, from `from_update` on
    beacon_every: int = 0  # steps between beacon-like corrections of its offset (0: none)
    from_update: int = 1  # the first update the fault is in force (1: from step 0)
    probe: bool = False  # also take the synchronized listener's gradient on the same rollout; report the cosine

    @classmethod
    def from_dict(cls, d: dict | None) -> "LearnDesync":
        """From the world's config (ValueError for anything that does not fit)."""
        if d is None:
            return cls()
        if not isinstance(d, dict) or set(d) - set(cls.__dataclass_fields__):
            raise ValueError(f"desync must be a map of {sorted(cls.__dataclass_fields__)}")
        typed = {"sync": str, "agent": int, "skew": int, "drift_ppm": (int, float), "beacon_every": int,
                 "from_update": int, "probe": bool}
        for name, value in d.items():
            if not isinstance(value, typed[name]) or (isinstance(value, bool) and typed[name] is not bool):
                raise ValueError(f"desync field {name!r} has the wrong type: {type(value).__name__}")
        spec = cls(**{**d, "drift_ppm": float(d.get("drift_ppm", 0.0))})
        spec.validate()
        return spec

    def validate(self, agents: int | None = None) -> None:
        SyncMode.parse(self.sync)
        if not (0 <= self.agent < (agents if agents is not None else 255)):
            raise ValueError(f"desync agent {self.agent} is not one of the run's agents")
        if abs(self.skew) > 1 << 20 or abs(self.drift_ppm) > 1e6 or self.beacon_every < 0 or self.from_update < 1:
            raise ValueError("desync: |skew| <= 2**20 steps, |drift| <= 1e6 ppm, beacon_every >= 0, from_update >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def faulted(self) -> bool:
        return bool(self.skew or self.drift_ppm)

    def start_step(self, rollout: int) -> int:
        """The world step the fault lands at: the first step of update `from_update`."""
        return (self.from_update - 1) * rollout

    def view(self, agent: int, step: int, rollout: int) -> int:
        """The noise step `agent` keys its dither by at world step `step`: a logical clock
        with the fault from its start, corrected at the last beacon (a beacon at step b
        sets the offset the clock reads at b, as agents/clock.py's on_beacon does)."""
        start = self.start_step(rollout)
        if agent != self.agent or not self.faulted or step < start:
            return step
        clock = Clock(skew=float(self.skew), drift_ppm=self.drift_ppm, drift_from=start)
        if self.beacon_every:
            last = step - step % self.beacon_every
            if last >= start:
                clock.on_beacon(last, 0.0)
        return clock.view(step)
