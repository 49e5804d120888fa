"""Desync, measured from the oracle record (agents' off-data-plane logs, never on the wire).

For every decoded frame: did the receiver use the sender's noise (step and epoch seed)?
If not, |z_hat_received - z_hat_ideal| = delta * |u_used - u_sender|, element by element,
since both reconstructions subtract their noise from the same integers m.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from channel import NoiseKey, uniform_numpy


def load_sends(run: Path) -> dict:
    sends = defaultdict(list)  # (sender, frame tag) -> [(world step, noise step, seed)]
    for path in sorted(run.glob("oracle-agent-*.jsonl")):
        k = int(path.stem.rsplit("-", 1)[1])
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            tag, ns, seed = rec["sent"]
            sends[(k, tag)].append((rec["step"], ns, seed))
    return sends


def analyze(run: Path, delta: float, run_seed: int, values: int) -> dict:
    """Per link and step: desynced or not, and the reconstruction error; then summaries."""
    run = Path(run)
    sends = load_sends(run)
    events = []  # (step, src, dst, desynced, error)
    for path in sorted(run.glob("oracle-agent-*.jsonl")):
        dst = int(path.stem.rsplit("-", 1)[1])
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            for sender, tag, rx_step, rx_seed in rec["heard"]:
                cands = sends.get((sender, tag))
                if not cands:
                    continue
                _, ns, seed = min(cands, key=lambda c: abs(c[0] - rec["step"]))
                wrong = (rx_step, rx_seed) != (ns, seed)
                err = 0.0
                if wrong:
                    u_tx = uniform_numpy(values, NoiseKey(run_seed, seed, sender), ns)
                    u_rx = uniform_numpy(values, NoiseKey(run_seed, rx_seed, sender), rx_step)
                    err = float(delta * np.abs(u_tx - u_rx).mean())
                events.append((rec["step"], sender, dst, wrong, err))
    links = defaultdict(lambda: [0, 0, 0.0])
    for _, s, d, wrong, err in events:
        row = links[f"agent-{s}>agent-{d}"]
        row[0] += 1
        row[1] += wrong
        row[2] += err
    total = len(events)
    return {
        "messages": total,
        "desynced_fraction": sum(e[3] for e in events) / total if total else None,
        "mean_error": sum(e[4] for e in events) / total if total else None,
        "links": {k: {"messages": n, "desynced_fraction": w / n, "mean_error": e / n} for k, (n, w, e) in sorted(links.items())},
        "recovery_steps": recovery(run, events),
    }


def desync_by_step(run: Path, agent: int) -> dict[int, float]:
    """World step -> fraction of desynced decodes on links into or out of `agent`."""
    run = Path(run)
    sends = load_sends(run)
    out = defaultdict(lambda: [0, 0])
    for path in sorted(run.glob("oracle-agent-*.jsonl")):
        dst = int(path.stem.rsplit("-", 1)[1])
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            for sender, tag, rx_step, rx_seed in rec["heard"]:
                if agent not in (sender, dst) or not sends.get((sender, tag)):
                    continue
                _, ns, seed = min(sends[(sender, tag)], key=lambda c: abs(c[0] - rec["step"]))
                out[rec["step"]][0] += 1
                out[rec["step"]][1] += (rx_step, rx_seed) != (ns, seed)
    return {s: w / n for s, (n, w) in sorted(out.items())}


def recovery(run: Path, events) -> list[dict]:
    """For each cleared fault: steps from the clear until its agent's links are in sync."""
    path = run / "faults.jsonl"
    if not path.exists():
        return []
    out = []
    by_step = defaultdict(list)
    for step, s, d, wrong, _ in events:
        by_step[step].append((s, d, wrong))
    for line in path.read_text().splitlines():
        ev = json.loads(line)
        if ev["action"] != "clear" or ev["step"] is None:
            continue
        target = ev["fault"]["target"]
        k = int(target.split("-")[1]) if target.startswith("agent-") and ">" not in target else None
        synced_at = None
        for step in sorted(s for s in by_step if s >= ev["step"]):
            rows = [w for s, d, w in by_step[step] if k is None or k in (s, d)]
            if rows and not any(rows):
                synced_at = step
                break
        out.append({"fault": ev["fault"], "cleared_at": ev["step"],
                    "steps_to_recover": None if synced_at is None else synced_at - ev["step"]})
    return out
