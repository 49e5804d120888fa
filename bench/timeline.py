"""`ddcl bench timeline`: where a lockstep step's time goes, process by process.

Runs `ddcl up` with DDCL_TRACE set (broker/trace.py), so that every role marks its
events on the host's monotonic clock. Step k runs from the world's k-th "obs out" to the
next. Each row is one event (a process, its event name, the n-th such event in the step)
at its median offset into the step, in time order; "+us" is the gap to the row before.
A gap between two rows of one process is that process's work; a gap into another
process's row is a hop through ZeroMQ, or waiting for the slower of two agents. Medians
of separate events need not add up to one real step: the agents take turns being first.
A mark made after a send returns ("sent") can land in the next step when its process
is preempted right after the send (a loaded machine). Steps whose events differ from the
usual set (a beacon or a metrics publication passing through the broker, a heartbeat)
are left out and counted.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from agents.launcher import dies_with
from broker import trace

from .common import table, up_command

STEP_MARK = ("world", "obs out")


def read_traces(folder: Path) -> dict[str, list[tuple[str, int]]]:
    """Each process's marks, by the name before its pid."""
    out = {}
    for path in sorted(folder.glob("*.txt")):
        events = []
        for line in path.read_text().splitlines():
            event, _, ns = line.rpartition(" ")
            events.append((event, int(ns)))
        out[path.stem.rpartition("-")[0]] = events
    return out


def step_events(traces: dict[str, list[tuple[str, int]]], warmup: float = 0.1) -> tuple[list[dict], int]:
    """Per step (after the warm-up): {(process, event, n): ns after the step's start},
    only the steps whose events are the usual set; and how many steps were left out."""
    process, event = STEP_MARK
    starts = [ns for name, ns in traces.get(process, []) if name == event]
    if len(starts) < 12:
        raise RuntimeError(f"the trace holds {len(starts)} steps: too few to take medians; run more steps")
    first = int(len(starts) * warmup)
    # the step's end: the world's next step starts
    steps: list[dict] = [{(process, "next " + event, 1): starts[k + 1] - starts[k]}
                         for k in range(first, len(starts) - 1)]
    for proc, events in traces.items():
        i, seen = 0, Counter()
        for name, ns in events:
            while i < len(steps) and ns >= starts[first + i + 1]:
                i, seen = i + 1, Counter()
            if i == len(steps):
                break
            if ns >= starts[first + i]:
                seen[name] += 1
                steps[i][(proc, name, seen[name])] = ns - starts[first + i]
    usual, _ = Counter(frozenset(s) for s in steps).most_common(1)[0]
    kept = [s for s in steps if frozenset(s) == usual]
    return kept, len(steps) - len(kept)


def timeline(steps: list[dict]) -> list[list]:
    """Rows (median offset us, gap to the previous row us, process, event) in time order."""
    offsets = defaultdict(list)
    for s in steps:
        for key, ns in s.items():
            offsets[key].append(ns / 1e3)
    medians = sorted((statistics.median(v), key) for key, v in offsets.items())
    rows, prev = [], 0.0
    for offset, (proc, event, n) in medians:
        rows.append([offset, offset - prev, proc, event if n == 1 else f"{event} #{n}"])
        prev = offset
    return rows


def run(agents: int = 2, batch: int = 1, steps: int = 3000, device: str = "cpu") -> str:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "trace"  # the roles make it
        cmd = up_command(agents, batch, steps, Path(tmp) / "run", device)
        print(f"[bench timeline] {agents} agents, B={batch}: {steps} traced steps", file=sys.stderr, flush=True)
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=900,
                           preexec_fn=dies_with(os.getpid()),
                           env={**os.environ, trace.ENV: str(folder)})
        if r.returncode:
            raise RuntimeError(f"the traced run failed (ddcl up, exit status {r.returncode}): "
                               + (r.stderr.strip().splitlines() or ["no output"])[-1])
        kept, dropped = step_events(read_traces(folder))
    return "\n".join([
        (f"{agents} agents, B={batch}, agents' torch device {device}: {len(kept)} steps "
         f"({dropped} with unusual events and the first 10 % left out); median offsets into the step"),
        "",
        table(["offset us", "+us", "process", "event"], timeline(kept)),
    ])
