"""One networked run's configuration, in one typed form from the command line to the agents:
`ddcl up`, `ddcl world` and `ddcl sync serve` generate a flag per field (its help the
comment beside it), `ddcl up` hands the world and the sync service the whole config as one
JSON argument, and the world sends it to every agent in its CONFIG message (AgentSetup). Kept free of torch, like TrainConfig:
the command line imports it to build its flags.

Whatever reads a config from outside (the agent from the network, the world from its
argv) goes through from_wire, which checks every key, type and bound and raises
ConfigError, and nothing else, on anything this project cannot run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from broker.protocol import MAX_AGENTS
from channel.frame import MAX_COUNT

from .clock import MODES as CLOCKS
from .envs import ENVS, default_agents
from .train_config import AGGREGATES, CODECS, CORES

DAY_S = 86400.0  # a longer wait is a typo, or a hostile config
MAX_WORD = 64  # longer than any name a field takes
MAX_PATH = 4096  # Linux's PATH_MAX

# Integers: (lowest, highest); None: no bound of its own (validate() checks what a frame holds).
INT_RANGES = {"agents": (1, MAX_AGENTS), "batch": (1, None), "steps": (1, None), "msg_dim": (1, None),
              "seed": (0, 2**32 - 1),  # a run seed keys Philox: 32 bits
              "epoch_seed": (0, 0xFFFFFF),  # Philox's key holds it beside the 8-bit sender id
              "beacon_every": (0, None), "epoch_steps": (0, None)}
# Floats: (above, at most). A step below 1e-6 quantizes to integers no codec here is built for.
FLOAT_RANGES = {"delta": (1e-6, 1e6), "deadline_s": (0.0, DAY_S), "join_timeout_s": (0.0, DAY_S),
                "broker_timeout_s": (0.0, DAY_S), "tick_s": (0.0, DAY_S)}
# The sync service's part of the run (the world and agents take theirs from the service)
SYNC_FIELDS = ("seed", "epoch_seed", "beacon_every", "epoch_steps")
CHOICES = {"env": ENVS, "codec": CODECS, "core": CORES, "aggregate": AGGREGATES, "clock": CLOCKS}


class ConfigError(ValueError):
    """A run config that cannot run: an unknown field, a wrong type, a value out of bounds."""


@dataclass
class RunConfig:
    env: str = "goal"  # environment
    agents: int = 0  # agent processes; 0: the env's own (tj/pp levels fix it; 2 otherwise)
    batch: int = 1  # parallel env instances B
    steps: int = 500  # lockstep steps
    codec: str = "rice"  # message codec
    delta: float = 0.2  # untrained policies: quantization step
    msg_dim: int = 4  # untrained policies: message dimensions
    core: str = "mlp"  # untrained policies: mlp | gru | transformer
    aggregate: str = "mean"  # untrained policies: how heard messages combine, mean | attention
    seed: int = 0  # run seed: env instances and untrained policies
    deadline_s: float = 1.0  # per-step wait for actions, seconds; an agent waits half of it for its peers
    # seconds every agent has to join before step 0: agents importing torch side by side on
    # two busy cores took over a minute
    join_timeout_s: float = 180.0
    broker_timeout_s: float = 10.0  # seconds a silent broker has to come back (restarted) before the run ends
    sync: str = "implicit"  # noise sync: implicit | stamped | checked:K | healing:K
    clock: str = "logical"  # noise clock: logical | wall
    tick_s: float = 0.1  # wall clock: seconds per step
    epoch_seed: int = 1  # sync service: seed of epoch 0 (24 bits)
    beacon_every: int = 10  # sync service: beacon period in world steps, 0 = none
    epoch_steps: int = 0  # sync service: rotate the epoch seed every E steps, 0 = never

    def __post_init__(self):
        if self.agents == 0:
            self.agents = default_agents(self.env)

    @property
    def peer_wait_s(self) -> float:
        """How long an agent waits for its peers' messages: half the step's deadline, so
        that a dead peer slows the step but the live agents still answer the world in time."""
        return self.deadline_s / 2

    def validate(self, whole: bool = True) -> None:
        """Raises ConfigError naming the first field this project cannot run. Not whole:
        types, bounds and choices only, what the sync service checks (its process loads no
        torch); the sync mode's grammar and the env's frame sizes need it."""
        for name, (lo, hi) in INT_RANGES.items():
            value = getattr(self, name)
            if value < lo or hi is not None and value > hi:
                raise ConfigError(f"{name} must be {lo}..{hi if hi is not None else ''}, got {value}")
        for name, (above, most) in FLOAT_RANGES.items():
            if not above < getattr(self, name) <= most:  # NaN fails too
                raise ConfigError(f"{name} must be above {above:g} and at most {most:g}, got {getattr(self, name)}")
        for name, names in CHOICES.items():
            if getattr(self, name) not in names:
                raise ConfigError(f"{name} must be one of {', '.join(names)}, got {getattr(self, name)!r}")
        if not whole:
            return
        from .message import SyncMode  # torch: imported here, so that the parser stays fast

        SyncMode.parse(self.sync)  # its ValueError names the grammar
        self._check_frames()

    def _check_frames(self) -> None:
        """The env takes this many agents, and a step's observations and messages fit a frame."""
        from .envs import make

        env = make(self.env, 1, 0, self.agents)  # an env with a fixed slot count refuses another
        values = self.batch * max(env.obs_dim + 1, self.msg_dim)
        if values > MAX_COUNT:
            raise ConfigError(f"batch {self.batch} is too large: a frame would hold {values} values, "
                              f"at most {MAX_COUNT} fit")

    def to_wire(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_wire())

    @classmethod
    def from_json(cls, text: str, whole: bool = True) -> RunConfig:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"the run config is not JSON: {e}") from None
        return cls.from_wire(data, whole)

    @classmethod
    def from_wire(cls, data, whole: bool = True) -> RunConfig:
        """The config in a map (a message, JSON), every field checked (`validate(whole)`);
        the ones not in it take their defaults."""
        if not isinstance(data, dict):
            raise ConfigError(f"a run config is a map, not {type(data).__name__}")
        kinds = {f.name: type(f.default) for f in fields(cls)}
        unknown = [k for k in data if k not in kinds]
        if unknown:
            raise ConfigError(f"unknown run config field {str(unknown[0])[:MAX_WORD]!r}")
        cfg = cls(**{k: _typed(k, v, kinds[k]) for k, v in data.items()})
        try:
            cfg.validate(whole)
        except ValueError as e:  # the env's or the sync mode's own refusal, as a ConfigError
            raise ConfigError(str(e)) from None
        return cfg


def _typed(name: str, value, kind: type):
    """value as a field of type kind: int, float (an int is taken) or a short str."""
    if kind is float and type(value) is int and abs(value) <= 2**53:  # exact as a float
        return float(value)
    if type(value) is not kind or kind is str and len(value) > MAX_WORD:
        raise ConfigError(f"{name} must be {'a short str' if kind is str else kind.__name__}, "
                          f"got {type(value).__name__}")
    return value


@dataclass
class AgentSetup:
    """What the world sends each agent that joins: the run, and where this run stands."""

    run: RunConfig
    t0: float = 0.0  # wall clock: time.time() of step 0; 0 until the world sets it, just before step 0
    oracle_dir: str = ""  # the world's run folder, where agents log their noise for desync figures; "" for none

    def to_wire(self) -> dict:
        return {"run": self.run.to_wire(), "t0": self.t0, "oracle_dir": self.oracle_dir}

    @classmethod
    def from_wire(cls, data) -> AgentSetup:
        if not isinstance(data, dict) or set(data) != {"run", "t0", "oracle_dir"}:
            raise ConfigError("an agent setup is a map of run, t0 and oracle_dir")
        t0, folder = data["t0"], data["oracle_dir"]
        if type(t0) is not float or not 0 <= t0 < math.inf:
            raise ConfigError(f"t0 must be a time, got {t0!r:.{MAX_WORD}}")
        if type(folder) is not str or len(folder) > MAX_PATH or "\0" in folder:
            raise ConfigError("oracle_dir must be a path")
        return cls(RunConfig.from_wire(data["run"]), t0, folder)
