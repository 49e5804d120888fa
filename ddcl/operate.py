"""Operating a running simulation: a broker's live figures (`ddcl broker stats`), faults
injected, listed and cleared (`ddcl broker fault`), the bus read (`ddcl bus sub`), and
CURVE keys made (`ddcl keys gen`)."""

from __future__ import annotations

import json
import signal
import sys

from .options import COUNT, Refused, add_broker, add_common, add_request, curve, number

# name, help, target (an agent, or a link under --link), the value's type (None: no value)
FAULTS = [
    ("skew", "shift an agent's clock: STEPS (logical) or milliseconds (wall)", "agent", int),
    ("drift", "make an agent's clock drift: PPM", "agent", float),
    ("beacon-loss", "drop the next sync beacons to an agent (--count N, default 1)", "agent", None),
    ("stale-seed", "withhold new epoch seeds (all beacons) from an agent until cleared", "agent", None),
    ("delay", "hold agent messages MS milliseconds", "link", float),
    ("drop", "drop agent messages with probability P", "link", float),
    ("duplicate", "duplicate agent messages with probability P", "link", float),
    ("reorder", "shuffle agent messages in windows of WINDOW", "link", int),
    ("jitter", "add up to +-MS milliseconds, uniform, to agent messages' delay", "link", float),
    ("partition", "lose every agent message on the link until cleared", "link", None),
    ("bandwidth", "a link budget of BITS per second: messages queue, lost past 1 s", "link", float),
    ("burst-loss", "Gilbert-Elliott loss: good -> bad with probability P a message (--r: bad -> good)", "link",
     float),
    ("corrupt", "flip one payload bit of agent messages with probability P", "link", float),
]
BURST_OPTIONS = [("r", "bad -> good probability a message (required)", None),
                 ("loss_bad", "loss probability in the bad state", 1.0),
                 ("loss_good", "loss probability in the good state", 0.0)]


def add_broker_stats(sub) -> None:
    p = sub.add_parser("stats", help="live per-step byte figures of a running broker")
    add_request(p, "JSON")
    p.set_defaults(func=_broker_stats)


def _broker_stats(args) -> int:
    from broker.peer import Peer

    with Peer(args.broker, b"cli", curve=curve(args)) as p:
        stats = p.stats(args.timeout)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(render_stats(stats, args.broker))
    return 0


def render_stats(s: dict, endpoint: str) -> str:
    from .summary import byte_table

    at = f"step {s['step']} ({s['steps']} steps seen)" if s["step"] is not None else "no run has stepped yet"
    lines = [f"broker at {endpoint}: {at}; peers: {', '.join(sorted(s['peers'])) or 'none'}",
             byte_table("agent msgs/step", s["bytes_per_step"], s["float32_bytes_per_step"])]
    if last := s["last_step_message_bytes"]:
        lines.append(f"last step: {last['up']} B up, {last['down']} B down, {last['total']} B of agent messages")

    def counts(d: dict) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d.items())

    lines.append(f"messages: {counts(s['messages'])}; other frames: {counts(s['other'])}")
    return "\n".join(lines)


def add_broker_fault(sub) -> None:
    fsub = sub.add_parser("fault", help="inject, list and clear faults in a running broker").add_subparsers(
        dest="fault_cmd", required=True, metavar="FAULT")
    for name, text, target, kind in FAULTS:
        p = fsub.add_parser(name, help=text)
        if target == "agent":
            p.add_argument("agent", help="target agent, e.g. agent-1")
        else:
            p.add_argument("--link", default="*", help="agent-J>agent-K, agent-K (all its links) or * (default)")
        if name == "burst-loss":
            for option, text_, default in BURST_OPTIONS:
                p.add_argument(f"--{option.replace('_', '-')}", dest=option, type=number(float), default=default,
                               required=default is None, help=text_ + ("" if default is None else f" (default {default:g})"))
        if name == "beacon-loss":
            p.add_argument("--count", dest="value", type=int, default=1, help="beacons to drop (default 1)")
        elif kind is not None:
            p.add_argument("value", type=number(kind), help=text.split(": ")[-1] if ": " in text else "value")
        else:
            p.set_defaults(value=None)
    fsub.add_parser("list", help="the active faults")
    clear = fsub.add_parser("clear", help="remove one fault (ID) or all (--all)")
    clear.add_argument("id", type=int, nargs="?", help="fault id from `list`")
    clear.add_argument("--all", action="store_true", help="remove every fault")
    for p in fsub.choices.values():
        add_request(p, "reply")
        p.set_defaults(func=_broker_fault)


def _fault_request(args) -> dict:
    from broker import protocol

    if args.fault_cmd == "list":
        return {"op": protocol.FAULT_LIST}
    if args.fault_cmd == "clear":
        if args.all == (args.id is not None):
            raise Refused("give a fault ID or --all")
        return {"op": protocol.FAULT_CLEAR, "id": args.id}
    return {"op": protocol.FAULT_ADD, "kind": args.fault_cmd, "target": getattr(args, "agent", None) or args.link,
            "value": args.value, **{name: getattr(args, name) for name, _, _ in BURST_OPTIONS if hasattr(args, name)}}


def _broker_fault(args) -> int:
    from broker import protocol
    from broker.peer import Peer

    req = _fault_request(args)
    with Peer(args.broker, b"cli", curve=curve(args)) as p:
        reply = p.request([protocol.CONTROL, protocol.pack(req)], protocol.CONTROL_REPLY, args.timeout)
    if not reply.get("ok"):
        raise Refused(reply.get("error"))
    print(json.dumps(reply, indent=2) if args.json else render_fault_reply(args.fault_cmd, reply))
    return 0


def render_fault_reply(command: str, reply: dict) -> str:
    if command == "list":
        faults, step = reply["faults"], reply.get("step")
        head = f"{len(faults)} active fault(s) " + (f"at step {step}" if step is not None else "(no run has stepped yet)")
        return "\n".join([head] + [f"  {f['id']:>3}  {f['kind']:<12} {f['target']:<20} {f['value']:g}  "
                                   f"(since step {f['step']})" for f in faults])
    if command == "clear":
        return f"cleared {', '.join(str(f['id']) for f in reply['cleared']) or 'nothing'}"
    f = reply["fault"]
    return f"fault {f['id']}: {f['kind']} {f['target']} {f['value']:g} (step {f['step']})"


def add_keys_gen(sub) -> None:
    p = sub.add_parser("gen", help="write a server and a client keypair, client authorized")
    p.add_argument("dir", help="keys folder")
    p.set_defaults(func=_keys_gen)


def _keys_gen(args) -> int:
    from broker.curve import generate

    for path in generate(args.dir):
        print(f"wrote {path}")
    print(f"authorized clients: {args.dir}/authorized/ ; use --keys {args.dir} on every role")
    return 0


def add_bus_sub(sub) -> None:
    p = sub.add_parser("sub", help="print bus messages (like mosquitto_sub -t 'ddcl/#' -v)")
    p.add_argument("--topic", default="#", help="filter under ddcl/<run>/ (default #)")
    p.add_argument("--count", type=COUNT, default=0, help="stop after N messages (default: never)")
    add_broker(p, "broker endpoint for the embedded bus")
    add_common(p)
    p.set_defaults(func=_bus_sub)


def _bus_sub(args) -> int:
    import asyncio

    asyncio.run(_print_bus(args))
    return 0


async def _print_bus(args) -> None:
    import asyncio

    from broker.bus import BusClient
    from broker.protocol import HEARTBEAT_S, LIVENESS

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
