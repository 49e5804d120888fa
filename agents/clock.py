"""Every process reads protocol time through one injectable Clock.

`logical`: the noise step is world step + skew + drift, deterministic (the default).
`wall`: the noise step is read off the wall clock at a fixed tick (the world steps at
that tick), so a real clock shift (libfaketime) and an injected skew look the same.
Beacons from the sync service correct the offset (NTP-like, one way: for loopback and
LAN latencies far below half a tick the one-way error is absorbed, since a corrected
reading is put in the middle of its step).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

MODES = ("logical", "wall")


@dataclass
class Clock:
    mode: str = "logical"
    tick_s: float = 0.1  # wall mode: seconds per world step
    t0: float = 0.0  # wall mode: wall time of world step 0
    skew: float = 0.0  # injected: steps (logical) or milliseconds (wall)
    drift_ppm: float = 0.0  # injected: parts per million of elapsed steps
    drift_from: int = 0  # world step the drift started at
    correction: float = 0.0  # from beacons: steps (logical) or seconds (wall)

    def now(self) -> float:
        return time.time()  # the call libfaketime fakes

    def raw(self, world_step: int) -> float:
        """This process's uncorrected reading, in steps."""
        if self.mode == "logical":
            base = world_step + self.skew
        else:
            base = (self.now() + self.skew / 1000 - self.t0) / self.tick_s
        return base + self.drift_ppm * 1e-6 * max(world_step - self.drift_from, 0)

    def view(self, world_step: int) -> int:
        """The step this process believes it is: what keys its noise."""
        if self.mode == "logical":
            return round(self.raw(world_step) - self.correction)
        return math.floor(self.raw(world_step) - self.correction / self.tick_s + 1e-9)

    def on_beacon(self, ref_step: int, ref_time: float) -> None:
        """Re-estimate the offset against the sync service's reference."""
        if self.mode == "logical":
            self.correction = self.raw(ref_step) - ref_step
        else:
            # less half a tick: the correction takes the beacon's latency for offset, so the
            # readings that follow (each taken as a step's observation arrives, a few ms
            # into it) would land a few ms either side of the step's start, and floor()
            # flipped them between two steps; from the middle of the step they hold
            self.correction = (self.now() + self.skew / 1000) - ref_time - self.tick_s / 2

    def set_faults(self, skew: float, drift_ppm: float, world_step: int) -> None:
        if drift_ppm != self.drift_ppm:
            self.drift_from = world_step
        self.skew, self.drift_ppm = skew, drift_ppm
