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
import re
import signal
import sys
from pathlib import Path

from agents.train_config import AGGREGATES, CODECS, CORES, RATE_LOSSES  # torch-free, like everything the parser needs

DEFAULT_BROKER = os.environ.get("DDCL_BROKER", "tcp://127.0.0.1:5555")
DEFAULT_BIND = os.environ.get("DDCL_BIND", "tcp://127.0.0.1:5555")


def int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer from lo to hi (no upper limit when None)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if hi is None and v < lo:
            raise argparse.ArgumentTypeError(f"{v} is below {lo}")
        if hi is not None and not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is outside {lo}..{hi}")
        return v
    return parse


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return v


def int_list(lo: int | None = None):
    """An argparse type: comma-separated integers, each at least lo (when given)."""
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
        if lo is not None and min(values) < lo:
            raise argparse.ArgumentTypeError(f"{min(values)} is below {lo}")
        return values
    return parse


def device_name(text: str) -> str:
    """An argparse type: a torch device this project runs on (whether it is there is
    checked before anything starts: agents.agent.pick_device)."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N")


class Parser(argparse.ArgumentParser):
    """argparse, with a bad command line refused in one line (`ddcl ...: error: why; see
    --help`) as every other bad input is, and negative numbers in any float form (-1e7,
    -.5) taken as values, not as options (argparse knows only -5 and -0.5)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(kind: type):
    """An argparse type: an int or float, its error in words."""
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    parse.__name__ = kind.__name__
    return parse


class Refused(Exception):
    """Bad input: `main` prints it on one line and exits with status 2."""


def checked(fn, *args, **kwargs):
    """fn(*args, **kwargs), its ValueError (how configs, devices, sync modes and checkpoints
    say the input is bad) turned into Refused."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise Refused(str(e)) from None


def out_folder(path: str, flag: str = "--out") -> Path:
    """The folder a command writes to, created; one that cannot be is refused before
    anything starts."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise Refused(f"{flag} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise Refused(f"{flag} {folder}: cannot create it ({e.strerror})") from None
    return folder


POSITIVE, COUNT = int_in(1), int_in(0)
SEED32 = int_in(0, 2**32 - 1)  # a run seed keys Philox: 32 bits


def field_docs(cls) -> dict[str, str]:
    """The one-line comment after each dataclass field: the config's own documentation."""
    import inspect

    return dict(re.findall(r"^\s+(\w+): [^=]+=[^#]+#\s*(.+)$", inspect.getsource(cls), re.M))


def stop_flag():
    """SIGINT/SIGTERM set a flag the role's loop polls, so every socket closes cleanly; a
    second one stops at once (KeyboardInterrupt: status 130), for a user who will not wait
    for the clean stop (a training's final evaluation, say)."""
    flag = []

    def handler(signum, _frame):
        flag.append(signum)
        if len(flag) > 1:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return lambda: bool(flag)


def _curve(args):
    if not getattr(args, "keys", None):
        return None
    from broker.curve import Curve

    return Curve(args.keys)


def _broker_serve(args) -> int:
    from broker.bus import EMBEDDED, Publisher
    from broker.faults_file import load_faults
    from broker.limits import cap_open_files
    from broker.server import Broker
    import zmq

    cap_open_files()
    schedule = load_faults(args.faults) if args.faults else []
    if args.log_dir:
        out_folder(args.log_dir, "--log-dir")
    bus = None if args.bus == EMBEDDED else Publisher(args.bus, args.run, "broker")
    try:
        b = Broker(args.bind, heartbeat_s=args.heartbeat, log_dir=args.log_dir, bus=bus, run=args.run,
                   curve=_curve(args), max_message=args.max_message,
                   bundle=args.bundle_wait / 1000 if args.bundle else None)
    except zmq.ZMQError as e:  # the endpoint is taken or malformed
        if bus:
            bus.close()
        raise Refused(f"cannot bind {args.bind}: {e.strerror}") from None
    b.schedule(schedule)
    logging.getLogger("ddcl.broker").info("broker listening on %s", b.endpoint)
    try:
        b.serve(stop_flag())
    finally:
        if bus:
            bus.close()
    return 0


def _broker_stats(args) -> int:
    from bench.common import table
    from broker.peer import Peer

    with Peer(args.broker, b"cli", curve=_curve(args)) as p:
        s = p.stats(args.timeout)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    b, f = s["bytes_per_step"], s["float32_bytes_per_step"]
    at = f"step {s['step']} ({s['steps']} steps seen)" if s["step"] is not None else "no run has stepped yet"
    print(f"broker at {args.broker}: {at}; peers: {', '.join(sorted(s['peers'])) or 'none'}")
    print(table(["agent msgs/step", "payload", "header", "framing", "total", "as float32"],
                [[d, b[d]["payload"], b[d]["header"], b[d]["framing"], b[d]["total"], f[d]["total"]] for d in ("up", "down", "sum")]))
    if last := s["last_step_message_bytes"]:
        print(f"last step: {last['up']} B up, {last['down']} B down, {last['total']} B of agent messages")

    def counts(d: dict) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d.items())

    print(f"messages: {counts(s['messages'])}; other frames: {counts(s['other'])}")
    return 0


def _broker_fault(args) -> int:
    from broker.peer import Peer
    from broker import protocol as P

    if args.fault_cmd == "list":
        req = {"op": "fault-list"}
    elif args.fault_cmd == "clear":
        if args.all == (args.id is not None):
            raise Refused("give a fault ID or --all")
        req = {"op": "fault-clear", "id": args.id}
    else:
        req = {"op": "fault-add", "kind": args.fault_cmd, "target": getattr(args, "agent", None) or args.link,
               "value": args.value}
    with Peer(args.broker, b"cli", curve=_curve(args)) as p:
        reply = p.request([P.CONTROL, P.pack(req)], P.CONTROL_REPLY, args.timeout)
    if not reply.get("ok"):
        raise Refused(reply.get("error"))
    if args.json:
        print(json.dumps(reply, indent=2))
    elif args.fault_cmd == "list":
        faults = reply["faults"]
        step = reply.get("step")
        print(f"{len(faults)} active fault(s) " + (f"at step {step}" if step is not None else "(no run has stepped yet)"))
        for f in faults:
            print(f"  {f['id']:>3}  {f['kind']:<12} {f['target']:<20} {f['value']:g}  (since step {f['step']})")
    elif args.fault_cmd == "clear":
        print(f"cleared {', '.join(str(f['id']) for f in reply['cleared']) or 'nothing'}")
    else:
        f = reply["fault"]
        print(f"fault {f['id']}: {f['kind']} {f['target']} {f['value']:g} (step {f['step']})")
    return 0


def _keys_gen(args) -> int:
    from broker.curve import generate

    for path in generate(args.dir):
        print(f"wrote {path}")
    print(f"authorized clients: {args.dir}/authorized/ ; use --keys {args.dir} on every role")
    return 0


def _sync_serve(args) -> int:
    from broker import sync

    sync.serve(args.broker, args.seed, args.epoch_seed, args.epoch_steps, args.beacon_every, stop_flag(),
               bus_url=args.bus, run=args.run, curve=_curve(args))
    return 0


def _world(args) -> int:
    from agents.envs import default_agents
    from agents.run_config import RunConfig
    from agents.world import World
    from broker.peer import BrokerLost

    cfg = RunConfig(env=args.env, agents=args.agents or default_agents(args.env), batch=args.batch,
                    steps=args.steps, codec=args.codec, seed=args.seed, deadline_s=args.deadline, sync=args.sync,
                    clock=args.clock, tick_s=args.tick, core=args.core, aggregate=args.aggregate,
                    broker_timeout_s=args.broker_timeout)
    out = out_folder(args.out) if args.out else None
    stopped = stop_flag()  # before registering: a SIGTERM once the broker lists the world is a clean stop
    world = checked(World, args.broker, cfg, out, bus_url=args.bus, curve=_curve(args), run=args.run)
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
    from agents.launcher import render_summary

    print(render_summary(summary))
    return 0


def _agent(args) -> int:
    from agents.agent import Agent, wanted_agent_id
    from agents.policy import CheckpointError

    agent = checked(Agent, args.broker, wanted_agent_id(args.id), args.device, args.checkpoint, record=bool(args.record),
                    curve=_curve(args), bus_url=args.bus, run=args.run)
    try:
        stats = agent.run(stop_flag())
    except CheckpointError as e:  # it fits only once the world's config says env and agents
        raise Refused(str(e)) from None
    if args.record:
        with open(args.record, "wb") as fh:
            pickle.dump(stats.record, fh)
    return 0


def _up(args) -> int:
    from agents.agent import pick_device
    from agents.envs import default_agents
    from agents.launcher import port_in_use, up
    from agents.message import SyncMode
    from broker.bus import parse_url

    args.agents = args.agents or default_agents(args.env)
    if args.train:  # networked training: agents/learn.py
        from agents.learn import config_from, read_summary, render, train_up

        cfg = checked(config_from, args)
        checked(pick_device, cfg.device)
        rc = train_up(cfg, out_folder(args.out), args.grad_codec, cfg.device)
        if rc in (0, 130) and (s := read_summary(args.out)):
            _print_final(s)
            print(render(s) + f"\nwrote {args.out}/checkpoint.pt")
        return rc
    checked(SyncMode.parse, args.sync)
    checked(pick_device, args.device)
    parse_url(args.bus)  # a BusError here, not from every process after the start
    _curve(args)  # a keys folder without keys: a CurveError here, likewise
    if args.faults:  # refused here (FaultError), not by the broker after the start
        from broker.faults_file import load_faults

        load_faults(args.faults)
    if args.checkpoint:  # refused here, not by every agent after the world has started
        from agents.envs import make
        from agents.policy import load_checkpoint

        env = make(args.env, 1, 0, args.agents)
        checked(load_checkpoint, args.checkpoint, args.env, env.obs_dim, env.n_actions, args.agents)
    if args.broker and (args.port or args.faults):
        raise Refused("--broker uses a running broker: --port and --faults belong to the one it runs")
    if args.port and port_in_use(args.port):
        raise Refused(f"port {args.port} on 127.0.0.1 is in use; pick another --port or leave it out")
    out_folder(args.out)  # the last check: a refused run leaves no folder
    return up(args)


def _sweep(args) -> int:
    from agents.message import SyncMode
    from agents.sweep import sweep_skew

    for mode in args.sync.split(","):  # refused here, not by a run halfway through the grid
        checked(SyncMode.parse, mode)
    out_folder(args.out)
    return sweep_skew(args)


def _bus_sub(args) -> int:
    import asyncio

    from broker.bus import BusClient
    from broker.protocol import HEARTBEAT_S, LIVENESS

    async def main() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):  # explicitly: a background job starts with SIGINT ignored
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        async with BusClient(args.bus, args.run, broker=args.broker) as c:
            await c.subscribe(args.topic)
            seen, missing = 0, False
            while not stop.is_set() and (args.count == 0 or seen < args.count):
                m = await c.next_message(0.5)
                if m is not None:
                    seen += 1
                    for line in m.payload.decode(errors="replace").splitlines() or [""]:  # metrics come in batches
                        print(m.topic, line, flush=True)
                if missing != (c.silent_s() > LIVENESS * HEARTBEAT_S):  # the embedded bus's broker
                    missing = not missing
                    print(f"[bus] no word from the broker at {args.broker}; waiting for it" if missing
                          else "[bus] the broker answers again", file=sys.stderr, flush=True)

    asyncio.run(main())
    return 0


def _train(args) -> int:
    from agents.agent import pick_device
    from agents.policy import CheckpointError
    from agents.train import train
    from agents.train_config import TrainConfig

    fields = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if getattr(args, f, None) is not None}
    cfg = TrainConfig(**fields)
    checked(cfg.validate)
    checked(pick_device, cfg.device)
    out = out_folder(args.out)
    try:
        s = train(cfg, out, should_stop=stop_flag())
    except CheckpointError as e:  # --init's checkpoint does not fit
        raise Refused(str(e)) from None
    _print_final(s)
    print(f"{s['env_steps_per_s']:.0f} env steps/s on {s['device']}; wrote {out}/checkpoint.pt")
    if s["updates_done"] < cfg.updates:
        print(f"stopped at update {s['updates_done']} of {cfg.updates}")
        return 130
    return 0


def _print_final(s: dict) -> None:
    """The held-out evaluation of `ddcl train` and `ddcl evaluate`."""
    cfg, f = s["config"], s["final"]
    codec = cfg["codec"]
    bits = [a["bits_per_message"][codec] for a in f["agents"]]
    mean = sum(bits) / len(bits)
    print(f"success {f['success_rate']:.4f} over {cfg['batch']} episodes ({f['episode_steps']:.1f} steps per "
          f"episode); {s['no_communication_success']:.4f} with the messages silenced")
    print(f"real bits per message ({codec}): " + ", ".join(f"agent {k} {b:.2f}" for k, b in enumerate(bits))
          + f"; mean {mean:.3f}, {32 * cfg['msg_dim'] / mean if mean else float('inf'):.0f} x fewer than "
          f"{cfg['msg_dim']} float32 values")
    if "goal_frequency_fit" in s:
        g = s["goal_frequency_fit"]
        # weighted by goal probability, not by message count: long episodes weigh no more
        print(f"goal: speaker {g['mean_bits']:.2f} bits/msg averaged over goals (goal entropy "
              f"{g['shannon_bound_bits']:.2f}), r(goal probability, bits) = {g['pearson_r']:.3f}")
        won = f["success_by_goal"]
        print("per goal, most to least frequent: bits " + " ".join(f"{b:.2f}" for b in g["bits"])
              + "; success " + " ".join(f"{won[k]:.3f}" for k in g["goals"]))


def _evaluate(args) -> int:
    from agents.train import evaluate_run

    s = checked(evaluate_run, args.run, args.episodes, args.seed, args.device)
    _print_final(s)
    trained, here = s["trained_on"], s["device"]
    if trained and trained != here and args.episodes is None and args.seed is None:
        # a CUDA env draws its episodes from CUDA's generator: not the run's own episodes
        print(f"note: trained on {trained}, evaluated on {here}: other episodes than the run's, so these "
              f"figures differ from its summary (evaluate on {trained} to reproduce them)")
    return 0


def _report(args) -> int:
    from agents.report import report

    try:
        for path in report(args.run):
            print(f"wrote {path}")
    except FileNotFoundError as e:
        raise Refused(str(e)) from None
    return 0


def _bench_channel(args) -> int:
    from bench import channel_bench

    print(channel_bench.run(budget_s=args.budget))
    return 0


def _bench_fuzz(args) -> int:
    from bench import fuzz

    if args.target == "broker":
        from bench import broker_fuzz

        report = broker_fuzz.run(args.inputs, args.seed)
        print(broker_fuzz.render(report))
        return 0 if report["ok"] else 1
    print(f"fuzzing frame.unpack + codec decode with {args.inputs} inputs (seed {args.seed})")
    stats = fuzz.run(args.inputs, args.seed)
    print(f"inputs: {stats['inputs']}  accepted: {stats['accepted']}  rejected (typed error): "
          f"{stats['rejected']}  untyped failures: {len(stats['bugs'])}")
    for bug in stats["bugs"][:20]:
        print("  BUG", bug)
    return 1 if stats["bugs"] else 0


def _bench_soak(args) -> int:
    from bench import soak

    print(f"soak: goal, {args.agents} agents, B = {args.batch}, {args.steps} steps; run folder {args.out}")
    report = soak.run(args.agents, args.steps, args.batch, out_folder(args.out), progress=lambda t: print(t, file=sys.stderr))
    print(soak.render(report))
    print(f"\nwrote {Path(args.out) / 'soak.json'} and {Path(args.out) / 'soak.png'}")
    return 0 if report["identity"] and report["lost"] == 0 else 1


def _losses(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    bad = [x for x in names if x not in RATE_LOSSES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown rate loss {', '.join(bad) or text!r}; choose from {', '.join(RATE_LOSSES)}")
    return names


def _bench_train(args) -> int:
    from agents.agent import pick_device
    from bench import train_bench

    checked(pick_device, args.device)
    print(train_bench.run(args.updates, args.batch, args.lam, args.msg_dim, args.seed, args.device, args.losses))
    return 0


def _bench_envs(args) -> int:
    from bench import env_bench

    print(env_bench.run(args.batches, args.budget))
    return 0


def _bench_net(args) -> int:
    from agents.agent import pick_device
    from bench import net_bench

    checked(pick_device, args.device)
    print(net_bench.run(steps=args.steps, agents=args.agents, batches=args.batches, repeat=args.repeat,
                        device=args.device))
    return 0


def _bench_layer(args) -> int:
    import torch

    from bench import layer_bench

    torch.set_num_threads(args.threads)
    print(layer_bench.run(args.budget, args.rounds))
    return 0


def _bench_scaling(args) -> int:
    from bench import scaling

    print(scaling.run(tuple(args.agents), tuple(args.batches), args.steps, args.device))
    return 0


def _bench_timeline(args) -> int:
    from agents.agent import pick_device
    from bench import timeline

    checked(pick_device, args.device)
    try:
        print(timeline.run(args.agents, args.batch, args.steps, args.device))
    except RuntimeError as e:  # the run failed, or was too short to read
        raise Refused(str(e)) from None
    return 0


def _add_run_args(p, steps: int = 500) -> None:
    from agents.envs import ENVS

    p.add_argument("--env", default="goal", choices=sorted(ENVS), help="environment (default goal)")
    p.add_argument("--agents", type=POSITIVE, help="agent processes (default: the env's cars or predators; 2 for goal)")
    p.add_argument("--batch", type=POSITIVE, default=1, help="parallel env instances B (default 1)")
    p.add_argument("--steps", type=POSITIVE, default=steps, help=f"lockstep steps (default {steps})")
    p.add_argument("--codec", default="rice", choices=CODECS, help="message codec (default rice)")
    p.add_argument("--seed", type=SEED32, default=0, help="run seed (default 0)")
    p.add_argument("--deadline", type=positive_float, default=1.0, help="per-step wait for actions, seconds (default 1)")
    p.add_argument("--sync", default="implicit", help="implicit | stamped | checked:K (default implicit)")
    p.add_argument("--clock", default="logical", choices=["logical", "wall"], help="noise clock (default logical)")
    p.add_argument("--tick", type=positive_float, default=0.1, help="wall clock: seconds per step (default 0.1)")
    p.add_argument("--core", default="mlp", choices=CORES, help="untrained policies: mlp | gru (default mlp)")
    p.add_argument("--aggregate", default="mean", choices=AGGREGATES,
                   help="untrained policies: how heard messages combine (default mean)")
    _add_common(p)


def _add_common(p) -> None:
    """Bus, run name and CURVE keys: every role takes them."""
    p.add_argument("--bus", default=os.environ.get("DDCL_BUS", "embedded"),
                   help="telemetry bus: embedded or mqtt://host:port (env DDCL_BUS; default embedded)")
    p.add_argument("--run", default=os.environ.get("DDCL_RUN", "default"), help="run name in bus topics (default default)")
    p.add_argument("--keys", default=os.environ.get("DDCL_KEYS"), help="CURVE keys folder from `ddcl keys gen` (env DDCL_KEYS)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ddcl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run broker, sync, world and agents as processes; print the result")
    _add_run_args(up)
    up.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    up.add_argument("--port", type=int_in(0, 65535), default=0, help="broker TCP port on 127.0.0.1 (default: a free one)")
    up.add_argument("--bundle", action=argparse.BooleanOptionalAction, default=False,
                    help="the broker bundles a step's agent messages per recipient (default off)")
    up.add_argument("--broker", help="endpoint of a running broker to use instead of starting one (e.g. tcp://host:5555)")
    up.add_argument("--device", type=device_name, default="auto", help="agent torch device: auto, cpu, cuda (default auto)")
    up.add_argument("--checkpoint", help="policy checkpoint for the agents (default: untrained, seeded)")
    up.add_argument("--faults", help="TOML file of faults triggered by step (see docs/running.md#faults)")
    up.add_argument("--beacon-every", type=COUNT, default=10, help="sync beacon period in steps, 0 = none (default 10)")
    up.add_argument("--epoch-steps", type=COUNT, default=0, help="rotate the epoch seed every E steps, 0 = never (default 0)")
    from agents.learn import add_train_flags

    add_train_flags(up)  # --train and TrainConfig's options
    up.set_defaults(func=_up)

    tr = sub.add_parser("train", help="train DDCL policies in-process (A2C); write a checkpoint")
    from agents.train_config import TrainConfig

    docs = field_docs(TrainConfig)
    for name, f in TrainConfig.__dataclass_fields__.items():
        kind = {"action": argparse.BooleanOptionalAction} if isinstance(f.default, bool) else {"type": type(f.default)}
        tr.add_argument("--" + name.replace("_", "-"), dest=name, **kind,
                        help=f"{docs.get(name, '')} (default {f.default})")
    tr.add_argument("--out", default="runs/train", help="output folder (default runs/train)")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="rerun a `ddcl train` folder's held-out evaluation, on more episodes")
    ev.add_argument("run", help="the folder `ddcl train --out` wrote")
    ev.add_argument("--episodes", type=POSITIVE, help="fresh instances, one episode each (default: the run's batch)")
    ev.add_argument("--seed", type=COUNT, help="evaluation seed (default: the run's; with the default episodes this "
                                             "reproduces the run's final figures)")
    ev.add_argument("--device", type=device_name, default="auto", help="torch device (default auto)")
    ev.set_defaults(func=_evaluate)

    rp = sub.add_parser("report", help="PNG plots of a `ddcl train` folder")
    rp.add_argument("run", help="the folder `ddcl train --out` wrote")
    rp.set_defaults(func=_report)

    broker = sub.add_parser("broker", help="the ZeroMQ broker and its CLI")
    bsub = broker.add_subparsers(dest="broker_cmd", required=True, metavar="ACTION")
    b = bsub.add_parser("serve", help="run the broker")
    b.add_argument("--bind", default=DEFAULT_BIND, help=f"ROUTER endpoint (env DDCL_BIND; default {DEFAULT_BIND})")
    b.add_argument("--heartbeat", type=positive_float, default=1.0, help="heartbeat interval, seconds (default 1)")
    b.add_argument("--log-dir", help="folder for faults.jsonl (the run folder)")
    b.add_argument("--faults", help="TOML file of faults triggered by world step")
    b.add_argument("--max-message", type=int_in(1024, 1 << 30), default=1 << 22,
                   help="largest message in bytes, all its frames; larger ones are counted as oversize and dropped "
                        "(default 4194304: B = 4096 observations fit)")
    b.add_argument("--bundle", action=argparse.BooleanOptionalAction, default=False,
                   help="deliver a step's agent messages as one message per recipient, N sends a step instead of "
                        "N(N-1) (default off: no faster on 2 to 16 agents here; see docs/performance.md)")
    b.add_argument("--bundle-wait", type=positive_float, default=20.0,
                   help="milliseconds a bundle waits for a step's last speaker before it goes out as it is (default 20)")
    _add_common(b)
    b.set_defaults(func=_broker_serve)
    b = bsub.add_parser("stats", help="live per-step byte figures of a running broker")
    b.add_argument("--broker", default=DEFAULT_BROKER, help=f"broker endpoint (env DDCL_BROKER; default {DEFAULT_BROKER})")
    b.add_argument("--json", action="store_true", help="print the raw JSON")
    b.add_argument("--timeout", type=positive_float, default=3.0, help="seconds to wait for the broker (default 3)")
    _add_common(b)
    b.set_defaults(func=_broker_stats)

    f = bsub.add_parser("fault", help="inject, list and clear faults in a running broker")
    fsub = f.add_subparsers(dest="fault_cmd", required=True, metavar="FAULT")
    specs = [
        ("skew", "shift an agent's clock: STEPS (logical) or milliseconds (wall)", "agent", int),
        ("drift", "make an agent's clock drift: PPM", "agent", float),
        ("beacon-loss", "drop the next sync beacons to an agent (--count N, default 1)", "agent", None),
        ("stale-seed", "withhold new epoch seeds (all beacons) from an agent until cleared", "agent", None),
        ("delay", "hold agent messages MS milliseconds", "link", float),
        ("drop", "drop agent messages with probability P", "link", float),
        ("duplicate", "duplicate agent messages with probability P", "link", float),
        ("reorder", "shuffle agent messages in windows of WINDOW", "link", int),
    ]
    for name, text, target, vtype in specs:
        fp = fsub.add_parser(name, help=text)
        if target == "agent":
            fp.add_argument("agent", help="target agent, e.g. agent-1")
        else:
            fp.add_argument("--link", default="*", help="agent-J>agent-K, agent-K (all its links) or * (default)")
        if name == "beacon-loss":
            fp.add_argument("--count", dest="value", type=int, default=1, help="beacons to drop (default 1)")
        elif vtype is not None:
            fp.add_argument("value", type=number(vtype), help=text.split(": ")[-1] if ": " in text else "value")
        else:
            fp.set_defaults(value=None)
    fsub.add_parser("list", help="the active faults")
    fc = fsub.add_parser("clear", help="remove one fault (ID) or all (--all)")
    fc.add_argument("id", type=int, nargs="?", help="fault id from `list`")
    fc.add_argument("--all", action="store_true", help="remove every fault")
    for fp in fsub.choices.values():
        fp.add_argument("--broker", default=DEFAULT_BROKER, help="broker endpoint (env DDCL_BROKER)")
        fp.add_argument("--json", action="store_true", help="print the raw reply")
        fp.add_argument("--timeout", type=positive_float, default=3.0, help="seconds to wait for the broker (default 3)")
        fp.add_argument("--keys", default=os.environ.get("DDCL_KEYS"), help="CURVE keys folder (env DDCL_KEYS)")
        fp.set_defaults(func=_broker_fault)

    keys = sub.add_parser("keys", help="CURVE keys for the control endpoint and data plane")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    k = ksub.add_parser("gen", help="write a server and a client keypair, client authorized")
    k.add_argument("dir", help="keys folder")
    k.set_defaults(func=_keys_gen)

    sweep = sub.add_parser("sweep", help="run grids of networked runs")
    swsub = sweep.add_subparsers(dest="sweep_cmd", required=True, metavar="GRID")
    sw = swsub.add_parser("skew", help="success and bits against clock skew, one line per sync mode")
    sw.add_argument("--values", type=int_list(), default="0,1,2,4,8,16", help="skews of agent-1, in steps (default 0,1,2,4,8,16)")
    sw.add_argument("--sync", default="implicit,stamped,checked:2", help="sync modes (default implicit,stamped,checked:2)")
    sw.add_argument("--steps", type=POSITIVE, default=300, help="steps per run (default 300)")
    sw.add_argument("--batch", type=POSITIVE, default=32, help="env instances per run (default 32)")
    sw.add_argument("--codec", default="rice", choices=CODECS, help="message codec (default rice)")
    sw.add_argument("--checkpoint", help="trained policy (default: untrained)")
    sw.add_argument("--out", default="runs/sweep-skew", help="folder for runs, CSV and PNG (default runs/sweep-skew)")
    sw.set_defaults(func=_sweep)

    bus = sub.add_parser("bus", help="the control/telemetry bus")
    bbsub = bus.add_subparsers(dest="bus_cmd", required=True, metavar="ACTION")
    bs = bbsub.add_parser("sub", help="print bus messages (like mosquitto_sub -t 'ddcl/#' -v)")
    bs.add_argument("--topic", default="#", help="filter under ddcl/<run>/ (default #)")
    bs.add_argument("--count", type=COUNT, default=0, help="stop after N messages (default: never)")
    bs.add_argument("--broker", default=DEFAULT_BROKER, help="broker endpoint for the embedded bus")
    _add_common(bs)
    bs.set_defaults(func=_bus_sub)

    sync = sub.add_parser("sync", help="the PRNG synchronization service")
    ssub = sync.add_subparsers(dest="sync_cmd", required=True, metavar="ACTION")
    s = ssub.add_parser("serve", help="run the sync service")
    s.add_argument("--broker", default=DEFAULT_BROKER, help="broker endpoint (env DDCL_BROKER)")
    s.add_argument("--seed", type=SEED32, default=0, help="run seed (default 0)")
    s.add_argument("--epoch-seed", type=int_in(0, 0xFFFFFF), default=1, help="seed of epoch 0 (default 1)")
    s.add_argument("--epoch-steps", type=COUNT, default=0, help="rotate the epoch seed every E steps, 0 = never (default 0)")
    s.add_argument("--beacon-every", type=COUNT, default=10, help="beacon period in world steps, 0 = none (default 10)")
    _add_common(s)
    s.set_defaults(func=_sync_serve)

    w = sub.add_parser("world", help="run the world process (env instances, lockstep)")
    _add_run_args(w)
    w.add_argument("--broker", default=DEFAULT_BROKER, help="broker endpoint (env DDCL_BROKER)")
    w.add_argument("--out", help="run folder for metrics.jsonl and summary.json (default: print the summary)")
    w.add_argument("--broker-timeout", type=positive_float, default=10.0,
                   help="seconds a silent broker has to come back (restarted) before the run ends with status 1 "
                        "(default 10)")
    w.set_defaults(func=_world)

    a = sub.add_parser("agent", help="run one agent process")
    a.add_argument("--broker", default=DEFAULT_BROKER, help="broker endpoint (env DDCL_BROKER)")
    a.add_argument("--id", default=os.environ.get("DDCL_AGENT_ID", ""), help="agent-K to claim, or a StatefulSet pod name NAME-K for agent-K "
                        "(env DDCL_AGENT_ID; default: the broker assigns one)")
    a.add_argument("--device", type=device_name, default="auto", help="torch device: auto, cpu, cuda (default auto)")
    a.add_argument("--checkpoint", help="policy checkpoint (default: untrained, seeded from the world's config)")
    a.add_argument("--record", help="pickle every step's z_hat, received z_hat and actions here (for tests)")
    _add_common(a)
    a.set_defaults(func=_agent)

    bench = sub.add_parser("bench", help="benchmarks (not tests): print a table")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    b = bsub.add_parser("channel", help="codec bits vs entropy, codec and noise throughput")
    b.add_argument("--budget", type=positive_float, default=0.2, help="seconds per timing (default 0.2)")
    b.set_defaults(func=_bench_channel)
    b = bsub.add_parser("fuzz", help="random and mutated input into the frame/codec parsers or a live broker")
    b.add_argument("--target", choices=["parsers", "broker"], default="parsers",
                   help="parsers: frame and codec decoders in-process; broker: a live broker over ZeroMQ and raw TCP, "
                        "then a normal run against it (default parsers)")
    b.add_argument("--inputs", type=POSITIVE, default=100_000, help="inputs to try (default 100000)")
    b.add_argument("--seed", type=COUNT, default=0, help="random seed (default 0)")
    b.set_defaults(func=_bench_fuzz)
    b = bsub.add_parser("soak", help="many agents for many steps: messages all accounted, RSS slope, step time")
    b.add_argument("--agents", type=int_in(2, 254), default=16, help="agent processes (default 16)")
    b.add_argument("--steps", type=POSITIVE, default=100_000, help="lockstep steps (default 100000)")
    b.add_argument("--batch", type=POSITIVE, default=1, help="env instances B (default 1)")
    b.add_argument("--out", default="runs/soak", help="run folder: logs, metrics, soak.json, soak.png (default runs/soak)")
    b.set_defaults(func=_bench_soak)
    b = bsub.add_parser("train", help="goal toy: one training per rate loss, real bits of every codec")
    b.add_argument("--updates", type=POSITIVE, default=4000, help="updates per run (default 4000)")
    b.add_argument("--batch", type=POSITIVE, default=512, help="env instances (default 512)")
    b.add_argument("--lam", type=float, default=0.015, help="rate weight (default 0.015)")
    b.add_argument("--msg-dim", type=POSITIVE, default=1, help="message dimensions (default 1)")
    b.add_argument("--seed", type=COUNT, default=0, help="seed (default 0)")
    b.add_argument("--device", type=device_name, default="auto", help="torch device (default auto)")
    b.add_argument("--losses", type=_losses, default=",".join(RATE_LOSSES),
                   help=f"rate losses to train, comma-separated (default {','.join(RATE_LOSSES)})")
    b.set_defaults(func=_bench_train)
    b = bsub.add_parser("envs", help="env steps/s of the batched torch envs per device and B")
    b.add_argument("--batches", type=int_list(1), default="1,256,4096", help="batch sizes (default 1,256,4096)")
    b.add_argument("--budget", type=positive_float, default=0.5, help="seconds per measurement (default 0.5)")
    b.set_defaults(func=_bench_envs)
    b = bsub.add_parser("net", help="pyzmq round-trip floor, then lockstep steps/s and latency")
    b.add_argument("--steps", type=POSITIVE, default=1000,
                   help="measured steps per run, after 300 warm-up steps (default 1000)")
    b.add_argument("--agents", type=int_list(2), default="2,4,8", help="agent counts (default 2,4,8)")
    b.add_argument("--batches", type=int_list(1), default="1,256", help="batch sizes (default 1,256)")
    b.add_argument("--repeat", type=POSITIVE, default=3, help="runs per configuration; the row is the median (default 3)")
    b.add_argument("--device", type=device_name, default="cpu", help="the agents' torch device (default cpu)")
    b.set_defaults(func=_bench_net)
    b = bsub.add_parser("layer", help="the DDCL torch layer's forward and bits cost against a bare linear layer")
    b.add_argument("--budget", type=positive_float, default=0.1, help="seconds per variant per round (default 0.1)")
    b.add_argument("--rounds", type=POSITIVE, default=5, help="alternating rounds; the median is shown (default 5)")
    b.add_argument("--threads", type=POSITIVE, default=1, help="torch threads (default 1: as an agent process runs)")
    b.set_defaults(func=_bench_layer)
    b = bsub.add_parser("scaling", help="step time against the number of agents, bundled delivery and not")
    b.add_argument("--agents", type=int_list(2), default="2,4,8,16,32", help="agent counts (default 2,4,8,16,32)")
    b.add_argument("--batches", type=int_list(1), default="1,64", help="batch sizes (default 1,64)")
    b.add_argument("--steps", type=POSITIVE, default=200, help="measured steps per run, after 100 warm-up (default 200)")
    b.add_argument("--device", type=device_name, default="cpu", help="the agents' torch device (default cpu)")
    b.set_defaults(func=_bench_scaling)
    b = bsub.add_parser("timeline", help="one lockstep step, event by event in every process (median offsets)")
    b.add_argument("--steps", type=POSITIVE, default=3000, help="traced steps (default 3000)")
    b.add_argument("--agents", type=int_in(2, 255), default=2, help="agent processes (default 2)")
    b.add_argument("--batch", type=POSITIVE, default=1, help="parallel env instances B (default 1)")
    b.add_argument("--device", type=device_name, default="cpu", help="the agents' torch device (default cpu)")
    b.set_defaults(func=_bench_timeline)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from broker.bus import BusError
    from broker.curve import CurveError
    from broker.faults import FaultError
    from broker.peer import BrokerError

    try:
        return args.func(args)
    except (Refused, BrokerError, BusError, CurveError, FaultError) as e:  # bad input; no broker or bus server, or it refused
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
