"""Desync, measured from the oracle record (agents' off-data-plane logs, never on the wire).

For every decoded frame: did the receiver use the sender's noise (step and epoch seed)?
If not, |z_hat_received - z_hat_ideal| = delta * |u_used - u_sender|, element by element,
since both reconstructions subtract their noise from the same integers m.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from channel import NoiseKey, uniform_numpy

ORACLE_GLOB = "oracle-agent-*.jsonl"


def oracle_path(run: Path, agent: int) -> Path:
    """Agent `agent`'s oracle log in the run folder. Agents append (a restarted one goes
    on where it left off), so the world clears the folder's logs when a run starts."""
    return Path(run) / f"oracle-agent-{agent}.jsonl"


def frame_tag(data: bytes) -> str:
    """The oracle's name for one frame: sender and receiver logs meet on it."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class OracleLog:
    """An agent's side of the oracle, one line per step: the noise (step, seed) it sent
    its frame with, and the (sender, frame, step, seed) of each frame it decoded. Steps
    are noted as tuples and written every WRITE_EVERY: hashing and a JSON line per step
    would cost the agent, each step, as much as its hear phase, right when the world and
    the broker need the cores."""

    WRITE_EVERY = 64

    def __init__(self, run: Path, agent: int):
        self.file = open(oracle_path(run, agent), "a")
        self.pending: list[tuple] = []

    def note(self, step: int, sent: bytes, noise_step: int, seed: int, decoded: list[tuple]) -> None:
        """decoded: (sender, frame bytes, noise step, seed) per frame decoded this step."""
        self.pending.append((step, sent, noise_step, seed, decoded))
        if len(self.pending) >= self.WRITE_EVERY:
            self.write()

    def write(self) -> None:
        for step, sent, noise_step, seed, decoded in self.pending:
            heard = [[sender, frame_tag(data), s, sd] for sender, data, s, sd in decoded]
            self.file.write(json.dumps({"step": step, "sent": [frame_tag(sent), noise_step, seed], "heard": heard}) + "\n")
        self.pending.clear()

    def flush(self) -> None:
        """Everything noted, on disk: the world reads the logs once every agent reported."""
        self.write()
        self.file.flush()

    def close(self) -> None:
        self.write()
        self.file.close()


def oracle_files(run: Path) -> list[Path]:
    return [p for p in sorted(Path(run).glob(ORACLE_GLOB)) if p.is_file()]


def clear_oracle(run: Path) -> None:
    for p in oracle_files(run):
        p.unlink()


def read_oracle(run: Path) -> tuple[dict[int, list[dict]], int]:
    """Each agent's oracle records, and how many lines were torn. An agent killed mid-run
    leaves a partly written last line; restarted, it appends right after it."""
    records, torn = {}, 0
    for p in oracle_files(run):
        recs = records[int(p.stem.rsplit("-", 1)[1])] = []
        for line in p.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
                tag, ns, seed = rec["sent"]
                heard = [(sender, t, s, sd) for sender, t, s, sd in rec["heard"]]
                recs.append({"step": rec["step"], "sent": (tag, ns, seed), "heard": heard})
            except (ValueError, KeyError, TypeError):
                torn += 1
    return records, torn


def decodes(records: dict[int, list[dict]]):
    """Every decode in the oracle records (`read_oracle`), matched to its send:
    (world step, sender, receiver, (noise step, seed) sent with, (noise step, seed) used)."""
    sends = defaultdict(list)  # (sender, frame tag) -> [(world step, noise step, seed)]
    for k, recs in records.items():
        for rec in recs:
            tag, ns, seed = rec["sent"]
            sends[(k, tag)].append((rec["step"], ns, seed))
    for dst, recs in records.items():
        for rec in recs:
            for sender, tag, rx_step, rx_seed in rec["heard"]:
                cands = sends.get((sender, tag))
                if cands:  # a duplicated frame can match several sends: take the nearest step
                    _, ns, seed = min(cands, key=lambda c: abs(c[0] - rec["step"]))
                    yield rec["step"], sender, dst, (ns, seed), (rx_step, rx_seed)


def analyze(run: Path, delta: float, run_seed: int, values: int) -> dict:
    """Per link and step: desynced or not, and the reconstruction error; then summaries."""
    run = Path(run)

    @functools.cache
    def noise(sender: int, step: int, seed: int) -> np.ndarray:
        return uniform_numpy(values, NoiseKey(run_seed, seed, sender), step)

    records, torn = read_oracle(run)
    events = []  # (step, src, dst, desynced, error)
    for step, sender, dst, tx, rx in decodes(records):
        wrong = tx != rx
        err = float(delta * np.abs(noise(sender, *tx) - noise(sender, *rx)).mean()) if wrong else 0.0
        events.append((step, sender, dst, wrong, err))
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
        "torn_lines": torn,
    }


def desync_by_step(run: Path, agent: int) -> dict[int, float]:
    """World step -> fraction of desynced decodes on links into or out of `agent`."""
    out = defaultdict(lambda: [0, 0])
    for step, sender, dst, tx, rx in decodes(read_oracle(run)[0]):
        if agent in (sender, dst):
            out[step][0] += 1
            out[step][1] += tx != rx
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
