"""Shared benchmark helpers: timing loops, a plain-text table, the `ddcl up` a bench runs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def rate(fn: Callable[[], object], items: int, budget_s: float = 0.25) -> float:
    """Items per second of fn, repeated for about budget_s after one warm-up call."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return calls * items / elapsed


def table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[c if isinstance(c, str) else f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def up_command(agents: int, batch: int, steps: int, out, device: str, bundle: bool = False) -> list[str]:
    """The `ddcl up` of a networked bench run, in this interpreter."""
    return [sys.executable, "-m", "ddcl", "up", "--agents", str(agents), "--batch", str(batch),
            "--steps", str(steps), "--out", str(out), "--device", device, "--bundle" if bundle else "--no-bundle"]
