"""The link-fault line: agent-message copies held back by a delay or a reorder window
until they are due. The fault table decides what happens to a copy (broker/faults.py);
this line only holds copies and hands them back in due order."""

from __future__ import annotations

import heapq
import itertools
import random
import time
from dataclasses import dataclass, field


@dataclass(order=True)
class Held:
    """One delayed agent-message copy, ordered by when it is due."""

    due: float  # time.monotonic() at which it goes out
    seq: int  # ties in due time go out in the order they were held
    dest: bytes = field(compare=False)  # the recipient's id
    parts: list[bytes] = field(compare=False)  # the ZeroMQ message as received
    payload: int = field(compare=False)  # codec bytes in it (the accounting's payload)
    header: int = field(compare=False)  # channel header bytes in it
    count: int = field(compare=False)  # values in it (its float32 price)


class LinkLine:
    def __init__(self, rng: random.Random):
        self.rng = rng  # the fault table's: one seeded stream for every random fault decision
        self.pending: list[Held] = []  # a heap
        self.windows: dict[tuple[str, str], list[Held]] = {}  # per link, copies waiting to be shuffled
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.pending) + sum(len(w) for w in self.windows.values())

    def next_due(self) -> float | None:
        return self.pending[0].due if self.pending else None

    def hold(self, link: tuple[str, str], delay: float, window: int, dest: bytes, parts: list[bytes], payload: int,
             header: int, count: int) -> None:
        """Hold a copy for `delay` seconds; with a window over 1, until `window` copies on
        this link are held, then release them all, shuffled, in one burst."""
        item = Held(time.monotonic() + delay, next(self._seq), dest, parts, payload, header, count)
        if window <= 1:
            heapq.heappush(self.pending, item)
            return
        buf = self.windows.setdefault(link, [])
        buf.append(item)
        if len(buf) >= window:
            self.rng.shuffle(buf)
            due = max(it.due for it in buf)  # one due time: the heap then keeps the shuffled order
            for it in buf:
                it.due, it.seq = due, next(self._seq)
                heapq.heappush(self.pending, it)
            buf.clear()

    def due(self) -> list[Held]:
        """The copies due now, in order, taken off the line."""
        now, out = time.monotonic(), []
        while self.pending and self.pending[0].due <= now:
            out.append(heapq.heappop(self.pending))
        return out

    def flush_windows(self) -> None:
        """A cleared reorder fault: what its windows hold goes out in arrival order."""
        for buf in self.windows.values():
            for it in buf:
                heapq.heappush(self.pending, it)
            buf.clear()
