"""What every `ddcl` command shares: the argparse types, the error policy (a bad input is
refused in one line, status 2), the options more than one command takes, declared here
once, and flags generated from a config dataclass.

Nothing here imports torch: `ddcl --help` and a refused command line stay fast (a test
checks the parser never imports it)."""

from __future__ import annotations

import argparse
import inspect
import os
import re
from dataclasses import fields
from pathlib import Path

from agents.launcher import stop_flag  # noqa: F401  (the roles' stop signal, for every command)

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


def number(kind: type):
    """An argparse type: an int or float, its error in words."""
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    parse.__name__ = kind.__name__
    return parse


POSITIVE, COUNT = int_in(1), int_in(0)


class Parser(argparse.ArgumentParser):
    """argparse, with a bad command line refused in one line (`ddcl ...: error: why; see
    --help`) as every other bad input is, and negative numbers in any float form (-1e7,
    -.5) taken as values, not as options (argparse knows only -5 and -0.5)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def curve(args):
    """The CURVE keys `--keys` names; None without."""
    if not getattr(args, "keys", None):
        return None
    from broker.curve import Curve

    return Curve(args.keys)


def group(sub, name: str, text: str, metavar: str = "ACTION"):
    """A command with subcommands of its own (`ddcl broker ...`): their subparsers."""
    return sub.add_parser(name, help=text).add_subparsers(dest=f"{name}_cmd", required=True, metavar=metavar)


def add_broker(p, text: str = "broker endpoint") -> None:
    p.add_argument("--broker", default=DEFAULT_BROKER, help=f"{text} (env DDCL_BROKER; default {DEFAULT_BROKER})")


def add_agent_id(p) -> None:
    """--id of an agent-like role (an agent, a learner): one agent slot of the run."""
    p.add_argument("--id", default=os.environ.get("DDCL_AGENT_ID", ""),
                   help="agent-K to claim, or a StatefulSet pod name NAME-K for agent-K "
                        "(env DDCL_AGENT_ID; default: the broker assigns one)")


def add_device(p, whose: str = "torch device", default: str = "auto") -> None:
    p.add_argument("--device", type=device_name, default=default, help=f"{whose}: auto, cpu, cuda or cuda:N (default {default})")


def add_keys(p) -> None:
    p.add_argument("--keys", default=os.environ.get("DDCL_KEYS"), help="CURVE keys folder from `ddcl keys gen` (env DDCL_KEYS)")


def add_common(p) -> None:
    """Bus, run name and CURVE keys: every role takes them."""
    p.add_argument("--bus", default=os.environ.get("DDCL_BUS", "embedded"),
                   help="telemetry bus: embedded or mqtt://host:port (env DDCL_BUS; default embedded)")
    p.add_argument("--run", default=os.environ.get("DDCL_RUN", "default"), help="run name in bus topics (default default)")
    add_keys(p)


def add_request(p, reply: str) -> None:
    """What a command that asks a running broker takes: where it is, how long to wait, the
    keys to reach it with, and --json for the reply as it came."""
    add_broker(p)
    p.add_argument("--json", action="store_true", help=f"print the raw {reply}")
    p.add_argument("--timeout", type=positive_float, default=3.0, help="seconds to wait for the broker (default 3)")
    add_keys(p)


def field_docs(cls) -> dict[str, str]:
    """The one-line comment after each dataclass field: the config's own documentation."""
    return dict(re.findall(r"^\s+(\w+): [^=]+=[^#]+#\s*(.+)$", inspect.getsource(cls), re.M))


def add_config_flags(p, cls, skip=(), ints=None, floats=None, choices=None) -> None:
    """A flag per field of the dataclass cls, its help the field's comment. A flag not
    given is None: the default stays the config's own, stated once. `ints` bound integer
    fields (lowest, highest), a field in `floats` is positive (its upper bound is the
    config's to check), one in `choices` takes one of those words. A field in seconds drops
    its unit: deadline_s is --deadline."""
    docs = field_docs(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = f.name.removesuffix("_s").replace("_", "-")
        if isinstance(f.default, bool):
            kind = {"action": argparse.BooleanOptionalAction}
        elif f.name in (choices or {}):
            kind = {"choices": choices[f.name]}
        elif f.name in (ints or {}):
            kind = {"type": int_in(*ints[f.name]), "metavar": flag.upper()}
        else:
            kind = {"type": positive_float if f.name in (floats or {}) else type(f.default), "metavar": flag.upper()}
        help_ = f"{docs.get(f.name, '')} (default {f.default})".replace("%", "%%")  # argparse formats help with %
        p.add_argument("--" + flag, dest=f.name, **kind, help=help_)


def given(args, cls) -> dict:
    """The fields of config class cls that the command line set."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
