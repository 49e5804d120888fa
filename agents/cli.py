"""`ddcl`: one command, a subcommand per role. Each subcommand's --help documents it."""

from __future__ import annotations

import argparse
import sys


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddcl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("bench", help="benchmarks (not tests): print a table")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    b = bsub.add_parser("channel", help="codec bits vs entropy, codec and noise throughput")
    b.add_argument("--budget", type=float, default=0.2, help="seconds per timing (default 0.2)")
    b.set_defaults(func=_bench_channel)
    b = bsub.add_parser("fuzz", help="random and mutated bytes into frame/codec parsers")
    b.add_argument("--inputs", type=int, default=100_000, help="inputs to try (default 100000)")
    b.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    b.set_defaults(func=_bench_fuzz)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
