"""Running a simulation: `ddcl up` (every role on this machine), and each role on its own
(`ddcl world`, `ddcl agent`, `ddcl broker serve`, `ddcl sync serve`) for compose, k8s or
several machines."""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from dataclasses import fields

from agents.run_config import CHOICES, FLOAT_RANGES, INT_RANGES, SYNC_FIELDS, RunConfig

from .options import (DEFAULT_BIND, Refused, add_agent_id, add_broker, add_common, add_config_flags, add_device,
                      checked, curve, given, int_in, out_folder, positive_float, stop_flag)


def add_run_flags(p, skip=()) -> None:
    """A flag per RunConfig field: the run's one list of knobs and defaults."""
    add_config_flags(p, RunConfig, skip, ints=INT_RANGES, floats=FLOAT_RANGES, choices=CHOICES)


def add_config_json(p) -> None:
    p.add_argument("--config", help="the run config as JSON, as `ddcl up` passes it; flags given beside it win")


def run_config(args, whole: bool = True) -> RunConfig:
    """The run the command line says: --config's JSON (`ddcl up` hands the world the whole
    config so), each flag given beside it over that; checked as one (RunConfig.validate)."""
    base = checked(RunConfig.from_json, args.config, whole).to_wire() if getattr(args, "config", None) else {}
    return checked(RunConfig.from_wire, {**base, **given(args, RunConfig)}, whole)


def add_up(sub) -> None:
    p = sub.add_parser("up", help="run broker, sync, world and agents as processes; print the result")
    add_run_flags(p, skip=("broker_timeout_s",))  # `up` starts the broker: a silent one has died
    add_common(p)
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--port", type=int_in(0, 65535), default=0, help="broker TCP port on 127.0.0.1 (default: a free one)")
    p.add_argument("--bundle", action=argparse.BooleanOptionalAction, default=False,
                   help="the broker bundles a step's agent messages per recipient (default off)")
    p.add_argument("--broker", help="endpoint of a running broker to use instead of starting one (e.g. tcp://host:5555)")
    add_device(p, "agent torch device")
    p.add_argument("--checkpoint", help="policy checkpoint for the agents (default: untrained, seeded)")
    p.add_argument("--record", action="store_true",
                   help="each agent pickles every step's z_hat, received z_hat and actions to OUT/record-agent-K.pkl")
    p.add_argument("--faults", help="TOML file of faults triggered by step (see docs/running.md#faults)")
    add_train_flags(p)
    p.set_defaults(func=_up)


def add_train_flags(p) -> None:
    """--train, --grad-codec, and a flag for each TrainConfig field `ddcl up` has none for
    (its --env, --agents, --batch, --codec, --seed, --core, --device mean the same)."""
    from agents.learn import GRAD_CODECS
    from agents.train_config import TrainConfig

    p.add_argument("--train", action="store_true", help="train networked (`ddcl train` over the broker), write OUT")
    p.add_argument("--grad-codec", default="float32", choices=GRAD_CODECS,
                   help="--train: gradient frames' floats (default float32)")
    add_config_flags(p, TrainConfig, skip={a.dest for a in p._actions})


def _up(args) -> int:
    from .up import up

    if args.train:  # networked training: agents/learn.py
        from .learn import train_networked

        return train_networked(args)
    cfg = run_config(args)
    _check_up(args, cfg)
    out_folder(args.out)  # the last check: a refused run leaves no folder
    return up(args, cfg)


def _check_up(args, cfg: RunConfig) -> None:
    """Whatever a role would refuse after the start, refused here, before it."""
    from agents.agent import pick_device
    from agents.launcher import port_in_use
    from broker.bus import parse_url

    checked(pick_device, args.device)
    parse_url(args.bus)  # a BusError
    curve(args)  # a keys folder without keys: a CurveError
    if args.faults:  # a FaultError, not the broker's after the start
        from broker.faults_file import load_faults

        load_faults(args.faults)
    if args.checkpoint:  # not every agent's, after the world has started
        from agents.envs import make
        from agents.policy import load_checkpoint

        env = make(cfg.env, 1, 0, cfg.agents)
        checked(load_checkpoint, args.checkpoint, cfg.env, env.obs_dim, env.n_actions, cfg.agents)
    if args.broker and (args.port or args.faults):
        raise Refused("--broker uses a running broker: --port and --faults belong to the one it runs")
    if args.port and port_in_use(args.port):
        raise Refused(f"port {args.port} on 127.0.0.1 is in use; pick another --port or leave it out")


def add_world(sub) -> None:
    p = sub.add_parser("world", help="run the world process (env instances, lockstep)")
    add_run_flags(p)  # the sync service's fields too: the world's summary records the whole run
    add_config_json(p)
    add_common(p)
    add_broker(p)
    p.add_argument("--out", help="run folder for metrics.jsonl and summary.json (default: print the summary)")
    p.set_defaults(func=_world, quick_exit=True)  # a role: see cli.quick_exit


def _world(args) -> int:
    from agents.world import World
    from broker.peer import BrokerLost

    from .summary import render_summary

    cfg = run_config(args)
    out = out_folder(args.out) if args.out else None
    stopped = stop_flag()  # before registering: a SIGTERM once the broker lists the world is a clean stop
    world = checked(World, args.broker, cfg, out, bus_url=args.bus, curve=curve(args), run=args.run)
    try:
        summary = world.run(stopped)
    except TimeoutError as e:  # agents that never joined
        raise Refused(str(e)) from None
    except BrokerLost as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if summary is None:
        print("stopped before step 0", file=sys.stderr)
        return 130
    print(render_summary(summary))
    return 0


def add_agent(sub) -> None:
    p = sub.add_parser("agent", help="run one agent process")
    add_broker(p)
    add_agent_id(p)
    add_device(p)
    p.add_argument("--checkpoint", help="policy checkpoint (default: untrained, seeded from the world's config)")
    p.add_argument("--record", help="pickle every step's z_hat, received z_hat and actions here (for tests)")
    add_common(p)
    p.set_defaults(func=_agent, quick_exit=True)  # a role: see cli.quick_exit


def _agent(args) -> int:
    from agents.agent import Agent, wanted_agent_id
    from agents.policy import CheckpointError

    agent = checked(Agent, args.broker, wanted_agent_id(args.id), args.device, args.checkpoint, record=bool(args.record),
                    curve=curve(args), bus_url=args.bus, run=args.run)
    try:
        stats = agent.run(stop_flag())
    except CheckpointError as e:  # it fits only once the world's config says env and agents
        raise Refused(str(e)) from None
    if args.record:
        with open(args.record, "wb") as fh:
            pickle.dump(stats.record, fh)
    return 0


def add_broker_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the broker")
    p.add_argument("--bind", default=DEFAULT_BIND, help=f"ROUTER endpoint (env DDCL_BIND; default {DEFAULT_BIND})")
    p.add_argument("--heartbeat", type=positive_float, default=1.0, help="heartbeat interval, seconds (default 1)")
    p.add_argument("--log-dir", help="folder for faults.jsonl (the run folder)")
    p.add_argument("--faults", help="TOML file of faults triggered by world step")
    p.add_argument("--max-message", type=int_in(1024, 1 << 30), default=1 << 22,
                   help="largest message in bytes, all its frames; larger ones are counted as oversize and dropped "
                        "(default 4194304: B = 4096 observations fit)")
    p.add_argument("--bundle", action=argparse.BooleanOptionalAction, default=False,
                   help="deliver a step's agent messages as one message per recipient, N sends a step instead of "
                        "N(N-1) (default off: no faster on 2 to 16 agents here; see docs/performance.md)")
    p.add_argument("--bundle-wait", type=positive_float, default=20.0,
                   help="milliseconds a bundle waits for a step's last speaker before it goes out as it is (default 20)")
    add_common(p)
    p.set_defaults(func=_broker_serve, quick_exit=True)  # a role: see cli.quick_exit


def _broker_serve(args) -> int:
    import zmq

    from broker.bus import EMBEDDED, Publisher
    from broker.faults_file import load_faults
    from broker.limits import cap_open_files
    from broker.server import Broker

    cap_open_files()
    schedule = load_faults(args.faults) if args.faults else []
    if args.log_dir:
        out_folder(args.log_dir, "--log-dir")
    bus = None if args.bus == EMBEDDED else Publisher(args.bus, args.run, "broker")
    try:
        broker = Broker(args.bind, heartbeat_s=args.heartbeat, log_dir=args.log_dir, bus=bus, run=args.run,
                        curve=curve(args), max_message=args.max_message,
                        bundle=args.bundle_wait / 1000 if args.bundle else None)
    except zmq.ZMQError as e:  # the endpoint is taken or malformed
        if bus:
            bus.close()
        raise Refused(f"cannot bind {args.bind}: {e.strerror}") from None
    broker.schedule(schedule)
    logging.getLogger("ddcl.broker").info("broker listening on %s", broker.endpoint)
    try:
        broker.serve(stop_flag())
    finally:
        if bus:
            bus.close()
    return 0


def add_sync_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the sync service")
    add_broker(p)
    add_run_flags(p, skip=[f.name for f in fields(RunConfig) if f.name not in SYNC_FIELDS])
    add_config_json(p)
    add_common(p)
    p.set_defaults(func=_sync_serve, quick_exit=True)  # a role: see cli.quick_exit


def _sync_serve(args) -> int:
    from broker import sync

    cfg = run_config(args, whole=False)  # the schedule's fields: this process loads no torch
    sync.serve(args.broker, cfg.seed, cfg.epoch_seed, cfg.epoch_steps, cfg.beacon_every, stop_flag(),
               bus_url=args.bus, run=args.run, curve=curve(args))
    return 0
