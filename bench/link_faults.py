"""`ddcl bench link-faults`: what each link fault costs on the same trained policy: one
`ddcl up` per fault (scheduled from step 0 through a faults file, applied by the broker
to every agent message), success, real bits per message, bytes per step on the wire,
messages delivered, and what the receivers made of them (silent: missed the peer wait;
bad: a frame that did not decode)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from agents.launcher import dies_with

from .common import table, up_command

CHECKPOINT = "deploy/checkpoint/goal.pt"
DEADLINE_S = 0.2  # the agents' peer wait is half: a copy held over 100 ms is heard as silence

# name: the [[fault]] tables (from step 0 on every link unless a target is given)
FAULTS: dict[str, list[dict]] = {
    "none": [],
    "drop 0.2": [{"kind": "drop", "value": 0.2}],
    "burst-loss p=0.05 r=0.2 (loses 0.2)": [{"kind": "burst-loss", "value": 0.05, "r": 0.2}],
    "partition, steps 100-200": [{"kind": "partition", "step": 100}],
    "delay 60 ms": [{"kind": "delay", "value": 60}],
    "delay 60 ms + jitter 60 ms": [{"kind": "delay", "value": 60}, {"kind": "jitter", "value": 60}],
    "bandwidth 20 kbit/s": [{"kind": "bandwidth", "value": 20_000}],
    "bandwidth 2 kbit/s": [{"kind": "bandwidth", "value": 2_000}],
    "duplicate 0.2": [{"kind": "duplicate", "value": 0.2}],
    "reorder 4": [{"kind": "reorder", "value": 4}],
    "corrupt 0.2": [{"kind": "corrupt", "value": 0.2}],
}
CLEARED_AT = {"partition, steps 100-200": 200}


def faults_file(faults: list[dict], clear_at: int | None) -> str:
    lines = []
    for f in faults:
        lines.append("[[fault]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in {"step": 0, "target": "*", **f}.items()]
    if clear_at is not None:
        lines += ["[[clear]]", f"step = {clear_at}", "all = true"]
    return "\n".join(lines) + "\n"


def one_run(name: str, steps: int, batch: int, tmp: Path) -> list:
    folder = tmp / f"run{len(list(tmp.iterdir()))}"
    folder.mkdir()
    cmd = up_command(2, batch, steps, folder / "out", "cpu") + [
        "--env", "goal", "--codec", "range", "--checkpoint", CHECKPOINT, "--deadline", str(DEADLINE_S)]
    if FAULTS[name]:
        (folder / "faults.toml").write_text(faults_file(FAULTS[name], CLEARED_AT.get(name)))
        cmd += ["--faults", str(folder / "faults.toml")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, preexec_fn=dies_with(os.getpid()))
    if r.returncode:
        raise RuntimeError(f"{name}: ddcl up failed ({r.returncode}): {r.stderr[-1000:]}")
    s = json.loads((folder / "out" / "summary.json").read_text())
    m = s["messages"]
    return [name, s["success_rate"], s["bits_per_message"], s["bytes_per_step"]["sum"]["total"],
            f"{m['delivered']}/{m['sent']}", s["silent_peers"], s["bad_frames"], s["steps_per_second"]]


def run(steps: int = 300, batch: int = 64, progress=print) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in FAULTS:
            rows.append(one_run(name, steps, batch, Path(tmp)))
            progress(f"[bench link-faults] {name}: success {rows[-1][1]:.3f}, {rows[-1][5]} silent, "
                     f"{rows[-1][6]} bad frames")
    return "\n".join([
        f"goal env, {CHECKPOINT} (range codec), 2 agents, B={batch}, {steps} steps, deadline {DEADLINE_S} s a step",
        "each fault on every link from step 0; silent: a peer's message missed the wait; bad: it did not decode",
        "",
        table(["fault", "success", "bits / msg", "bytes / step", "delivered / sent", "silent", "bad frames",
               "steps / s"], rows),
    ])
