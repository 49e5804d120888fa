"""Event timestamps for `ddcl bench timeline`: nothing is recorded unless the environment
variable DDCL_TRACE names a folder.

The lockstep's roles mark a few events a step (a message in, a message out, a phase
done) on CLOCK_MONOTONIC, which every process on a host shares, so the bench can line up
all processes' events on one time axis. Each process writes `<folder>/<name>-<pid>.txt`
(one `event nanoseconds` line per mark) when it exits (`write`), making the folder if need be. Off,
a mark is one call that does nothing.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path

ENV = "DDCL_TRACE"
MAX_EVENTS = 1_000_000  # a long traced run stops recording here instead of growing without end

_folder = os.environ.get(ENV)
_events: list[tuple[str, int]] = []
_name = "process"


def _record(event: str) -> None:
    if len(_events) < MAX_EVENTS:
        _events.append((event, time.monotonic_ns()))


def _off(event: str) -> None:
    pass


mark = _record if _folder else _off


def name(process: str) -> None:
    """What this process's file is called (its role, or its peer id)."""
    global _name
    _name = process


def write() -> None:
    """Writes this process's marks, once (at exit, or before a role's quick exit)."""
    if not _events:
        return
    path = Path(_folder) / f"{_name}-{os.getpid()}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{event} {ns}\n" for event, ns in _events))
        _events.clear()
    except OSError as e:  # a diagnostic: the process's own work is done, and its exit status stays its own
        print(f"{ENV}: cannot write {path}: {e.strerror}", file=sys.stderr)


if _folder:
    atexit.register(write)
