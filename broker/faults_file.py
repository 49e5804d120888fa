"""Faults scheduled by world step, for reproducible runs (`ddcl up --faults FILE`).

    [[fault]]            # applied when the world reaches `step`
    step = 100
    kind = "skew"        # any `ddcl broker fault` kind
    target = "agent-1"   # agent-K, agent-J>agent-K, or "*" (link faults)
    value = 3            # burst-loss also takes r, loss_bad, loss_good

    [[clear]]            # removes fault `id` (ids count from 1 in file order) or all
    step = 200
    id = 1               # or: all = true
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import NamedTuple

from .faults import BURST_PARAMS, KINDS, FaultError
from .protocol import FAULT_ADD, FAULT_CLEAR


class Scheduled(NamedTuple):
    """A control request the broker makes itself when the world reaches `step`."""

    step: int
    request: dict


def load_faults(path) -> list[Scheduled]:
    """The file's requests in step order; FaultError naming the entry for anything invalid."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise FaultError(f"cannot read faults file {path}: {e}") from None
    out = []
    for i, f in enumerate(doc.get("fault", []), 1):
        if not isinstance(f.get("step"), int) or f["step"] < 0 or f.get("kind") not in KINDS:
            raise FaultError(f"{path}: fault #{i} needs a step >= 0 and a kind in {', '.join(KINDS)}")
        extra = {name: f[name] for name in BURST_PARAMS if name in f}  # burst-loss's own
        out.append(Scheduled(f["step"], {"op": FAULT_ADD, "kind": f["kind"], "target": f.get("target", "*"),
                                          "value": f.get("value"), **extra}))
    for i, c in enumerate(doc.get("clear", []), 1):
        if not isinstance(c.get("step"), int) or c["step"] < 0 or (c.get("all") is not True and not isinstance(c.get("id"), int)):
            raise FaultError(f"{path}: clear #{i} needs a step >= 0 and an id or all = true")
        out.append(Scheduled(c["step"], {"op": FAULT_CLEAR, "id": None if c.get("all") else c["id"]}))
    unknown = set(doc) - {"fault", "clear"}
    if unknown:
        raise FaultError(f"{path}: unknown tables {sorted(unknown)}; use [[fault]] and [[clear]]")
    return sorted(out, key=lambda e: e.step)
