"""The agent process: one agent slot across all B instances of the world.

Per step: observation from the world -> policy speaks -> quantize + encode with noise
from this agent's own step view -> broadcast through the broker -> decode every peer's
message with noise regenerated here -> act on the mean heard z_hat -> actions to the world.
A peer whose message misses the wait (half the world's per-step deadline) counts as
silent (zeros heard), so a dead peer slows the step but never stops it, and the live
agents still answer the world in time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from broker import protocol as P
from broker.peer import Peer
from broker.sync import fetch_epoch
from channel import ChannelError, codecs, frame

from . import lockstep as L
from .envs import ENVS
from .message import MessageChannel
from .policy import PolicyConfig, init_policies, load_checkpoint

log = logging.getLogger("ddcl.agent")


@dataclass
class AgentStats:
    messages: int = 0
    payload_bits: int = 0
    heard: int = 0
    silent_peers: int = 0  # peer messages that missed the wait deadline
    bad_frames: int = 0
    steps: int = 0
    record: list = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Agent:
    def __init__(self, endpoint: str, wanted_id: bytes = b"", device: str = "auto", checkpoint: str | None = None,
                 record: bool = False):
        self.peer = Peer(endpoint, b"agent", wanted_id)
        self.index = P.agent_index(self.peer.id)
        self.device = pick_device(device)
        torch.set_num_threads(1)  # tiny per-step batches; many processes share the cores
        self.checkpoint = checkpoint
        self.recording = record
        self.stats = AgentStats()
        self.epoch = fetch_epoch(self.peer)
        self.config = None
        self.inbox: dict[int, bytes] = {}  # latest unconsumed message per peer sender

    def configure(self, cfg: dict) -> None:
        env = ENVS[cfg["env"]]
        n = cfg["agents"]
        if self.checkpoint:
            pcfg, policies, _ = load_checkpoint(self.checkpoint, cfg["env"], env.obs_dim, env.n_actions, n)
        else:
            pcfg = PolicyConfig(env.obs_dim, env.n_actions, cfg["msg_dim"], delta=cfg["delta"])
            policies = init_policies(pcfg, n, cfg["policy_seed"])
        self.policy = policies[self.index].to(self.device).eval()
        self.pcfg = pcfg
        self.env_cls = env
        self.config = cfg
        codec = codecs.get(cfg["codec"], **cfg.get("codec_options", {}))
        self.channel = MessageChannel(codec, pcfg.delta, self.epoch["run_seed"], self.epoch["epoch_seed"])
        log.info("agent %d ready on %s: env %s, B=%d, codec %s", self.index, self.device, cfg["env"], cfg["batch"], cfg["codec"])

    def run(self, should_stop=lambda: False) -> AgentStats:
        last_join = 0.0
        try:
            while not should_stop():
                if self.config is None and time.monotonic() - last_join > 1.0:
                    # until the world answers: it may not have registered yet
                    self.peer.send_to(P.WORLD_ID, P.pack({"op": L.JOIN}))
                    last_join = time.monotonic()
                self.peer.heartbeat_if_idle()
                msg = self.peer.recv(0.2)
                if msg is None:
                    continue
                if len(msg) == 1:
                    self._buffer(msg[0])
                elif msg[0] == P.DELIVER and len(msg) == 3 and msg[1] == P.WORLD_ID:
                    if not self._from_world(msg[2]):
                        break
        finally:
            self.peer.close()
        return self.stats

    def _buffer(self, data: bytes) -> None:
        if len(data) >= 2:
            self.inbox[data[1]] = data  # byte 1 of a channel frame is its sender

    def _from_world(self, body: bytes) -> bool:
        if not P.is_channel_frame(body):
            req = P.unpack(body)
            if req.get("op") == L.CONFIG:
                self.configure(req)
            elif req.get("op") == L.END:
                s = self.stats
                self.peer.send_to(P.WORLD_ID, P.pack({"op": L.AGENT_STATS, "agent": self.index, "messages": s.messages,
                                                      "payload_bits": s.payload_bits, "silent_peers": s.silent_peers,
                                                      "bad_frames": s.bad_frames}))
                return False
            return True
        if self.config is None:
            return True
        try:
            step, obs, _first = L.unpack_obs(frame.unpack(body), self.config["batch"], self.env_cls.obs_dim)
        except ChannelError as e:
            log.warning("bad observation frame: %s", e)
            return True
        self.step(step, obs)
        return True

    @torch.no_grad()
    def step(self, step: int, obs: np.ndarray) -> None:
        batch, n = self.config["batch"], self.config["agents"]
        h, z = self.policy.speak(torch.from_numpy(np.ascontiguousarray(obs)).to(self.device))
        z_hat, data, nbits = self.channel.speak(z, self.index, step)
        self.peer.broadcast_frame(data)
        self.stats.messages += 1
        self.stats.payload_bits += nbits
        peers = [j for j in range(n) if j != self.index]
        deadline = time.monotonic() + self.config["peer_wait_s"]  # half the world's deadline
        while any(j not in self.inbox for j in peers) and (left := deadline - time.monotonic()) > 0:
            msg = self.peer.recv(left)
            if msg is not None and len(msg) == 1:
                self._buffer(msg[0])
        heard, received = np.zeros((batch, self.pcfg.msg_dim), dtype=np.float32), {}
        for j in peers:
            data_j = self.inbox.pop(j, None)
            if data_j is None:
                self.stats.silent_peers += 1
                continue
            try:
                sender, zh = self.channel.hear(data_j, step, (batch, self.pcfg.msg_dim))
            except ChannelError:
                self.stats.bad_frames += 1
                continue
            received[sender] = zh
            heard += zh
        heard /= max(len(peers), 1)
        logits = self.policy.act(h, torch.from_numpy(heard).to(self.device))
        actions = logits.argmax(dim=-1).cpu().numpy().astype(np.int64)
        self.peer.send_to(P.WORLD_ID, L.pack_actions(self.index, step, actions))
        self.stats.steps += 1
        if self.recording:
            self.stats.record.append({"step": step, "z_hat": z_hat.cpu().numpy(), "received": received, "actions": actions})
