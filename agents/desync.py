"""Desync, measured from the oracle record (agents' off-data-plane logs, never on the wire).

For every decoded frame: did the receiver use the sender's noise (step and epoch seed)?
If not, |z_hat_received - z_hat_ideal| = delta * |u_used - u_sender|, element by element,
since both reconstructions subtract their noise from the same integers m.
"""

from __future__ import annotations

import bisect
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


def _records(path: Path, torn: list[int]):
    """One agent's oracle records, in file order; a torn line (an agent killed mid-write
    leaves one, and appends right after it when restarted) adds one to torn[0]."""
    with open(path, errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
                tag, ns, seed = rec["sent"]
                heard = [(sender, t, st, sd) for sender, t, st, sd in rec["heard"]]
                yield {"step": rec["step"], "sent": (tag, ns, seed), "heard": heard}
            except (ValueError, KeyError, TypeError):
                torn[0] += 1


def _agent(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])


def read_oracle(run: Path) -> tuple[dict[int, list[dict]], int]:
    """Each agent's oracle records, and how many lines were torn."""
    torn = [0]
    records = {_agent(p): list(_records(p, torn)) for p in oracle_files(run)}
    return records, torn[0]


def decodes(run: Path, torn: list[int] | None = None):
    """Every decode in a run's oracle logs, matched to its send: (world step, sender,
    receiver, (noise step, seed) sent with, (noise step, seed) used). Streamed, in two
    passes over the logs: a long run's logs (600 bytes an agent-step) outgrow memory."""
    torn = torn if torn is not None else [0]
    sends = defaultdict(list)  # (sender, frame tag) -> [(world step, noise step, seed)]
    for p in oracle_files(run):
        k = _agent(p)
        for rec in _records(p, [0]):  # torn lines are counted once, in the second pass
            tag, ns, seed = rec["sent"]
            sends[(k, tag)].append((rec["step"], ns, seed))
    steps = {}  # (sender, tag) -> its sends' world steps, ascending, for bisect
    for key, cands in sends.items():
        cands.sort()
        steps[key] = [c[0] for c in cands]
    for p in oracle_files(run):
        dst = _agent(p)
        for rec in _records(p, torn):
            for sender, tag, rx_step, rx_seed in rec["heard"]:
                cands = sends.get((sender, tag))
                if not cands:
                    continue
                # a tag repeats (a short message is often the same bytes): the send nearest
                # in world step is this decode's
                at = steps[(sender, tag)]
                i = bisect.bisect_left(at, rec["step"])
                if i == len(at) or (i > 0 and rec["step"] - at[i - 1] <= at[i] - rec["step"]):
                    i -= 1
                _, ns, seed = cands[i]
                yield rec["step"], sender, dst, (ns, seed), (rx_step, rx_seed)


def analyze(run: Path, delta: float, run_seed: int, values: int) -> dict:
    """Per link and step: desynced or not, and the reconstruction error; then summaries.
    Aggregated as the decodes stream by: nothing per decode is kept but what fault
    recovery needs (steps from the first cleared fault on)."""
    run = Path(run)

    @functools.lru_cache(maxsize=4096)
    def noise(sender: int, step: int, seed: int) -> np.ndarray:
        return uniform_numpy(values, NoiseKey(run_seed, seed, sender), step)

    clears = cleared_faults(run)
    watch_from = min((ev["step"] for ev in clears), default=None)
    links = defaultdict(lambda: [0, 0, 0.0])
    by_step = defaultdict(list)  # step -> [(src, dst, desynced)], from watch_from on
    torn = [0]
    total = wrong_total = 0
    err_total = 0.0
    for step, sender, dst, tx, rx in decodes(run, torn):
        wrong = tx != rx
        err = float(delta * np.abs(noise(sender, *tx) - noise(sender, *rx)).mean()) if wrong else 0.0
        row = links[f"agent-{sender}>agent-{dst}"]
        row[0] += 1
        row[1] += wrong
        row[2] += err
        total, wrong_total, err_total = total + 1, wrong_total + wrong, err_total + err
        if watch_from is not None and step >= watch_from:
            by_step[step].append((sender, dst, wrong))
    return {
        "messages": total,
        "desynced_fraction": wrong_total / total if total else None,
        "mean_error": err_total / total if total else None,
        "links": {k: {"messages": n, "desynced_fraction": w / n, "mean_error": e / n} for k, (n, w, e) in sorted(links.items())},
        "recovery_steps": recovery(clears, by_step),
        "torn_lines": torn[0],
    }


def desync_by_step(run: Path, agent: int) -> dict[int, float]:
    """World step -> fraction of desynced decodes on links into or out of `agent`."""
    out = defaultdict(lambda: [0, 0])
    for step, sender, dst, tx, rx in decodes(run):
        if agent in (sender, dst):
            out[step][0] += 1
            out[step][1] += tx != rx
    return {s: w / n for s, (n, w) in sorted(out.items())}


def cleared_faults(run: Path) -> list[dict]:
    """The fault clears of a run (faults.jsonl), each with the step it happened at."""
    path = Path(run) / "faults.jsonl"
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [ev for ev in events if ev["action"] == "clear" and ev["step"] is not None]


def recovery(clears: list[dict], by_step: dict) -> list[dict]:
    """For each cleared fault: steps from the clear until its agent's links are in sync."""
    out = []
    for ev in clears:
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
