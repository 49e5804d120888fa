"""One cell of the desync grid, run in one process: a trained policy's agents, each with
its own clock (agents/clock.py), its own epoch table fed by beacons from the sync
service's schedule (broker/sync.py), and the real message path (quantize, encode, frame,
parse, decode: agents/message.py), so the frames, header bytes and reconstructions are
the networked run's. What stands in for the network: faults are applied at the start of
their step, a beacon reaches every agent not blocked before the messages of its step,
and no message is late or lost. A networked run of the same cell gives the same desync
(checked in docs/desync.md); this form runs the grid's hundreds of cells on two cores.

Scenarios (agent 1 is "one"; agents 1..N-1 are "all but one"):

    skew V          clock skew of V steps from step 0, no beacons
    drift V         V ppm of drift from step 0, with the cell's beacons
    jump V          a skew of V steps at JUMP_AT, beacons every `beacon_every`, the first
                    `lost` of them from JUMP_AT lost: steps to recover from the jump
    stale-seed      epochs of EPOCH_STEPS, a beacon every `beacon_every`; agent 1's
                    beacons blocked from STALE_FROM until STALE_TO (the clear): its seed
                    is stale after a rotation it was not told of
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from broker.sync import Schedule
from channel import frame

from .agent import Epochs
from .clock import Clock
from .desync import recovery
from .envs import make
from .message import MessageChannel, SyncMode
from .policy import forget, load_checkpoint

SCENARIOS = ("skew", "drift", "jump", "stale-seed")
TARGETS = ("one", "all-but-one")
EPOCH_SEED = 1  # epoch 0's seed, as `ddcl sync serve` defaults it
JUMP_AT = 23  # world step of the jump scenario's clock jump: between beacons of every period swept
EPOCH_STEPS = 50  # stale-seed: epoch length
STALE_FROM, STALE_TO = 20, 125  # stale-seed: agent 1's beacons blocked over [from, to)


@dataclass(frozen=True)
class Cell:
    checkpoint: str
    scenario: str
    target: str  # one | all-but-one
    value: float  # skew or jump in steps, drift in ppm; unused for stale-seed
    beacon_every: int  # 0: none
    lost: int  # jump: beacons lost from JUMP_AT
    sync: str
    seed: int  # run seed: env instances and the noise's key
    steps: int
    batch: int

    def key(self) -> str:
        """The cell's name in the results file: what resume skips on."""
        return "|".join(str(v) for v in asdict(self).values())


def checkpoint_env(path: str) -> tuple[str, int]:
    """(env, agents) a checkpoint was trained for."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return ck["env"], int(ck["n_agents"])


class _OneStepDecodes:
    """A layer whose decode remembers this step's results: receivers that agree on a
    sender's (step, seed) get the same z_hat, decoded once."""

    def __init__(self, layer):
        self.layer, self.codec, self.memo = layer, layer.codec, {}

    def encode(self, *a):
        return self.layer.encode(*a)

    def decode(self, payload, shape, step, sender, seed):
        key = (payload, step, sender, seed)
        if key not in self.memo:
            self.memo[key] = self.layer.decode(payload, shape, step, sender, seed)
        return self.memo[key]


def targets(target: str, n: int) -> list[int]:
    """The agents a fault hits: one (agent 1) or all but one (agents 1..n-1)."""
    return [1] if target == "one" else list(range(1, n))


@torch.inference_mode()
def run_cell(cell: Cell, codec: str = "range") -> dict:
    """The cell's figures: success, bits and header bytes per message, desynced fraction,
    mean |z_hat - z_hat_ideal|, and (jump, stale-seed) the steps to recover."""
    env_name, n = checkpoint_env(cell.checkpoint)
    env = make(env_name, cell.batch, cell.seed, n)
    pcfg, policies, ck = load_checkpoint(cell.checkpoint, env_name, env.obs_dim, env.n_actions, n)
    policies = [p.eval() for p in policies]
    template = MessageChannel.from_checkpoint(ck["codec"], codec, n, pcfg.msg_dim, pcfg.delta, cell.seed)
    layers = [_OneStepDecodes(layer) for layer in template.layers]
    sync = SyncMode.parse(cell.sync)
    channels = [MessageChannel(layers, sync) for _ in range(n)]  # each agent's own (healing keeps state)
    shape = (cell.batch, pcfg.msg_dim)

    epoch_steps = EPOCH_STEPS if cell.scenario == "stale-seed" else 0
    schedule = Schedule(cell.seed, EPOCH_SEED, epoch_steps)
    clocks = [Clock() for _ in range(n)]
    epochs = [Epochs() for _ in range(n)]
    for e in epochs:
        e.update(schedule.announcement(0))  # what each agent's fetch_epoch gets at start
    hit = targets(cell.target, n)
    lost_left = {k: cell.lost for k in hit}
    beacons_sent = 0
    asked: list[int] = []  # agents that asked the sync service for the epoch

    obs = env.reset().numpy()
    states = [p.initial_state(cell.batch) for p in policies]
    episodes = successes = 0
    sums = dict(messages=0, bits=0, header=0, decodes=0, wrong=0, error=0.0)
    by_step: dict[int, list] = {}
    for step in range(cell.steps):
        if step == 0 and cell.scenario in ("skew", "drift"):
            for k in hit:
                clocks[k].set_faults(cell.value if cell.scenario == "skew" else 0.0,
                                     cell.value if cell.scenario == "drift" else 0.0, step)
        if step == JUMP_AT and cell.scenario == "jump":
            for k in hit:
                clocks[k].set_faults(cell.value, 0.0, step)
        if cell.beacon_every and step % cell.beacon_every == 0:
            beacons_sent += 1
            for k in range(n):
                if cell.scenario == "stale-seed" and k in hit and STALE_FROM <= step < STALE_TO:
                    continue
                if cell.scenario == "jump" and k in hit and step >= JUMP_AT and lost_left[k]:
                    lost_left[k] -= 1
                    continue
                epochs[k].update(schedule.announcement(step))
                clocks[k].on_beacon(step, 0.0)
        for k in asked:  # healing: the sync service's answer to last step's question
            epochs[k].update(schedule.announcement(step))
        asked = []
        for layer in layers:
            layer.memo.clear()
        views = [c.view(step) for c in clocks]
        if sync.every:
            asked = [k for k in range(n) if epochs[k].stale_at(views[k]) is not None]
        sent = []
        for k, p in enumerate(policies):
            h, z, states[k] = p.speak(torch.from_numpy(np.ascontiguousarray(obs[:, k])), states[k])
            seed = epochs[k].seed_for(views[k])
            z_hat, data, nbits = channels[k].speak(z, k, views[k], seed)
            sent.append((h, z_hat, data, (views[k], seed)))
            sums["messages"] += 1
            sums["bits"] += nbits
            sums["header"] += len(data) - len(frame.unpack(data).payload)
        actions = np.zeros((cell.batch, n), dtype=np.int64)
        rows = []
        for r, p in enumerate(policies):
            heard = np.zeros((cell.batch, n - 1, pcfg.msg_dim), dtype=np.float32)
            for slot, j in enumerate(x for x in range(n) if x != r):
                _, zh, used = channels[r].hear(sent[j][2], views[r], epochs[r].seed_for, shape, tick=step)
                heard[:, slot] = zh
                wrong = used != sent[j][3]
                sums["decodes"] += 1
                sums["wrong"] += wrong
                if wrong:
                    sums["error"] += float(np.abs(zh - sent[j][1]).mean())
                rows.append((j, r, wrong))
            actions[:, r] = p.act(sent[r][0], torch.from_numpy(heard)).argmax(-1).numpy()
        by_step[step] = rows
        obs, _, done, success = (x.numpy() for x in env.step(torch.from_numpy(actions)))
        episodes += int(done.sum())
        successes += int(success.sum())
        states = [forget(s, done) for s in states]

    clears = []
    if cell.scenario == "jump":
        clears = [{"step": JUMP_AT, "fault": {"target": "agent-1"}}]
    elif cell.scenario == "stale-seed":
        clears = [{"step": STALE_TO, "fault": {"target": "agent-1"}}]
    rec = recovery(clears, by_step)
    return {
        "success_rate": successes / episodes if episodes else None,
        "episodes": episodes,
        "bits_per_message": sums["bits"] / sums["messages"] / cell.batch,  # one instance's message
        "header_bytes": sums["header"] / sums["messages"],  # per frame: a frame holds the B messages
        "desynced_fraction": sums["wrong"] / sums["decodes"],
        "mean_error": sums["error"] / sums["decodes"],
        "steps_to_recover": rec[0]["steps_to_recover"] if rec else None,
        "beacons_per_step": beacons_sent / cell.steps,
    }
