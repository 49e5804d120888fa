"""`ddcl up`: broker, sync service, world and N agents as separate OS processes on
loopback, live progress, a clean stop (Ctrl-C too), and the result table."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from broker.protocol import FINISH_WAIT_S, HEARTBEAT_S, LIVENESS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 60.0, alive=lambda: True) -> None:
    """Until something accepts connections on the loopback port (or raise TimeoutError)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def ddcl(*args: str) -> list[str]:
    return [sys.executable, "-m", "agents.cli", *args]


PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform == "linux" else None


def dies_with(parent: int):
    """A child's preexec_fn (`parent`: the starting process's pid, taken before the fork):
    on Linux, SIGTERM when that process dies, however it dies."""
    def setup() -> None:
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # it died before the line above
                os.kill(os.getpid(), signal.SIGTERM)
    return setup


def _child_setup(parent: int):
    """Runs in each role before exec. Its own process group: a terminal's Ctrl-C reaches
    only `ddcl up`, which stops the world first so that it can still write its summary.
    No role outlives `ddcl up`."""
    def setup() -> None:
        os.setpgid(0, 0)
        dies_with(parent)()
    return setup


class ProcessGroup:
    """Children that stop in order: SIGTERM, a grace period, then SIGKILL."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], progress: bool = False) -> subprocess.Popen:
        """Output to logs/<name>.log; with `progress`, stderr (live progress) to the terminal."""
        log = open(self.logs / f"{name}.log", "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=None if progress else subprocess.STDOUT,
                             preexec_fn=_child_setup(os.getpid()))
        self.procs.append((name, p))
        return p

    def stop(self, first: tuple[str, ...] = (), grace_s: float = 5.0) -> None:
        """The children named in `first`, then the others together."""
        for batch in ([p for n, p in self.procs if n in first], [p for n, p in self.procs if n not in first]):
            for p in batch:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            wait_or_kill(batch, grace_s)


def wait_or_kill(procs: list[subprocess.Popen], grace_s: float) -> list[subprocess.Popen]:
    """Waits up to grace_s for procs together, then kills those still running: none
    outlives its parent. Returns the killed ones."""
    deadline = time.monotonic() + grace_s
    killed = []
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            killed.append(p)
    return killed


def exit_reason(rc: int) -> str:
    return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"status {rc}"


def last_words(log: Path) -> str:
    """': <the log's last line>', to name a child's reason for dying; '' for an empty log."""
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return f": {lines[-1]}" if lines else ""


def wait_world(world: subprocess.Popen, services: dict[str, subprocess.Popen], agents: dict[str, subprocess.Popen],
               logs: Path) -> int:
    """The world's exit status. A service that dies under it is named at once (the world
    ends the run itself once it misses the broker), and so is an agent that dies (its
    steps then miss their deadline; agents exit 0 only once the world ends the run)."""
    gone: set[str] = set()
    while (rc := world.poll()) is None:
        for name, p in {**services, **agents}.items():
            if name in gone or (code := p.poll()) is None or (name in agents and code == 0):
                continue
            gone.add(name)
            label = {"broker": "the broker", "sync": "the sync service"}.get(name, name)
            why = last_words(logs / f"{name}.log") if code > 0 else ""  # an error exit's last line says why
            print(f"[up] {label} exited during the run ({exit_reason(code)}){why}", file=sys.stderr, flush=True)
        time.sleep(0.1)
    return rc


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def up(args) -> int:
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    endpoint = args.broker or f"tcp://127.0.0.1:{args.port or free_port()}"
    group = ProcessGroup(out / "logs")

    def on_term(_signum, _frame):
        raise KeyboardInterrupt

    # SIGINT too, explicitly: a shell starts background jobs with SIGINT ignored, and
    # Python then never turns it into KeyboardInterrupt
    old = {sig: signal.signal(sig, on_term) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        common = ["--bus", args.bus, "--run", args.run] + (["--keys", args.keys] if args.keys else [])
        services = {}
        if not args.broker:  # else a running broker serves this run (its figures reset at step 0)
            broker_cmd = ddcl("broker", "serve", "--bind", endpoint, "--log-dir", str(out),
                              "--bundle" if args.bundle else "--no-bundle", *common)
            broker = services["broker"] = group.start("broker", broker_cmd + (["--faults", args.faults] if args.faults else []))
            # the others register at start-up, with a timeout: on a loaded machine the broker's
            # imports alone can outlast it
            try:
                wait_port(int(endpoint.rsplit(":", 1)[1]), alive=lambda: broker.poll() is None)
            except TimeoutError:
                print(f"[up] the broker did not start{last_words(out / 'logs' / 'broker.log')}; see "
                      f"{out / 'logs' / 'broker.log'}", file=sys.stderr)
                return 2
        services["sync"] = group.start("sync", ddcl("sync", "serve", "--broker", endpoint, "--seed", str(args.seed),
                                 "--beacon-every", str(args.beacon_every), "--epoch-steps", str(args.epoch_steps), *common))
        world_cmd = ddcl("world", "--broker", endpoint, "--env", args.env, "--agents", str(args.agents),
                         "--batch", str(args.batch), "--steps", str(args.steps), "--codec", args.codec,
                         "--seed", str(args.seed), "--deadline", str(args.deadline), "--out", str(out),
                         "--sync", args.sync, "--clock", args.clock, "--tick", str(args.tick),
                         "--core", args.core, "--aggregate", args.aggregate,
                         # nothing here restarts a broker: its silence for the heartbeat liveness means it died
                         "--broker-timeout", str(LIVENESS * HEARTBEAT_S), *common)
        world = group.start("world", world_cmd, progress=True)
        agents = {}
        for k in range(args.agents):
            cmd = ddcl("agent", "--broker", endpoint, "--id", f"agent-{k}", "--device", args.device, *common)
            if args.checkpoint:
                cmd += ["--checkpoint", args.checkpoint]
            agents[f"agent-{k}"] = group.start(f"agent-{k}", cmd)
        print(f"[up] broker on {endpoint}; {args.agents} agents, B={args.batch}, {args.steps} steps; "
              f"logs in {out / 'logs'}", file=sys.stderr, flush=True)
        rc = wait_world(world, services, agents, out / "logs")
    except KeyboardInterrupt:
        print("[up] stopping", file=sys.stderr)
        rc = 130
    finally:
        # the world first: it ends its step, collects the agents' figures and the broker's
        # byte counts, and writes the summary of the steps it ran. That takes up to a step's
        # deadline plus its wait for the agents' reports (FINISH_WAIT_S, all of it when an
        # agent is dead) before the writing: the grace covers both, else a loaded machine
        # killed the world before its summary
        group.stop(first=("world",), grace_s=5.0 + args.deadline + FINISH_WAIT_S)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    summary_path = out / "summary.json"  # the world removes an earlier run's at its start
    if rc in (0, 130) and summary_path.exists():
        summary = json.loads(summary_path.read_text())
        print(render_summary(summary))
        if summary["steps"] < summary["config"]["steps"]:
            print(f"stopped at step {summary['steps']} of {summary['config']['steps']}")
        print(f"\nwrote {out / 'metrics.jsonl'} and {summary_path}")
    elif rc != 130:
        print(f"[up] the world exited ({exit_reason(rc)}); see {out / 'logs'}", file=sys.stderr)
    return rc


def render_summary(s: dict) -> str:
    from bench.common import table

    lines = [f"env {s['env']}, {s['agents']} agents, B={s['batch']}, {s['steps']} steps, codec {s['codec']}", ""]
    if (b := s["bytes_per_step"]) is not None:
        f, m = s["float32_bytes_per_step"], s["messages"]
        rows = [[d, b[d]["payload"], b[d]["header"], b[d]["framing"], b[d]["total"], f[d]["total"]]
                for d in ("up", "down", "sum")]
        ratio = f["sum"]["total"] / b["sum"]["total"] if b["sum"]["total"] else float("nan")
        lines += [
            "Agent-message bytes per step (on the wire, ZMTP framing included)",
            table(["direction", "payload", "header", "framing", "total", "as float32"], rows),
            "",
            f"float32 / {s['codec']} bytes: {ratio:.2f}x",
            f"messages: sent {m['sent']}, delivered {m['delivered']}, dropped {m['dropped']}, rejected {m['rejected']}",
        ]
        if refused := {k: v["messages"] for k, v in s["broker"]["refused"].items() if v["messages"]}:
            lines.append("refused by the broker (not in the figures above): "
                         + ", ".join(f"{k} {v}" for k, v in refused.items()))
    else:
        lines.append("byte figures: none (the broker was gone before the world could ask for them)")
    lines += [
        f"bits per message (real): {s['bits_per_message']:.2f} for {s['values_per_message']} "
        f"value{'s' if s['values_per_message'] != 1 else ''}"
        if s["bits_per_message"] is not None else "bits per message: n/a",
        f"success rate {s['success_rate'] if s['success_rate'] is not None else float('nan'):.3f} over "
        f"{s['episodes']} episodes, mean reward {s['mean_reward']:.4f}, {s['steps_per_second']:.1f} steps/s",
        f"deadline misses per agent: {s['deadline_misses']}",
    ]
    d = s.get("desync")
    if d and d["messages"]:
        lines.append(f"desync ({s['sync']} sync): {100 * d['desynced_fraction']:.1f}% of {d['messages']} decodes used "
                     f"the wrong noise, mean |z_hat error| {d['mean_error']:.4f}")
    return "\n".join(lines)


