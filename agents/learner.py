"""The learning agent process: agent k's policy, DDCL layer (with its learned prior) and
Adam optimizer, on CUDA when present.

Forward, each lockstep step, exactly agents/agent.py's path: observation from the world
-> speak -> quantize and encode -> broadcast the frame -> decode every peer's frame with
the dither regenerated here -> act -> actions to the world. What it heard becomes a leaf
tensor that requires grad, and its own z_hat stays in this process's graph.

Backward, once per update (agents/learn_wire.py's exchange): the world's advantages give
this agent's own loss (train.agent_loss); its gradient with respect to what each peer
said goes to that peer as a gradient frame; the gradients the peers send back for this
agent's own messages are added to its loss's in one backward pass. A message depends
only on its speaker's own observation history, so that is the in-process gradient. The
world adds the critic's gradient norm to the learners' for the global clip, and every
party clips by the same total before its Adam step.

Faults: after each Adam step the learner saves its state (policy, layer with its prior,
Adam, action generator, the peers' priors it decodes with) for that update, in memory
and, with a state folder, on disk (the last two updates). A learner restarted with its
id builds itself from the world's config, and the world's ROLLBACK (it voids the update
under way when a learner rejoins or the broker restarts) makes it and every peer load
the state of the last update all of them saved: that update's successor is redone.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from broker import protocol
from broker.peer import BrokerError, Peer
from channel import ChannelError, frame, load_kernels

from . import learn_wire
from . import lockstep
from .agent import pick_device
from .learn_desync import LearnDesync
from .message import MessageChannel, SyncMode
from .policy import forget
from .sampling import generators, sample
from .train import EPOCH_SEED, agent_loss, lam_at, setup
from .train_config import TrainConfig

log = logging.getLogger("ddcl.learner")

WAIT_S = 120.0  # the longest a learner waits for a peer or the world mid-update before it gives up


class Stopped(Exception):
    """The process was asked to stop, or the world ended the run."""


class Rollback(Exception):
    """The world voided the update under way."""


KEEP_STATES = 2  # saved updates kept: the world goes back at most to the one before the latest


@dataclass
class LearnerStats:
    steps: int = 0
    messages: int = 0
    payload_bits: int = 0
    gradient_frames: int = 0
    bad_frames: int = 0  # peer frames (messages, gradients, priors) that failed to parse, dropped
    desynced: int = 0  # decodes that used another noise step than their sender's (a clock fault)


def _input_grads(loss: torch.Tensor, leaves: list[torch.Tensor]) -> torch.Tensor:
    """d loss / d each leaf (a step's heard messages), stacked; zeros where the loss does
    not reach a leaf. The graph is kept: the speaker's own backward pass comes after."""
    grads = torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True)
    return torch.stack([g if g is not None else torch.zeros_like(x) for g, x in zip(grads, leaves)])


class Learner:
    def __init__(self, endpoint: str, wanted_id: bytes = b"", device: str = "auto", curve=None,
                 state_dir: Path | None = None):
        """wanted_id: agent-K, or empty for the id the broker assigns (compose replicas)."""
        self.device = pick_device(device)  # a missing device is refused before registering
        load_kernels()
        torch.set_num_threads(1)  # many processes share the cores
        self.peer = Peer(endpoint, b"agent", wanted_id, curve=curve)
        self.index = protocol.agent_index(self.peer.id)
        self.stats = LearnerStats()
        self.cfg: TrainConfig | None = None
        self.frames: dict[int, bytes] = {}  # latest unconsumed message frame per peer
        # this update's gradient frames per peer, in arrival order: the broker keeps a
        # link's order, and a speaker sends its frames in step order
        self.gradients: dict[int, deque[bytes]] = defaultdict(deque)
        self.priors: dict[tuple[int, int], dict] = {}  # (peer, update) -> its prior after that update
        self.from_world: deque[bytes] = deque()
        self.should_stop = lambda: False
        self.state_dir = Path(state_dir) if state_dir else None
        self.saved: dict[int, dict] = {}  # update -> this learner's state after it (the last KEEP_STATES)
        self.pending_rollback: tuple[int, int] | None = None  # (to, round) of a ROLLBACK not yet obeyed
        self.round = 0  # the last rollback round obeyed
        self.resumed = 0  # the last round the world resumed
        self.rolled_to = 0  # the update the last rollback went back to

    # ----- the wire -----

    def _pump(self, timeout_s: float) -> None:
        """Receive one message and file it where the waits below look."""
        msg = self.peer.recv(timeout_s)
        if msg is None:
            return
        if protocol.is_channel_frame(msg[0]):  # peers' messages: one, or a step's bundle
            for data in msg:
                if len(data) >= 2:
                    self.frames[data[1]] = data  # byte 1 of a channel frame is its sender
            return
        if msg[0] == protocol.ERROR:  # the broker refused what this learner sent: no peer will answer it
            raise BrokerError(f"agent {self.index}: the broker refused a message: "
                              f"{msg[1][:protocol.ECHO_BYTES].decode(errors='replace') if len(msg) > 1 else ''}")
        if msg[0] != protocol.DELIVER or len(msg) != 3:
            return
        src, body = msg[1], msg[2]
        if src == protocol.WORLD_ID:
            op = None if protocol.is_channel_frame(body) else learn_wire.op_of(body)
            if op in (learn_wire.ROLLBACK, learn_wire.RESUME):
                try:
                    self._on_rollback(op, body)
                except ChannelError as e:
                    self.stats.bad_frames += 1
                    log.warning("bad %s from the world: %s", op, e)
            else:
                self.from_world.append(body)
            return
        self._from_peer(src, body)

    def _on_rollback(self, op: str, body: bytes) -> None:
        if op == learn_wire.ROLLBACK:
            to, rnd = learn_wire.unpack_rollback(body)
            if rnd > self.round:
                self.pending_rollback = (to, rnd)
            elif rnd == self.round and self.resumed < rnd:  # the world missed the answer: again
                self.peer.send_to(protocol.WORLD_ID, protocol.pack({"op": learn_wire.ROLLED, "round": rnd}))
        elif learn_wire.field(learn_wire.parse(body, learn_wire.RESUME), "round", int) == self.round > self.resumed:
            # everything a peer or the world sent before this belongs to the voided update
            self.resumed = self.round
            self.frames.clear()
            self.gradients.clear()
            self.from_world.clear()
            self.priors = {k: v for k, v in self.priors.items() if k[1] <= self.rolled_to}

    def _from_peer(self, src: bytes, body: bytes) -> None:
        j = protocol.agent_index(src)
        if j is None or j == self.index:
            return
        if protocol.is_channel_frame(body):
            if len(self.gradients[j]) < learn_wire.MAX_PENDING_GRADIENT_FRAMES:
                self.gradients[j].append(body)
            else:  # more than any update sends: a peer gone wrong
                self.stats.bad_frames += 1
        elif learn_wire.op_of(body) == learn_wire.PRIOR:
            req = protocol.unpack(body)
            if isinstance(update := req.get("update"), int):
                self.priors[(j, update)] = req
                # a few per peer at most: the ones a rollback may go back to
                self.priors = {k: v for k, v in self.priors.items() if k[0] != j or k[1] >= update - KEEP_STATES}

    def _wait(self, done, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not done():
            if self.should_stop():
                raise Stopped
            if self.pending_rollback is not None and self.cfg is not None:  # joining, it first needs the config
                raise Rollback
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent {self.index}: no {what} in {WAIT_S:.0f} s")
            self._pump(0.2)

    def _world(self, what: str) -> bytes:
        """The world's next body for the run, answering STATE? and END on the way."""
        while True:
            self._wait(lambda: self.from_world, what)
            body = self.from_world.popleft()
            op = None if protocol.is_channel_frame(body) else learn_wire.op_of(body)
            if self.cfg is None and op not in (learn_wire.CONFIG, lockstep.HELLO, lockstep.END):
                continue  # what the world sent this id's previous process: stale
            if op == learn_wire.STATE_ASK:
                self.peer.send_to(protocol.WORLD_ID, learn_wire.pack_tensors(learn_wire.STATE, self._state(), agent=self.index))
            elif op == lockstep.END:
                s = self.stats
                self.peer.send_to(protocol.WORLD_ID, protocol.pack({"op": learn_wire.LEARNER_STATS, "agent": self.index, **s.__dict__}))
                raise Stopped
            elif op == learn_wire.CONFIG and self.cfg is None:
                return body
            elif op in (lockstep.HELLO, learn_wire.CONFIG):  # a world that missed this agent's JOIN or READY asks again
                self.peer.send_to(protocol.WORLD_ID, protocol.pack({"op": lockstep.JOIN if self.cfg is None else lockstep.READY}))
            else:
                return body

    def _state(self) -> dict[str, torch.Tensor]:
        state = dict(self.policy.state_dict())
        if self.layer.prior is not None:
            state.update({f"prior.{k}": v for k, v in self.layer.prior.state_dict().items()})
        return state

    # ----- the run -----

    def run(self, should_stop=lambda: False) -> LearnerStats:
        self.should_stop = should_stop
        try:
            self._join()
            update = 0
            while True:
                try:
                    if self.pending_rollback is not None:
                        raise Rollback
                    update += 1
                    self._update(update, self._rollout(update))
                    self._save(update)
                except Rollback:
                    update = self._roll_back()
        except Stopped:
            pass
        finally:
            self.peer.close()
        return self.stats

    def _join(self) -> None:
        self.peer.send_to(protocol.WORLD_ID, protocol.pack({"op": lockstep.JOIN}))
        req = learn_wire.parse(self._world("the world's config"), learn_wire.CONFIG)
        cfg = TrainConfig(**{k: v for k, v in learn_wire.field(req, "config", dict).items()
                             if k in TrainConfig.__dataclass_fields__})
        cfg.device = str(self.device)
        self.grad = learn_wire.GradCodec(learn_wire.field(req, "grad_codec", str), cfg.seed)
        try:
            self.desync = LearnDesync.from_dict(req.get("desync"))
            self.desync.validate(cfg.agents)
        except ValueError as e:
            raise learn_wire.WireError(str(e)) from None
        s = setup(cfg)  # every agent's policy and layer, as the in-process trainer builds them
        self.cfg, self.env = cfg, s.env
        self.policy, self.layer = s.policies[self.index], s.layers[self.index]
        # every sender's layer: a peer's learned range model arrives as PRIOR after each update
        self.channel = MessageChannel(s.layers, SyncMode.parse(self.desync.sync))
        self.peers = [j for j in range(cfg.agents) if j != self.index]
        self.opt = torch.optim.Adam([{"params": list(self.policy.parameters())},
                                     {"params": list(self.layer.parameters()), "lr": cfg.prior_lr}], lr=cfg.lr)
        self.gen = generators(cfg.seed, [self.index], self.device)[0]
        self.state = self.policy.initial_state(cfg.batch, self.device)
        self._save(0)  # the same for a restarted learner: setup() is seeded
        self.peer.send_to(protocol.WORLD_ID, protocol.pack({"op": lockstep.READY}))
        log.info("learner %d ready on %s", self.index, self.device)

    def _rollout(self, update: int) -> dict:
        cfg, batch, dim = self.cfg, self.cfg.batch, self.cfg.msg_dim
        if update > 1 and self.layer.prior is not None and cfg.codec == "range":
            self._take_priors(update - 1)
        r = {"logp": [], "ent": [], "rate": [], "z_hat": [], "heard": [], "bits": 0, "decodes": 0, "desynced": 0,
             "ideal": [], "logp_ideal": [], "ent_ideal": []}
        if self.state is not None:
            self.state = self.state.detach()  # backprop through this rollout only
        for _ in range(cfg.rollout):
            step, obs, first = lockstep.unpack_obs(frame.unpack(self._world("observations")), batch, self.env.obs_dim)
            view = self.desync.view(self.index, step, cfg.rollout)  # the step this learner keys its noise by
            self.state = forget(self.state, first)
            h, z, self.state = self.policy.speak(torch.from_numpy(obs).to(self.device), self.state,
                                                cfg.msg_body_grad)
            r["z_hat"].append(self.layer(z, view, self.index))  # in the graph: the peers' gradients enter here
            r["rate"].append(self.layer.rate_loss("none"))
            _, data, nbits = self.channel.speak(z.detach(), self.index, view, EPOCH_SEED)  # the same z_hat, encoded
            self.peer.broadcast_frame(data)
            r["bits"] += nbits
            heard, ideal = self._hear(step, view, (batch, dim), r)
            heard = torch.from_numpy(heard).to(self.device).requires_grad_()
            actions, logp, ent = sample(self.policy.act(h, heard), self.gen)
            self.peer.send_to(protocol.WORLD_ID, lockstep.pack_actions(self.index, step, actions.cpu().numpy()))
            r["logp"].append(logp)
            r["ent"].append(ent)
            r["heard"].append(heard)
            if self.desync.probe:  # the synchronized listener, on the same observations and actions
                ideal = torch.from_numpy(ideal).to(self.device).requires_grad_()
                dist = torch.distributions.Categorical(logits=self.policy.act(h, ideal).contiguous())
                r["ideal"].append(ideal)
                r["logp_ideal"].append(dist.log_prob(actions))
                r["ent_ideal"].append(dist.entropy())
            self.stats.steps += 1
            self.stats.messages += 1
            self.stats.payload_bits += nbits
        return r

    def _hear(self, step: int, view: int, shape, r: dict) -> tuple[np.ndarray, np.ndarray]:
        """Every peer's message of this step, decoded with the noise this learner's clock
        and the frame's stamp say, stacked in peer order: (B, peers, D); and, with the
        probe, the same messages decoded with their senders' own noise (else the first
        again). A frame that fails to decode is dropped and its sender waited for again."""
        heard = np.zeros((shape[0], len(self.peers), shape[1]), dtype=np.float32)
        ideal = heard if not self.desync.probe else np.zeros_like(heard)
        todo = dict(enumerate(self.peers))
        while todo:
            self._wait(lambda: any(j in self.frames for j in todo.values()), "peer message")
            for slot, j in list(todo.items()):
                if (data := self.frames.pop(j, None)) is None:
                    continue
                try:
                    sender, heard[:, slot], (used, _) = self.channel.hear(data, view, lambda _s: EPOCH_SEED, shape)
                    if sender != j:
                        raise ChannelError(f"frame from agent {j} says sender {sender}")
                except ChannelError as e:
                    self.stats.bad_frames += 1
                    log.warning("bad message frame from agent %d: %s", j, e)
                    continue
                del todo[slot]
                true = self.desync.view(j, step, self.cfg.rollout)  # the oracle's: never on the wire
                r["decodes"] += 1
                r["desynced"] += used != true
                if self.desync.probe:
                    ideal[:, slot] = (heard[:, slot] if used == true else
                                      self.channel.layers[j].decode(frame.unpack(data).payload, shape, true, j, EPOCH_SEED))
        return heard, ideal

    def _update(self, update: int, r: dict) -> None:
        cfg = self.cfg
        shape = (cfg.rollout, cfg.batch)
        adv = torch.from_numpy(learn_wire.unpack_advantage(self._world("advantages"), update, shape)).to(self.device)
        logp, ent, rate = torch.stack(r["logp"]), torch.stack(r["ent"]), torch.stack(r["rate"])
        loss = agent_loss(logp, adv, ent, rate, lam_at(cfg, update), cfg)
        # what each peer's messages did to this agent's loss, for that peer
        said = _input_grads(loss, r["heard"])
        probe = {"decodes": r["decodes"], "desynced": r["desynced"]}
        self.stats.desynced += r["desynced"]
        if self.desync.probe:
            ideal_loss = agent_loss(torch.stack(r["logp_ideal"]), adv, torch.stack(r["ent_ideal"]), rate,
                                    lam_at(cfg, update), cfg)
            probe.update(learn_wire.gradient_bias(said, _input_grads(ideal_loss, r["ideal"])))
        for slot, j in enumerate(self.peers):  # a send each: together they could pass the broker's size limit
            for data in self.grad.frames(self.index, j, update, said[:, :, slot]):
                self.peer.send_to(protocol.agent_id(j), data)
                self.stats.gradient_frames += 1
        received = self._gradients(update, (*shape, cfg.msg_dim))
        self.opt.zero_grad()
        own = torch.stack(r["z_hat"])
        torch.autograd.backward([loss, own], [torch.ones_like(loss), received.to(self.device)])
        params = [p for p in self.policy.parameters() if p.grad is not None]
        norms = torch._foreach_norm([p.grad for p in params])  # what clip_grad_norm_ computes per parameter
        wire_bits = r["bits"] / (cfg.rollout * cfg.batch)
        self.peer.send_to(protocol.WORLD_ID, learn_wire.pack_norms(update, norms, float(rate.mean().detach()), wire_bits,
                                                                   probe))
        total = learn_wire.unpack_clip(self._world("the gradient norm"), update)
        torch.nn.utils.clip_grads_with_norm_(params, 1.0, torch.tensor(total, dtype=torch.float32, device=self.device))
        self.opt.step()
        self._send_prior(update)

    def _send_prior(self, update: int) -> None:
        """This learner's prior after `update` to its peers: the range coder's model both
        ends use for its next messages (only where the run codes with a learned prior)."""
        if self.layer.prior is not None and self.cfg.codec == "range":
            prior = learn_wire.pack_tensors(learn_wire.PRIOR, self.layer.prior.state_dict(), update=update)
            self.peer.send_each((protocol.agent_id(j), prior) for j in self.peers)

    def _gradients(self, update: int, shape) -> torch.Tensor:
        """The sum, in peer order, of what every peer sends back for this agent's messages."""
        chunks = learn_wire.gradient_chunks(shape[0], math.prod(shape[1:]))
        total = torch.zeros(shape)
        for j in self.peers:
            parts = []
            for chunk, steps in enumerate(chunks):
                self._wait(lambda: self.gradients[j], f"gradient frame from agent {j}")
                try:
                    sender, g = self.grad.unpack(self.gradients[j].popleft(), self.index, update, chunk,
                                                 (steps, *shape[1:]))
                    if sender != j:
                        raise learn_wire.WireError(f"gradient from agent {j} says listener {sender}")
                except ChannelError as e:  # a piece missing: the update cannot be exact
                    self.stats.bad_frames += 1
                    raise learn_wire.WireError(f"bad gradient frame from agent {j}: {e}") from None
                parts.append(g)
            total += torch.from_numpy(np.concatenate(parts))
        return total

    def _take_priors(self, update: int) -> None:
        """Each peer's prior after `update`: its messages of the next rollout are coded with it."""
        for j in self.peers:
            self._wait(lambda: (j, update) in self.priors, f"agent {j}'s prior")
            layer = self.channel.layers[j]
            try:
                layer.prior.load_state_dict(learn_wire.unpack_tensors(self.priors[(j, update)], layer.prior.state_dict()))
            except ChannelError as e:  # its messages will not decode: a run that cannot go on
                raise learn_wire.WireError(f"agent {j}'s prior: {e}") from None

    # ----- faults: saved states and rollbacks -----

    def _file(self, update: int) -> Path:
        return self.state_dir / f"agent-{self.index}-update-{update}.pt"

    def _save(self, update: int) -> None:
        """This learner's state after `update`, kept for a rollback to it."""
        state = {"update": update, "policy": self.policy.state_dict(), "layer": self.layer.state_dict(),
                 "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
                 "priors": [None if layer.prior is None else layer.prior.state_dict() for layer in self.channel.layers]}
        state = copy.deepcopy(state)  # the next step changes the tensors in place
        self.saved[update] = state
        for old in [u for u in self.saved if u <= update - KEEP_STATES]:
            del self.saved[old]
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self._file(update).with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, self._file(update))  # whole or absent: a kill never leaves half a state
            for old in self.state_dir.glob(f"agent-{self.index}-update-*.pt"):
                if int(old.stem.rsplit("-", 1)[1]) <= update - KEEP_STATES:
                    old.unlink(missing_ok=True)

    def _restore(self, update: int) -> None:
        state = self.saved.get(update)
        if state is None and self.state_dir is not None and self._file(update).exists():
            state = torch.load(self._file(update), weights_only=True)
        if state is None:
            raise RuntimeError(f"agent {self.index}: no saved state for update {update} "
                               f"(in memory: {sorted(self.saved)}; folder: {self.state_dir})")
        self.policy.load_state_dict(state["policy"])
        self.layer.load_state_dict(state["layer"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        for layer, prior in zip(self.channel.layers, state["priors"]):
            if prior is not None:
                layer.prior.load_state_dict(prior)
        self.state = self.policy.initial_state(self.cfg.batch, self.device)  # the world starts fresh episodes

    def _roll_back(self) -> int:
        """Obey the world's ROLLBACK (the newest, if another comes meanwhile): restore the
        state after its update, answer, wait for RESUME; -> that update."""
        while True:
            to, rnd = self.pending_rollback
            self.pending_rollback = None
            self._restore(to)
            self.round, self.rolled_to = rnd, to
            log.warning("agent %d: rolled back to update %d (round %d)", self.index, to, rnd)
            self.peer.send_to(protocol.WORLD_ID, protocol.pack({"op": learn_wire.ROLLED, "round": rnd}))
            try:
                self._wait(lambda: self.resumed == rnd, "the world's resume")
                break
            except Rollback:
                continue
        if to >= 1:  # the peers decode its next messages with the prior it went back to
            self._send_prior(to)
        return to
