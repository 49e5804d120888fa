"""Measuring: `ddcl bench ...`, benchmarks (not tests) that print a table. Each bench's
work is in bench/; here are its flags and the refusals before it starts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.train_config import RATE_LOSSES

from .options import COUNT, POSITIVE, Refused, add_device, checked, int_in, int_list, out_folder, positive_float


def add_benches(sub) -> None:
    for add in (_add_channel, _add_fuzz, _add_soak, _add_train, _add_train_speed, _add_envs, _add_net, _add_layer, _add_scaling,
                _add_timeline, _add_link_faults, _add_corrupt):
        add(sub)


def _agents_device(p) -> None:
    """A bench whose agents run as processes: their torch device, the CPU unless asked."""
    add_device(p, "the agents' torch device", default="cpu")


def _grid(p, agents: str, batches: str) -> None:
    """A bench over agent counts x batch sizes, its agents as processes."""
    p.add_argument("--agents", type=int_list(2), default=agents, help=f"agent counts (default {agents})")
    p.add_argument("--batches", type=int_list(1), default=batches, help=f"batch sizes (default {batches})")
    _agents_device(p)


def _add_channel(sub) -> None:
    p = sub.add_parser("channel", help="codec bits vs entropy, codec and noise throughput")
    p.add_argument("--budget", type=positive_float, default=0.2, help="seconds per timing (default 0.2)")
    p.set_defaults(func=_channel)


def _channel(args) -> int:
    from bench import channel_bench

    print(channel_bench.run(budget_s=args.budget))
    return 0


def _add_fuzz(sub) -> None:
    p = sub.add_parser("fuzz", help="random and mutated input into the frame/codec parsers or a live broker")
    p.add_argument("--target", choices=["parsers", "broker"], default="parsers",
                   help="parsers: frame and codec decoders in-process; broker: a live broker over ZeroMQ and raw TCP, "
                        "then a normal run against it (default parsers)")
    p.add_argument("--inputs", type=POSITIVE, default=100_000, help="inputs to try (default 100000)")
    p.add_argument("--seed", type=COUNT, default=0, help="random seed (default 0)")
    p.set_defaults(func=_fuzz)


def _fuzz(args) -> int:
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


def _add_soak(sub) -> None:
    p = sub.add_parser("soak", help="many agents for many steps: messages all accounted, RSS slope, step time")
    p.add_argument("--agents", type=int_in(2, 254), default=16, help="agent processes (default 16)")
    p.add_argument("--steps", type=POSITIVE, default=100_000, help="lockstep steps (default 100000)")
    p.add_argument("--batch", type=POSITIVE, default=1, help="env instances B (default 1)")
    p.add_argument("--out", default="runs/soak", help="run folder: logs, metrics, soak.json, soak.png (default runs/soak)")
    p.set_defaults(func=_soak)


def _soak(args) -> int:
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


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="goal toy: one training per rate loss, real bits of every codec")
    p.add_argument("--updates", type=POSITIVE, default=4000, help="updates per run (default 4000)")
    p.add_argument("--batch", type=POSITIVE, default=512, help="env instances (default 512)")
    p.add_argument("--lam", type=float, default=0.015, help="rate weight (default 0.015)")
    p.add_argument("--msg-dim", type=POSITIVE, default=1, help="message dimensions (default 1)")
    p.add_argument("--seed", type=COUNT, default=0, help="seed (default 0)")
    add_device(p)
    p.add_argument("--losses", type=_losses, default=",".join(RATE_LOSSES),
                   help=f"rate losses to train, comma-separated (default {','.join(RATE_LOSSES)})")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from agents.agent import pick_device
    from bench import train_bench

    checked(pick_device, args.device)
    print(train_bench.run(args.updates, args.batch, args.lam, args.msg_dim, args.seed, args.device, args.losses))
    return 0


def _add_train_speed(sub) -> None:
    from agents.envs import ENVS
    from agents.train_config import ALGOS, CORES

    p = sub.add_parser("train-speed", help="env steps/s of each training algorithm x policy core, per B")
    p.add_argument("--env", choices=ENVS, default="goal", help="environment (default goal)")
    p.add_argument("--batches", type=int_list(1), default="512,4096", help="batch sizes (default 512,4096)")
    p.add_argument("--cores", type=_choices(CORES), default=",".join(CORES),
                   help=f"policy cores, comma-separated (default {','.join(CORES)})")
    p.add_argument("--algos", type=_choices(ALGOS), default=",".join(ALGOS),
                   help=f"algorithms, comma-separated; the first is the baseline (default {','.join(ALGOS)})")
    p.add_argument("--updates", type=POSITIVE, default=3, help="updates timed per measurement (default 3)")
    p.add_argument("--share", action="store_true", help="one shared policy in the main table too")
    add_device(p, default="cpu")
    p.set_defaults(func=_train_speed)


def _choices(allowed):
    """An argparse type: comma-separated words, each one of `allowed`."""
    def parse(text: str) -> list[str]:
        words = text.split(",")
        bad = [w for w in words if w not in allowed]
        if bad or not text:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad) or text!r}; choose from {', '.join(allowed)}")
        return words
    return parse


def _train_speed(args) -> int:
    from agents.agent import pick_device
    from bench import train_bench

    checked(pick_device, args.device)
    print(train_bench.speed(args.env, args.batches, args.cores, args.algos, args.updates, args.share, args.device))
    return 0


def _add_envs(sub) -> None:
    p = sub.add_parser("envs", help="env steps/s of the batched torch envs per device and B")
    p.add_argument("--batches", type=int_list(1), default="1,256,4096", help="batch sizes (default 1,256,4096)")
    p.add_argument("--budget", type=positive_float, default=0.5, help="seconds per measurement (default 0.5)")
    p.set_defaults(func=_envs)


def _envs(args) -> int:
    from bench import env_bench

    print(env_bench.run(args.batches, args.budget))
    return 0


def _add_net(sub) -> None:
    p = sub.add_parser("net", help="pyzmq round-trip floor, then lockstep steps/s and latency")
    p.add_argument("--steps", type=POSITIVE, default=1000,
                   help="measured steps per run, after 300 warm-up steps (default 1000)")
    _grid(p, agents="2,4,8", batches="1,256")
    p.add_argument("--repeat", type=POSITIVE, default=3, help="runs per configuration; the row is the median (default 3)")
    p.set_defaults(func=_net)


def _net(args) -> int:
    from agents.agent import pick_device
    from bench import net_bench

    checked(pick_device, args.device)
    print(net_bench.run(steps=args.steps, agents=args.agents, batches=args.batches, repeat=args.repeat,
                        device=args.device))
    return 0


def _add_layer(sub) -> None:
    p = sub.add_parser("layer", help="the DDCL torch layer's forward and bits cost against a bare linear layer")
    p.add_argument("--budget", type=positive_float, default=0.1, help="seconds per variant per round (default 0.1)")
    p.add_argument("--rounds", type=POSITIVE, default=5, help="alternating rounds; the median is shown (default 5)")
    p.add_argument("--threads", type=POSITIVE, default=1, help="torch threads (default 1: as an agent process runs)")
    p.set_defaults(func=_layer)


def _layer(args) -> int:
    import torch

    from bench import layer_bench

    torch.set_num_threads(args.threads)
    print(layer_bench.run(args.budget, args.rounds))
    return 0


def _add_scaling(sub) -> None:
    p = sub.add_parser("scaling", help="step time against the number of agents, bundled delivery and not")
    _grid(p, agents="2,4,8,16,32", batches="1,64")
    p.add_argument("--steps", type=POSITIVE, default=200, help="measured steps per run, after 100 warm-up (default 200)")
    p.set_defaults(func=_scaling)


def _scaling(args) -> int:
    from bench import scaling

    print(scaling.run(tuple(args.agents), tuple(args.batches), args.steps, args.device))
    return 0


def _add_timeline(sub) -> None:
    p = sub.add_parser("timeline", help="one lockstep step, event by event in every process (median offsets)")
    p.add_argument("--steps", type=POSITIVE, default=3000, help="traced steps (default 3000)")
    p.add_argument("--agents", type=int_in(2, 255), default=2, help="agent processes (default 2)")
    p.add_argument("--batch", type=POSITIVE, default=1, help="parallel env instances B (default 1)")
    _agents_device(p)
    p.set_defaults(func=_timeline)


def _timeline(args) -> int:
    from agents.agent import pick_device
    from bench import timeline

    checked(pick_device, args.device)
    return _print_run(timeline.run, args.agents, args.batch, args.steps, args.device)


def _print_run(run, *args, **kwargs) -> int:
    """A bench that runs `ddcl up`: its table, or the reason a run failed (RuntimeError)."""
    try:
        print(run(*args, **kwargs))
    except RuntimeError as e:
        raise Refused(str(e)) from None
    return 0


def _add_link_faults(sub) -> None:
    p = sub.add_parser("link-faults", help="each link fault's cost in success and bits on the shipped goal policy")
    p.add_argument("--steps", type=POSITIVE, default=300, help="steps per run (default 300)")
    p.add_argument("--batch", type=POSITIVE, default=64, help="parallel env instances B (default 64)")
    p.set_defaults(func=_link_faults)


def _link_faults(args) -> int:
    from bench import link_faults

    return _print_run(link_faults.run, args.steps, args.batch,
                      progress=lambda line: print(line, file=sys.stderr, flush=True))


def _add_corrupt(sub) -> None:
    p = sub.add_parser("corrupt", help="one flipped payload bit: caught, intact or silent, per codec")
    p.add_argument("--trials", type=POSITIVE, default=2000, help="flipped messages per codec and width (default 2000)")
    p.add_argument("--seed", type=COUNT, default=0, help="random seed (default 0)")
    p.set_defaults(func=_corrupt)


def _corrupt(args) -> int:
    from bench import corruption

    print(corruption.run(args.trials, args.seed))
    return 0
