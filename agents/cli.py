"""`ddcl`: one command, a subcommand per role. Each subcommand's --help documents it.

Endpoints come from flags or the environment: DDCL_BROKER (where peers connect,
default tcp://127.0.0.1:5555) and DDCL_BIND (where the broker listens).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import signal
import sys

DEFAULT_BROKER = os.environ.get("DDCL_BROKER", "tcp://127.0.0.1:5555")
DEFAULT_BIND = os.environ.get("DDCL_BIND", "tcp://127.0.0.1:5555")


def field_docs(cls) -> dict[str, str]:
    """The one-line comment after each dataclass field: the config's own documentation."""
    import inspect
    import re

    return dict(re.findall(r"^\s+(\w+): [^=]+=[^#]+#\s*(.+)$", inspect.getsource(cls), re.M))


def stop_flag():
    """SIGINT/SIGTERM set a flag the role's loop polls, so every socket closes cleanly."""
    flag = []

    def handler(signum, _frame):
        flag.append(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return lambda: bool(flag)


def _broker_serve(args) -> int:
    from broker.server import Broker

    b = Broker(args.bind, heartbeat_s=args.heartbeat)
    logging.getLogger("ddcl.broker").info("broker listening on %s", b.endpoint)
    b.serve(stop_flag())
    return 0


def _broker_stats(args) -> int:
    from bench.common import table
    from broker.peer import BrokerError, Peer

    try:
        with Peer(args.broker, b"cli") as p:
            s = p.stats(args.timeout)
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    b, f = s["bytes_per_step"], s["float32_bytes_per_step"]
    print(f"broker at {args.broker}: {s['steps']} steps (last {s['step']}), peers: {', '.join(sorted(s['peers'])) or 'none'}")
    print(table(["agent msgs/step", "payload", "header", "framing", "total", "as float32"],
                [[d, b[d]["payload"], b[d]["header"], b[d]["framing"], b[d]["total"], f[d]["total"]] for d in ("up", "down", "sum")]))
    print(f"last step: {s['last_step_message_bytes']}")
    print(f"messages: {s['messages']}  other: {s['other']}")
    return 0


def _sync_serve(args) -> int:
    from broker import sync

    sync.serve(args.broker, args.seed, args.epoch_seed, stop_flag())
    return 0


def _world(args) -> int:
    from pathlib import Path

    from agents.world import World, WorldConfig

    cfg = WorldConfig(env=args.env, agents=args.agents, batch=args.batch, steps=args.steps, codec=args.codec,
                      seed=args.seed, deadline_s=args.deadline)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    summary = World(args.broker, cfg, out).run(stop_flag())
    if not out:
        print(json.dumps(summary, indent=2))
    return 0


def _agent(args) -> int:
    from agents.agent import Agent

    agent = Agent(args.broker, args.id.encode(), args.device, args.checkpoint, record=bool(args.record))
    stats = agent.run(stop_flag())
    if args.record:
        with open(args.record, "wb") as fh:
            pickle.dump(stats.record, fh)
    return 0


def _up(args) -> int:
    from agents.launcher import up

    return up(args)


def _train(args) -> int:
    from pathlib import Path

    from agents.train import TrainConfig, train

    fields = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if getattr(args, f, None) is not None}
    cfg = TrainConfig(**fields)
    try:
        cfg.validate()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = train(cfg, out)
    f = s["final"]
    print(f"success {f['success_rate']:.3f}; real bits per message ({cfg.codec}): "
          + ", ".join(f"agent {k} {a['bits_per_message'][cfg.codec]:.2f}" for k, a in enumerate(f["agents"]))
          + f"; {s['env_steps_per_s']:.0f} env steps/s on {s['device']}; wrote {out}/checkpoint.pt")
    if "goal_frequency_fit" in s:
        g = s["goal_frequency_fit"]
        print(f"goal: speaker {g['mean_bits']:.2f} bits/msg (Shannon bound {g['shannon_bound_bits']:.2f}), "
              f"r(goal probability, bits) = {g['pearson_r']:.3f}")
    return 0


def _report(args) -> int:
    from agents.report import report

    try:
        for path in report(args.run):
            print(f"wrote {path}")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _bench_channel(args) -> int:
    from bench import channel_bench

    print(channel_bench.run(budget_s=args.budget))
    return 0


def _bench_fuzz(args) -> int:
    from bench import fuzz

    print(f"fuzzing frame.unpack + codec decode with {args.inputs} inputs (seed {args.seed})")
    stats = fuzz.run(args.inputs, args.seed)
    print(f"inputs: {stats['inputs']}  accepted: {stats['accepted']}  rejected (typed error): "
          f"{stats['rejected']}  untyped failures: {len(stats['bugs'])}")
    for bug in stats["bugs"][:20]:
        print("  BUG", bug)
    return 1 if stats["bugs"] else 0


def _bench_net(args) -> int:
    from bench import net_bench

    print(net_bench.run(steps=args.steps, agents=args.agents, batches=args.batches))
    return 0


def _add_run_args(p, steps: int = 500) -> None:
    from agents.envs import ENVS
    from channel.codecs import NAMES

    p.add_argument("--env", default="goal", choices=sorted(ENVS), help="environment (default goal)")
    p.add_argument("--agents", type=int, default=2, help="agent processes (default 2)")
    p.add_argument("--batch", type=int, default=1, help="parallel env instances B (default 1)")
    p.add_argument("--steps", type=int, default=steps, help=f"lockstep steps (default {steps})")
    p.add_argument("--codec", default="rice", choices=NAMES, help="message codec (default rice)")
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    p.add_argument("--deadline", type=float, default=1.0, help="per-step wait for actions, seconds (default 1)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddcl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run broker, sync, world and agents as processes; print the result")
    _add_run_args(up)
    up.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    up.add_argument("--port", type=int, default=0, help="broker TCP port on 127.0.0.1 (default: a free one)")
    up.add_argument("--device", default="auto", help="agent torch device: auto, cpu, cuda (default auto)")
    up.add_argument("--checkpoint", help="policy checkpoint for the agents (default: untrained, seeded)")
    up.set_defaults(func=_up)

    tr = sub.add_parser("train", help="train DDCL policies in-process (A2C); write a checkpoint")
    from agents.train import TrainConfig

    docs = field_docs(TrainConfig)
    for name, f in TrainConfig.__dataclass_fields__.items():
        tr.add_argument("--" + name.replace("_", "-"), dest=name, type=type(f.default),
                        help=f"{docs.get(name, '')} (default {f.default})")
    tr.add_argument("--out", default="runs/train", help="output folder (default runs/train)")
    tr.set_defaults(func=_train)

    rp = sub.add_parser("report", help="PNG plots of a `ddcl train` folder")
    rp.add_argument("run", help="the folder `ddcl train --out` wrote")
    rp.set_defaults(func=_report)

    broker = sub.add_parser("broker", help="the ZeroMQ broker and its CLI")
    bsub = broker.add_subparsers(dest="broker_cmd", required=True, metavar="ACTION")
    b = bsub.add_parser("serve", help="run the broker")
    b.add_argument("--bind", default=DEFAULT_BIND, help=f"ROUTER endpoint (env DDCL_BIND; default {DEFAULT_BIND})")
    b.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval, seconds (default 1)")
    b.set_defaults(func=_broker_serve)
    b = bsub.add_parser("stats", help="live per-step byte figures of a running broker")
    b.add_argument("--broker", default=DEFAULT_BROKER, help=f"broker endpoint (env DDCL_BROKER; default {DEFAULT_BROKER})")
    b.add_argument("--json", action="store_true", help="print the raw JSON")
    b.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the broker (default 3)")
    b.set_defaults(func=_broker_stats)

    sync = sub.add_parser("sync", help="the PRNG synchronization service")
    ssub = sync.add_subparsers(dest="sync_cmd", required=True, metavar="ACTION")
    s = ssub.add_parser("serve", help="run the sync service")
    s.add_argument("--broker", default=DEFAULT_BROKER, help="broker endpoint (env DDCL_BROKER)")
    s.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    s.add_argument("--epoch-seed", type=int, default=1, help="epoch seed (default 1)")
    s.set_defaults(func=_sync_serve)

    w = sub.add_parser("world", help="run the world process (env instances, lockstep)")
    _add_run_args(w)
    w.add_argument("--broker", default=DEFAULT_BROKER, help="broker endpoint (env DDCL_BROKER)")
    w.add_argument("--out", help="run folder for metrics.jsonl and summary.json (default: print the summary)")
    w.set_defaults(func=_world)

    a = sub.add_parser("agent", help="run one agent process")
    a.add_argument("--broker", default=DEFAULT_BROKER, help="broker endpoint (env DDCL_BROKER)")
    a.add_argument("--id", default=os.environ.get("DDCL_AGENT_ID", ""), help="agent-K to claim (default: the broker assigns one)")
    a.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda (default auto)")
    a.add_argument("--checkpoint", help="policy checkpoint (default: untrained, seeded from the world's config)")
    a.add_argument("--record", help="pickle every step's z_hat, received z_hat and actions here (for tests)")
    a.set_defaults(func=_agent)

    bench = sub.add_parser("bench", help="benchmarks (not tests): print a table")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    b = bsub.add_parser("channel", help="codec bits vs entropy, codec and noise throughput")
    b.add_argument("--budget", type=float, default=0.2, help="seconds per timing (default 0.2)")
    b.set_defaults(func=_bench_channel)
    b = bsub.add_parser("fuzz", help="random and mutated bytes into frame/codec parsers")
    b.add_argument("--inputs", type=int, default=100_000, help="inputs to try (default 100000)")
    b.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    b.set_defaults(func=_bench_fuzz)
    b = bsub.add_parser("net", help="pyzmq round-trip floor, then lockstep steps/s and latency")
    b.add_argument("--steps", type=int, default=300, help="steps per configuration (default 300)")
    b.add_argument("--agents", default="2,4,8", help="agent counts (default 2,4,8)")
    b.add_argument("--batches", default="1,256", help="batch sizes (default 1,256)")
    b.set_defaults(func=_bench_net)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
