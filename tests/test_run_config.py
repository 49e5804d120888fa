"""The run config travels in one typed form: `ddcl up` flags -> RunConfig -> the world's
JSON argument -> the world's CONFIG message -> the agent, equal at every hop; and an
agent's parse of what comes over the network refuses anything with its own error."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agents import lockstep
from agents.agent import Agent
from agents.run_config import AgentSetup, ConfigError, RunConfig
from agents.world import World
from broker import protocol
from broker.protocol import HEARTBEAT_S, LIVENESS
from ddcl.cli import build_parser
from ddcl.run import run_config
from ddcl.up import world_command
from agents.run_config import SYNC_FIELDS

# every field off its default, each a value its flag must carry exactly
CHANGED = RunConfig(env="pp-easy", agents=3, batch=7, steps=123, codec="range", delta=0.35, msg_dim=3, core="gru",
                    aggregate="attention", seed=2**32 - 1, deadline_s=2.5, join_timeout_s=45.5, broker_timeout_s=7.25,
                    sync="checked:5", clock="wall", tick_s=0.25, epoch_seed=0xFFFFFF, beacon_every=3, epoch_steps=40)


def flags(cfg: RunConfig, skip=()) -> list[str]:
    argv = []
    for f in fields(cfg):
        if f.name not in skip:
            argv += ["--" + f.name.removesuffix("_s").replace("_", "-"), str(getattr(cfg, f.name))]
    return argv


def test_the_changed_config_changes_every_field():
    assert all(getattr(CHANGED, f.name) != f.default for f in fields(RunConfig))


def test_every_world_flag_sets_its_field():
    assert run_config(build_parser().parse_args(["world", *flags(CHANGED)])) == CHANGED


class StandInPeer:
    def __init__(self):
        self.sent = []

    def send_to(self, dest: bytes, body: bytes) -> None:
        self.sent.append((dest, protocol.unpack(body)))


def test_every_field_travels_from_the_command_line_to_the_agent(tmp_path: Path):
    # `ddcl up` pins the broker timeout: the broker it starts is dead once silent
    want = replace(CHANGED, broker_timeout_s=LIVENESS * HEARTBEAT_S)
    up = run_config(build_parser().parse_args(["up", *flags(CHANGED, skip={"broker_timeout_s"})]))
    assert up == replace(CHANGED, broker_timeout_s=RunConfig.broker_timeout_s)
    argv = world_command(up, "tcp://127.0.0.1:5555", tmp_path, [])
    assert argv[1:3] == ["-m", "ddcl"]
    cfg = run_config(build_parser().parse_args(argv[3:]))
    assert cfg == want
    world = World.__new__(World)  # its message, without its broker
    world.cfg, world.t0, world.out = cfg, 1234.5, tmp_path
    agent = Agent.__new__(Agent)
    agent.peer, configured = StandInPeer(), []
    agent.configure = configured.append
    assert agent._from_world(world.agent_config())
    assert configured == [AgentSetup(want, 1234.5, str(tmp_path.resolve()))]
    assert agent.peer.sent == [(protocol.WORLD_ID, {"op": lockstep.READY})]


def test_the_sync_service_takes_the_whole_config_or_its_own_flags():
    cfg = run_config(build_parser().parse_args(["sync", "serve", "--config", CHANGED.to_json()]))
    assert cfg == CHANGED
    own = run_config(build_parser().parse_args(["sync", "serve", *flags(CHANGED, skip=set(RunConfig.__dataclass_fields__) - set(SYNC_FIELDS))]))
    assert [getattr(own, f) for f in SYNC_FIELDS] == [getattr(CHANGED, f) for f in SYNC_FIELDS]
    assert own == replace(RunConfig(), **{f: getattr(CHANGED, f) for f in SYNC_FIELDS})


def test_an_agent_refuses_a_bad_config_and_stays_unready():
    agent = Agent.__new__(Agent)
    agent.peer, configured = StandInPeer(), []
    agent.configure = configured.append
    bad = {"run": {"batch": 0}, "t0": 0.0, "oracle_dir": ""}
    assert agent._from_world(protocol.pack({"op": lockstep.CONFIG, "setup": bad}))
    assert configured == [] and agent.peer.sent == []


WORDS = st.sampled_from(["goal", "tj-easy", "pp-easy", "pp-hard", "rice", "range", "gru", "attention", "wall",
                         "implicit", "stamped", "checked:3", "checked:99", "x" * 100])
SCALARS = (st.none() | st.booleans() | st.integers(-3, 300) | st.integers() | st.floats() | WORDS
           | st.text(max_size=8) | st.binary(max_size=4))
VALUES = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=4), SCALARS, max_size=2)
KEYS = st.sampled_from([f.name for f in fields(RunConfig)]) | st.text(max_size=6)
CONFIGS = st.dictionaries(KEYS, VALUES, max_size=10)


def parsed_or_refused(cls, data) -> None:
    """cls.from_wire(data) refuses with ConfigError, or what it parsed parses back the same."""
    try:
        parsed = cls.from_wire(data)
    except ConfigError:
        return
    assert cls.from_wire(parsed.to_wire()) == parsed


@settings(max_examples=300, deadline=None)
@given(CONFIGS)
def test_from_wire_raises_nothing_but_config_error(data):
    parsed_or_refused(RunConfig, data)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["run", "t0", "oracle_dir"]) | st.text(max_size=4), CONFIGS | VALUES,
                       max_size=4) | VALUES)
def test_an_agent_setup_from_anywhere_raises_nothing_but_config_error(data):
    parsed_or_refused(AgentSetup, data)
