"""The agent process: one agent slot across all B instances of the world.

Per step: observation from the world -> policy speaks -> quantize + encode with noise
keyed by this agent's own clock view and epoch seed -> broadcast through the broker ->
decode every peer's message with noise regenerated here (at the step the sync mode
gives: own view, the sender's stamp, or its low bits resolved near the own view) -> act
on the heard z_hats (mean or attention) -> actions to the world. A peer whose message
misses the wait (half the world's per-step deadline) counts as silent (zeros heard), so
a dead peer slows the step but never stops it, and the live agents still answer the
world in time.

Beacons (from the sync service only; others are counted and ignored) update the epoch
table and correct the clock; clock faults come from the broker. With an oracle folder
the agent logs, off the data plane, the noise (step, seed) of every frame it sends and
every frame it decodes (agents/desync.py turns that into desync figures).
"""

from __future__ import annotations

import bisect
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from broker import protocol
from broker import trace
from broker.bus import EMBEDDED, Publisher
from broker.peer import Peer
from broker.sync import fetch_epoch
from channel import ChannelError, frame, load_kernels

from . import lockstep
from .clock import Clock
from .desync import OracleLog
from .envs import make
from .message import MessageChannel, SyncMode
from .policy import PolicyConfig, forget, init_policies, load_checkpoint
from .run_config import AgentSetup, ConfigError, RunConfig

log = logging.getLogger("ddcl.agent")


@dataclass
class AgentStats:
    messages: int = 0
    payload_bits: int = 0
    silent_peers: int = 0  # peer messages that missed the wait deadline
    bad_frames: int = 0
    bad_beacons: int = 0  # beacons from anyone but the sync service
    beacons: int = 0
    steps: int = 0
    record: list = field(default_factory=list)


class Epochs:
    """Known epoch starts and seeds; a step's seed is that of the latest start at or before it
    (the earliest known, for a step before them all). Looked up per frame: kept sorted."""

    def __init__(self):
        self.starts: list[int] = []
        self.seeds: dict[int, int] = {}

    def update(self, announcement: dict) -> None:
        for start, seed in announcement["epochs"]:
            if int(start) not in self.seeds:
                bisect.insort(self.starts, int(start))
            self.seeds[int(start)] = int(seed)

    def seed_for(self, step: int) -> int:
        return self.seeds[self.starts[max(bisect.bisect_right(self.starts, step) - 1, 0)]]

    def stale_at(self, step: int) -> int | None:
        """The start of an epoch `step` is in that no announcement named (epochs are of
        equal length, so the last two starts say where the next begins); None if none."""
        if len(self.starts) < 2:
            return None
        length = self.starts[-1] - self.starts[-2]
        return self.starts[-1] + length if step >= self.starts[-1] + length else None


# A Kubernetes StatefulSet names its pods NAME-0, NAME-1, ... (DNS labels): the ordinal is the
# pod's stable index, which a restarted pod keeps, so it is the agent's K.
POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?-(0|[1-9][0-9]*)")


def wanted_agent_id(value: str) -> bytes:
    """The id to claim from `--id` / DDCL_AGENT_ID: agent-K as given, a StatefulSet pod name
    such as ddcl-agent-2 (deploy/k8s sets DDCL_AGENT_ID from metadata.name) as agent-2, empty
    for an id the broker assigns. Anything else goes to the broker as given, which refuses it."""
    m = POD_NAME.fullmatch(value)
    return protocol.agent_id(int(m.group(2))) if m else value.encode()


def pick_device(name: str) -> torch.device:
    """auto: CUDA when present. A CUDA device that is not there is refused (ValueError)
    before a process registers or a training starts, not deep inside torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} is not here: {torch.cuda.device_count()} CUDA devices "
                         f"(torch {torch.__version__}); use --device auto or cpu")
    return dev


class Agent:
    def __init__(self, endpoint: str, wanted_id: bytes = b"", device: str = "auto", checkpoint: str | None = None,
                 record: bool = False, curve=None, bus_url: str = "embedded", run: str = "default"):
        self.device = pick_device(device)  # a missing device is refused before registering
        load_kernels()  # before registering: the first message must not wait for them
        self.peer = Peer(endpoint, b"agent", wanted_id, curve=curve)
        trace.name(self.peer.id.decode())
        # embedded: the broker itself publishes registrations and last wills
        self.bus = Publisher(bus_url, run, self.peer.id.decode()) if bus_url != EMBEDDED else None
        self.index = protocol.agent_index(self.peer.id)
        torch.set_num_threads(1)  # tiny per-step batches; many processes share the cores
        self.checkpoint = checkpoint
        self.recording = record
        self.stats = AgentStats()
        self.epochs = Epochs()
        reply = fetch_epoch(self.peer)
        self.epochs.update(reply)
        self.run_seed = int(reply["run_seed"])
        self.clock = Clock()
        self.asked_for = None  # healing sync: the unannounced epoch start last asked the sync service about
        self.peer.on_reregistered = self._taken_back
        self.run_config: RunConfig | None = None  # the world's, once it has sent it
        self.oracle = None
        self.should_stop = lambda: False
        self.world_step = 0
        self.inbox: dict[int, bytes] = {}  # latest unconsumed message per peer sender
        # the world's messages that came while this agent waited for its peers (the world
        # moved on at its deadline): handled, in order, once the step is done
        self.from_world: deque[list[bytes]] = deque()

    def _taken_back(self) -> None:
        """A broker took this agent back. A restarted one holds no clock faults (one that
        gave the agent up for dead pushes its faults right after), so the clock runs true."""
        self.clock.set_faults(0.0, 0.0, self.world_step)

    def configure(self, setup: AgentSetup) -> None:
        run = setup.run
        n = run.agents
        env = make(run.env, 1, 0, n)  # one instance, for its dimensions
        if self.checkpoint:
            pcfg, policies, ck = load_checkpoint(self.checkpoint, run.env, env.obs_dim, env.n_actions, n)
            spec = ck["codec"]  # its range models and learned steps: every agent reads the same
        else:
            pcfg = PolicyConfig(env.obs_dim, env.n_actions, run.msg_dim, delta=run.delta, core=run.core,
                                aggregate=run.aggregate)
            policies = init_policies(pcfg, n, run.seed)
            spec = None
        self.policy = policies[self.index].to(self.device).eval()
        self.state = self.policy.initial_state(run.batch, self.device)
        self._warm_up(run.batch, env.obs_dim, n - 1)
        self.pcfg = pcfg
        self.env_spec = env
        self.run_config = run
        self.peer_slots = [j for j in range(n) if j != self.index]  # heard messages stack in this order
        if self.stats.steps:  # a new world, after one that died mid-run: its figures count from zero
            self.stats, self.inbox = AgentStats(), {}
            if self.oracle:
                self.oracle.close()
                self.oracle = None
        self.channel = MessageChannel.from_checkpoint(spec, run.codec, n, pcfg.msg_dim, pcfg.delta, self.run_seed,
                                                      SyncMode.parse(run.sync))
        self.clock.mode, self.clock.tick_s, self.clock.t0 = run.clock, run.tick_s, setup.t0
        if setup.oracle_dir and self.oracle is None:
            try:
                self.oracle = OracleLog(Path(setup.oracle_dir), self.index)
            except OSError as e:  # a log off the data plane: the run goes on, unmeasured for desync
                log.warning("no oracle log (the world's run folder is not reachable from here): %s", e)
        log.info("agent %d ready on %s: env %s, B=%d, codec %s, sync %s", self.index, self.device, run.env,
                 run.batch, run.codec, run.sync)

    def _warm_up(self, batch: int, obs_dim: int, peers: int) -> None:
        """One step's forward passes on zeros, before READY: a device's first kernels load
        (and a CUDA context starts) in seconds, which step 0 must not wait for."""
        zeros = torch.zeros((batch, obs_dim), device=self.device)
        h, _, _ = self.policy.speak(zeros, self.state)
        self.policy.act(h, torch.zeros((batch, peers, self.policy.cfg.msg_dim), device=self.device)).argmax(-1).cpu()

    def run(self, should_stop=lambda: False) -> AgentStats:
        self.should_stop = should_stop  # asked mid-step too: a peer wait lasts up to the deadline
        try:
            self._serve(should_stop)
        finally:
            if self.oracle:
                self.oracle.close()
            if self.bus:
                self.bus.close()
            self.peer.close()
        return self.stats

    # the whole run in inference mode, not each step: an agent never trains, and entering
    # the mode costs as much as one of a step's torch ops
    @torch.inference_mode()
    def _serve(self, should_stop) -> None:
        last_join = 0.0
        while not should_stop():
            if self.run_config is None and time.monotonic() - last_join > 1.0:
                self.join()  # until the world answers: it may not have registered yet
                last_join = time.monotonic()
            msg = self.from_world.popleft() if self.from_world else self.peer.recv(0.2)
            if msg is None:
                continue
            if protocol.is_channel_frame(msg[0]):  # peers' messages: one, or a step's bundle
                self._buffer(msg)
            elif msg[0] == protocol.DELIVER and len(msg) == 3:
                if not self._delivered(msg[1], msg[2]):
                    return

    def join(self) -> None:
        self.peer.send_to(protocol.WORLD_ID, protocol.pack({"op": lockstep.JOIN}))

    def _buffer(self, frames: list[bytes]) -> None:
        for data in frames:
            if len(data) >= 2:
                self.inbox[data[1]] = data  # byte 1 of a channel frame is its sender

    def _delivered(self, src: bytes, body: bytes) -> bool:
        """Handle one DELIVER; False when the run is over."""
        if src == protocol.WORLD_ID:
            return self._from_world(body)
        if protocol.is_channel_frame(body):
            return True
        try:
            req = protocol.unpack(body)
            op = req.get("op")
        except Exception:  # a malformed control body is dropped, not fatal
            return True
        if op == protocol.BEACON:
            if src != protocol.SYNC_ID:
                self.stats.bad_beacons += 1
                return True
            self.stats.beacons += 1
            self.epochs.update(req)
            self.clock.on_beacon(int(req["ref_step"]), float(req["ref_time"]))
        elif op == protocol.EPOCH and src == protocol.SYNC_ID:  # the answer to a healing agent's question
            self.epochs.update(req)
        elif op == protocol.CLOCK and src == protocol.BROKER_ID:
            self.clock.set_faults(float(req["skew"]), float(req["drift_ppm"]), self.world_step)
        return True

    def _from_world(self, body: bytes) -> bool:
        if not protocol.is_channel_frame(body):
            req = protocol.unpack(body)
            if req.get("op") == lockstep.HELLO:
                self.join()
            elif req.get("op") == lockstep.CONFIG:
                try:
                    setup = AgentSetup.from_wire(req.get("setup"))
                except ConfigError as e:  # not READY: the world's wait for agents names this one
                    log.warning("refused the world's config: %s", e)
                    return True
                self.configure(setup)
                self.peer.send_to(protocol.WORLD_ID, protocol.pack({"op": lockstep.READY}))
            elif req.get("op") == lockstep.END:
                if self.oracle:  # the world reads the oracle logs once every agent has reported
                    self.oracle.flush()
                s = self.stats
                self.peer.send_to(protocol.WORLD_ID, protocol.pack({"op": lockstep.AGENT_STATS, "agent": self.index, "messages": s.messages,
                                                      "payload_bits": s.payload_bits, "silent_peers": s.silent_peers,
                                                      "bad_frames": s.bad_frames, "bad_beacons": s.bad_beacons,
                                                      "beacons": s.beacons, "msg_dim": self.pcfg.msg_dim,
                                                      "delta": float(np.mean(self.channel.layers[self.index].delta)),
                                                      "run_seed": self.run_seed}))
                return False
            return True
        if self.run_config is None:
            return True
        trace.mark("obs in")
        try:
            step, obs, first = lockstep.unpack_obs(frame.unpack(body), self.run_config.batch, self.env_spec.obs_dim)
        except ChannelError as e:
            log.warning("bad observation frame: %s", e)
            return True
        self.step(step, obs, first)
        return True

    def _await_peers(self) -> bool:
        """Until every peer's message of this step is in, or its deadline passed (a silent
        peer is counted later); False when told to stop meanwhile."""
        deadline = time.monotonic() + self.run_config.peer_wait_s
        while any(j not in self.inbox for j in self.peer_slots) and (left := deadline - time.monotonic()) > 0:
            if self.should_stop():
                return False
            msg = self.peer.recv(min(left, lockstep.STOP_POLL_S))
            if msg is None:
                continue
            if protocol.is_channel_frame(msg[0]):  # peers' messages: one, or a step's bundle
                self._buffer(msg)
            elif msg[0] == protocol.DELIVER and len(msg) == 3 and msg[1] == protocol.WORLD_ID:
                self.from_world.append(msg)  # the next step's observations, or the end
            elif msg[0] == protocol.DELIVER and len(msg) == 3:
                self._delivered(msg[1], msg[2])  # a beacon or clock fault mid-step
        return True

    def step(self, step: int, obs: np.ndarray, first: np.ndarray) -> None:
        """One lockstep step (inside _serve's inference mode)."""
        batch = self.run_config.batch
        self.world_step = step
        view = self.clock.view(step)
        self.state = forget(self.state, first)  # a new episode starts with empty memory
        h, z, self.state = self.policy.speak(torch.from_numpy(np.ascontiguousarray(obs)).to(self.device), self.state)
        seed = self.epochs.seed_for(view)
        if self.channel.sync.every and (start := self.epochs.stale_at(view)) is not None and start != self.asked_for:
            # healing: beacons missed an epoch's rotation; its seed, asked once, comes in a step or two
            self.asked_for = start
            self.peer.send_to(protocol.SYNC_ID, protocol.pack({"op": protocol.EPOCH}))
        z_hat, data, nbits = self.channel.speak(z, self.index, view, seed)
        trace.mark("encoded")
        self.peer.broadcast_frame(data)
        trace.mark("message sent")
        self.stats.messages += 1
        self.stats.payload_bits += nbits
        peers = self.peer_slots
        if not self._await_peers():  # stopped: the step is left unfinished, no actions for it
            return
        trace.mark("peers heard")
        heard, received, decoded = np.zeros((batch, len(peers), self.pcfg.msg_dim), dtype=np.float32), {}, []
        for slot, j in enumerate(peers):
            data_j = self.inbox.pop(j, None)
            if data_j is None:
                self.stats.silent_peers += 1
                continue
            try:
                sender, zh, (rx_step, rx_seed) = self.channel.hear(data_j, view, self.epochs.seed_for,
                                                                   (batch, self.pcfg.msg_dim), tick=step)
            except ChannelError:
                self.stats.bad_frames += 1
                continue
            received[sender] = zh
            heard[:, slot] = zh
            decoded.append((sender, data_j, rx_step, rx_seed))
        trace.mark("decoded")
        logits = self.policy.act(h, torch.from_numpy(heard).to(self.device))
        actions = logits.argmax(dim=-1).cpu().numpy()  # int64
        self.peer.send_to(protocol.WORLD_ID, lockstep.pack_actions(self.index, step, actions))
        trace.mark("actions sent")
        self.stats.steps += 1
        if self.oracle:
            self.oracle.note(step, data, view, seed, decoded)
        if self.recording:
            self.stats.record.append({"step": step, "z_hat": z_hat, "received": received, "actions": actions})
