"""`ddcl`: one command, a subcommand per role. Each subcommand's --help documents it.

Endpoints come from flags or the environment: DDCL_BROKER (where peers connect,
default tcp://127.0.0.1:5555) and DDCL_BIND (where the broker listens).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import learn, measure, operate, run
from .options import Parser, Refused, group


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ddcl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_up(sub)
    learn.add_train(sub)
    learn.add_evaluate(sub)
    learn.add_report(sub)
    learn.add_learn_roles(group(sub, "learn", "the networked training's roles, as `ddcl up --train` starts them"))
    broker = group(sub, "broker", "the ZeroMQ broker and its CLI")
    run.add_broker_serve(broker)
    operate.add_broker_stats(broker)
    operate.add_broker_fault(broker)
    operate.add_keys_gen(group(sub, "keys", "CURVE keys for the control endpoint and data plane"))
    sweeps = group(sub, "sweep", "run grids of runs: a CSV and PNGs each, resumable", "GRID")
    learn.add_sweep_skew(sweeps)
    learn.add_sweep_desync(sweeps)
    learn.add_sweep_wall_clock(sweeps)
    learn.add_sweep_train_skew(sweeps)
    operate.add_bus_sub(group(sub, "bus", "the control/telemetry bus"))
    run.add_sync_serve(group(sub, "sync", "the PRNG synchronization service"))
    run.add_world(sub)
    run.add_agent(sub)
    measure.add_benches(group(sub, "bench", "benchmarks (not tests): print a table", "BENCH"))
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
        status = args.func(args)
    except (Refused, BrokerError, BusError, CurveError, FaultError) as e:  # bad input; no broker or bus server, or it refused
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if argv is None and getattr(args, "quick_exit", False):  # a process of its own, not a caller's function
        quick_exit(status)
    return status


def quick_exit(status: int) -> None:
    """Ends a role once its outputs are written and closed, without the interpreter's
    teardown: freeing torch's and numpy's objects one by one takes 0.5-1 s on a busy
    machine, and a role stopped with its parent (`ddcl up` killed) must be gone at once.
    The trace marks and log handlers are what exit would still write."""
    from broker import trace

    trace.write()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
