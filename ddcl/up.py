"""`ddcl up`: broker, sync service, world and N agents as separate OS processes on
loopback, live progress, a clean stop (Ctrl-C too), and the result table. The world gets
the run config whole, as one JSON argument; the agents get it from the world."""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import replace
from pathlib import Path

from agents.launcher import ProcessGroup, ddcl, exit_reason, free_port, last_words, wait_port, wait_world
from agents.run_config import RunConfig
from broker.protocol import FINISH_WAIT_S, HEARTBEAT_S, LIVENESS

from .summary import render_summary


class BrokerDidNotStart(Exception):
    pass


def up(args, cfg: RunConfig) -> int:
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
        rc = _start_and_wait(args, cfg, endpoint, group, out)
    except KeyboardInterrupt:
        print("[up] stopping", file=sys.stderr)
        rc = 130
    except BrokerDidNotStart as e:
        print(f"[up] {e}", file=sys.stderr)
        return 2
    finally:
        # the world first: it ends its step, collects the agents' figures and the broker's
        # byte counts, and writes the summary of the steps it ran. That takes up to a step's
        # deadline plus its wait for the agents' reports (FINISH_WAIT_S, all of it when an
        # agent is dead) before the writing: the grace covers both, else a loaded machine
        # killed the world before its summary
        group.stop(first=("world",), grace_s=5.0 + cfg.deadline_s + FINISH_WAIT_S)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return _report(rc, out)


def _start_and_wait(args, cfg: RunConfig, endpoint: str, group: ProcessGroup, out: Path) -> int:
    """Every role started, in order; the world's exit status."""
    common = ["--bus", args.bus, "--run", args.run] + (["--keys", args.keys] if args.keys else [])
    services = {}
    if not args.broker:  # else a running broker serves this run (its figures reset at step 0)
        services["broker"] = _start_broker(args, endpoint, group, common, out)
    services["sync"] = group.start("sync", ddcl("sync", "serve", "--broker", endpoint, "--config", cfg.to_json(), *common))
    world = group.start("world", world_command(cfg, endpoint, out, common), progress=True)
    checkpoint = ["--checkpoint", args.checkpoint] if args.checkpoint else []

    def record(k: int) -> list[str]:
        return ["--record", str(out / f"record-agent-{k}.pkl")] if args.record else []

    agents = {f"agent-{k}": group.start(f"agent-{k}", ddcl("agent", "--broker", endpoint, "--id", f"agent-{k}",
                                                           "--device", args.device, *common, *checkpoint, *record(k)))
              for k in range(cfg.agents)}
    print(f"[up] broker on {endpoint}; {cfg.agents} agents, B={cfg.batch}, {cfg.steps} steps; "
          f"logs in {out / 'logs'}", file=sys.stderr, flush=True)
    return wait_world(world, services, agents, out / "logs")


def world_command(cfg: RunConfig, endpoint: str, out: Path, common: list[str]) -> list[str]:
    """The world's command line: the run config whole, as one JSON argument."""
    # nothing here restarts a broker: its silence for the heartbeat liveness means it died
    cfg = replace(cfg, broker_timeout_s=LIVENESS * HEARTBEAT_S)
    return ddcl("world", "--broker", endpoint, "--config", cfg.to_json(), "--out", str(out), *common)


def _start_broker(args, endpoint: str, group: ProcessGroup, common: list[str], out: Path):
    """The broker, once it listens: the others register at start-up, with a timeout, and
    on a loaded machine the broker's imports alone can outlast it."""
    cmd = ddcl("broker", "serve", "--bind", endpoint, "--log-dir", str(out),
               "--bundle" if args.bundle else "--no-bundle", *common)
    broker = group.start("broker", cmd + (["--faults", args.faults] if args.faults else []))
    try:
        wait_port(int(endpoint.rsplit(":", 1)[1]), alive=lambda: broker.poll() is None)
    except TimeoutError:
        log = out / "logs" / "broker.log"
        raise BrokerDidNotStart(f"the broker did not start{last_words(log)}; see {log}") from None
    return broker


def _report(rc: int, out: Path) -> int:
    """The run's result table, when the world wrote one; rc."""
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
