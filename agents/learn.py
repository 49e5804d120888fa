"""`ddcl up --train`: `ddcl train` over the network. A broker, the learning world
(agents/learning_world.py: envs, critic, updates) and one learner process per agent
(agents/learner.py), each a real OS process on loopback, started and stopped like
`ddcl up`'s roles (agents/launcher.py's ProcessGroup: none outlives its parent, Ctrl-C
stops the world first so it still evaluates and writes its checkpoint).

The roles run alone too (ddcl/learn.py; deploy/compose.train.yaml runs them in containers):

    ddcl learn world --broker tcp://HOST:PORT --out OUT --config '{"updates": 50}'
    ddcl learn learner --broker tcp://HOST:PORT --id agent-K

No sync service: a learning run keys every message's dither by the run seed and
train.py's fixed epoch seed, on the world's step, as the in-process trainer does.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from .launcher import ProcessGroup, ddcl, exit_reason, free_port, last_words, wait_port, wait_world
from .train_config import TrainConfig

GRAD_CODECS = ("float32", "float16", "ddcl")  # learn_wire.GRAD_CODECS (torch-free here: the CLI imports this)
STOP_GRACE_S = 300.0  # a stopped world ends its update, evaluates on held-out instances and writes OUT
# A learning step can do without none of its messages: a peer the broker gives up for
# dead misses some, and the run stalls. Setting up, a first CUDA call or a large backward
# pass keeps a process from heartbeating for seconds, so the broker waits longer for one.
BROKER_HEARTBEAT_S = 10.0


def role(*args: str) -> list[str]:
    return ddcl("learn", *args)


def train_up(cfg: TrainConfig, out: Path, grad_codec: str = "float32", device: str = "auto",
             progress: bool = True, desync: dict | None = None) -> int:
    """Runs the networked training to its end (or Ctrl-C / SIGTERM); the world's status."""
    out = Path(out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)  # an earlier run's would pass for this one's
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    group = ProcessGroup(logs)

    def on_term(_signum, _frame):
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, on_term) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        broker = group.start("broker", ddcl("broker", "serve", "--bind", endpoint, "--log-dir", str(out),
                                            "--heartbeat", str(BROKER_HEARTBEAT_S)))
        try:
            wait_port(int(endpoint.rsplit(":", 1)[1]), alive=lambda: broker.poll() is None)
        except TimeoutError:
            print(f"[learn] the broker did not start{last_words(logs / 'broker.log')}", file=sys.stderr)
            return 2
        world = group.start("world", role("world", "--broker", endpoint, "--out", str(out), "--grad-codec", grad_codec,
                                          "--config", json.dumps(asdict(cfg)), "--desync", json.dumps(desync or {}))
                            + ([] if progress else ["--quiet"]),
                            progress=progress)
        learners = {f"agent-{k}": group.start(f"agent-{k}", role("learner", "--broker", endpoint, "--id", f"agent-{k}",
                                                                  "--device", device, "--state-dir", str(out / "learners")))
                    for k in range(cfg.agents)}
        if progress:
            print(f"[learn] broker on {endpoint}; {cfg.agents} learners, B={cfg.batch}, {cfg.updates} updates of "
                  f"{cfg.rollout} steps; gradients as {grad_codec}; logs in {logs}", file=sys.stderr, flush=True)
        rc = wait_world(world, {"broker": broker}, learners, logs)
    except KeyboardInterrupt:
        print("[learn] stopping: the world ends its update, evaluates and writes its checkpoint", file=sys.stderr)
        rc = 130
    finally:
        group.stop(first=("world",), grace_s=STOP_GRACE_S)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if rc not in (0, 130):
        print(f"[learn] the world exited ({exit_reason(rc)}){last_words(logs / 'world.log')}; see {logs}",
              file=sys.stderr)
    return rc if (out / "summary.json").exists() or rc != 0 else 1


def read_summary(out: Path) -> dict | None:
    """OUT/summary.json as `train` returns it (JSON made its goal keys text), or None."""
    path = Path(out) / "summary.json"
    if not path.exists():
        return None
    s = json.loads(path.read_text())
    s["final"]["success_by_goal"] = {int(k): v for k, v in s["final"]["success_by_goal"].items()}
    return s


def render(s: dict) -> str:
    """The networked figures beside `ddcl train`'s: pace, and bytes per update by kind."""
    net = s["networked"]
    lines = [f"{s['env_steps_per_s']:.0f} env steps/s over {s['wall_s']:.1f} s on {s['device']} (world); "
             f"{net['updates']} updates, gradients as {net['grad_codec']}",
             "bytes per update through the broker (up + down): kind payload header framing total"]
    for kind, b in net["bytes_per_update"].items():
        lines.append(f"  {kind:9s} {b['payload']:10.0f} {b['header']:8.0f} {b['framing']:8.0f} {b['total']:10.0f}")
    return "\n".join(lines)


def config_for(given: dict) -> TrainConfig:
    """TrainConfig of the fields `ddcl up --train` was given, the rest `ddcl train`'s
    defaults (ValueError for a bad one)."""
    cfg = TrainConfig(**given)
    if cfg.algo != "a2c":
        raise ValueError(f"networked training runs A2C; train --algo {cfg.algo} with `ddcl train`")
    if cfg.share:
        raise ValueError("--share needs every agent's gradient in one place: train it with `ddcl train`")
    if cfg.learn_delta:  # a peer decodes with the sender's step, which the learners do not exchange
        raise ValueError("--learn-delta trains in one place: train it with `ddcl train`")
    cfg.validate()
    return cfg


