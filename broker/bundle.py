"""One delivery per recipient per step: the agent messages of a step, bundled.

Every agent hears every other agent each step, so forwarding each message on its own
costs the broker N(N-1) sends a step and each agent N-1 receives. A bundle holds the
step's messages until every expected speaker has spoken, then each recipient gets one
multipart message of the others' frames: N sends a step. The bytes on the wire are the
same (each frame keeps its own ZMTP header); only the number of messages, and the
wake-ups and system calls that come with each, falls.

Which speakers are expected is learned, not configured: those that spoke in the last
step, plus any that speak. A step ends when the world sends the next observations (the
broker marks it), or, without a world, when a speaker speaks again. A bundle goes out
once every expected speaker has spoken this step (a newcomer does not wait for those
that went out before it came), and after `wait_s` as it is: a dead agent costs one wait,
and is expected no more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

WAIT_S = 0.02  # the longest the first message of a bundle waits for the step's last


@dataclass
class Spoken:
    """One agent message in a bundle, with what its accounting needs."""

    sender: bytes  # the speaker's id
    data: bytes  # the channel frame
    payload: int  # codec bytes in it
    header: int  # channel header bytes in it
    count: int  # values in it (its float32 price)


@dataclass
class Bundler:
    wait_s: float = WAIT_S
    expected: set[bytes] = field(default_factory=set)  # who speaks each step
    spoke: set[bytes] = field(default_factory=set)  # who spoke this step, in bundles gone out
    held: dict[bytes, Spoken] = field(default_factory=dict)  # speaker -> its message, this bundle
    since: float | None = None  # when this bundle's first message came

    def due(self) -> float | None:
        """When the held bundle must go out however incomplete; None when none is held."""
        return None if self.since is None else self.since + self.wait_s

    def add(self, spoken: Spoken) -> list[list[Spoken]]:
        """Hold a message; the bundles to send now (none, one, or two when a speaker heard
        again starts a new step: the bundle it was in goes first)."""
        out = []
        if spoken.sender in self.held or spoken.sender in self.spoke:
            out += self.new_step()
        if self.since is None:
            self.since = time.monotonic()
        self.held[spoken.sender] = spoken
        if self.expected <= self.held.keys() | self.spoke:
            out.append(self.take())
        return out

    def new_step(self) -> list[list[Spoken]]:
        """The step is over: what is held goes out (late), and nobody has spoken yet."""
        out = [self.take()] if self.held else []
        self.spoke = set()
        return out

    def overdue(self) -> list[Spoken] | None:
        """The held bundle, when its wait is over."""
        if self.since is not None and time.monotonic() >= self.since + self.wait_s:
            return self.take()
        return None

    def take(self) -> list[Spoken]:
        """The held bundle, taken off. Who spoke this step is who is expected from now on:
        newcomers join, the silent drop out."""
        bundle = list(self.held.values())
        self.spoke |= self.held.keys()
        self.expected = set(self.spoke)
        self.held, self.since = {}, None
        return bundle
