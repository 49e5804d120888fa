"""The world that trains: cfg.batch env instances, the centralized critic and the update
orchestration of a networked `ddcl train` (agents/learner.py holds each agent).

Per update: cfg.rollout lockstep steps (observations out, every learner's actions in,
no deadline: a learning step waits for all), then the returns and advantages exactly as
agents/train.py computes them (adv_norm over every agent's), each learner's advantage
column out, the critic's value loss backpropagated here, every learner's per-parameter
gradient norms in, the global norm (policies' and critic's) out, and the critic's Adam
step. The learners exchange their gradients among themselves meanwhile.

Evaluations (every cfg.eval_every updates and at the end) gather the learners' policies
and priors and run here; the end writes a `ddcl train` folder (config.json,
checkpoint.pt, summary.json, train.jsonl, TensorBoard), with the broker's byte counts
per update by kind beside the usual figures. A stop request ends the current update,
then evaluates and writes what it has.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from broker import protocol
from broker.peer import Peer
from channel import ChannelError, frame, load_kernels

from . import learn_wire
from . import lockstep
from .learn_desync import LearnDesync
from .train import (PROGRESS_EVERY_S, adv_column, advantages, continuation, eval_row, final_summary, live_line,
                    log_row, setup, step_reward, tensorboard_writer, write_run)
from .train_config import TrainConfig

log = logging.getLogger("ddcl.learning_world")

JOIN_WAIT_S = 300.0  # learners starting beside each other import torch: minutes on a loaded machine
WAIT_S = 120.0  # the longest a step or an update waits for a learner before the run fails


class Rollback(Exception):
    """A learner rejoined or the broker restarted: the update under way is void."""


class LearningWorld:
    def __init__(self, endpoint: str, cfg: TrainConfig, out: Path | None, grad_codec: str = "float32",
                 progress: bool = True, curve=None, desync: LearnDesync = LearnDesync()):
        cfg.validate()
        desync.validate(cfg.agents)
        self.desync = desync
        if cfg.share:
            raise ValueError("shared policy weights need every agent's gradient in one place: train them in-process")
        if grad_codec not in learn_wire.GRAD_CODECS:
            raise ValueError(f"grad codec must be one of {', '.join(learn_wire.GRAD_CODECS)}, got {grad_codec!r}")
        self.cfg, self.out, self.grad_codec, self.progress = cfg, Path(out) if out else None, grad_codec, progress
        self.s = setup(cfg)  # the critic, and every policy and layer for the evaluations
        torch.set_num_threads(1)  # the learners share the cores
        load_kernels()
        self.peer = Peer(endpoint, b"world", protocol.WORLD_ID, curve=curve)
        self.agent_ids = [protocol.agent_id(k) for k in range(cfg.agents)]
        self.inbox: dict[bytes, list[bytes]] = {a: [] for a in self.agent_ids}  # control bodies per learner
        self.actions: dict[int, bytes] = {}
        self.ready: set[bytes] = set()
        self.parent = os.getppid()
        self.should_stop = lambda: False
        # faults: a learner that joins again, or the broker's restart, voids the update under way
        self.training = False
        self.rejoined: set[bytes] = set()
        self.broker_restarted = False
        self.peer.on_reregistered = self._on_broker_restart
        self.committed = 0  # the last update every learner has saved
        self.rounds = 0  # rollbacks so far
        self.snapshots: dict[int, tuple[dict, dict]] = {}  # update -> the critic's and its Adam's state after it

    # ----- the wire -----

    def _pump(self, timeout_s: float) -> None:
        msg = self.peer.recv(timeout_s)
        if msg is None or msg[0] != protocol.DELIVER or len(msg) != 3 or msg[1] not in self.inbox:
            return
        src, body = msg[1], msg[2]
        if protocol.is_channel_frame(body):
            if len(body) >= 2:
                self.actions[self.agent_ids.index(src)] = body
        elif (op := learn_wire.op_of(body)) == lockstep.JOIN:
            if self.training:  # a learner restarted under the run: its state is the last one it saved
                log.warning("%s joined again: the update under way is voided", src.decode())
                self.rejoined.add(src)
            self.peer.send_to(src, protocol.pack({"op": learn_wire.CONFIG, "config": self._config(),
                                                  "grad_codec": self.grad_codec, "desync": self.desync.to_dict()}))
        elif op == lockstep.READY:
            self.ready.add(src)
        else:
            self.inbox[src].append(body)

    def _config(self) -> dict:
        return asdict(self.cfg)

    def _wait(self, done, what: str, wait_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + wait_s
        while not done():
            if os.getppid() != self.parent:
                raise RuntimeError("the launcher is gone: its learners and broker go down with it")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} in {wait_s:.0f} s")
            if self.rejoined or self.broker_restarted:
                raise Rollback
            self._pump(0.2)

    def _from_each(self, op: str, parse, what: str, wait_s: float = WAIT_S) -> list:
        """One `op` body from every learner, parsed by parse(k, body) (a body that fails to
        parse is dropped and logged: its learner is waited for again)."""
        got: dict[int, object] = {}

        def poll() -> bool:
            for k, agent in enumerate(self.agent_ids):
                while k not in got and self.inbox[agent]:
                    body = self.inbox[agent].pop(0)
                    if learn_wire.op_of(body) != op:
                        continue  # a stray or late body of another exchange
                    try:
                        got[k] = parse(k, body)
                    except ChannelError as e:
                        log.warning("bad %s from %s: %s", op, agent.decode(), e)
            return len(got) == len(self.agent_ids)

        self._wait(poll, what, wait_s)
        return [got[k] for k in range(len(self.agent_ids))]

    def wait_for_learners(self) -> None:
        last_hello = 0.0
        deadline = time.monotonic() + JOIN_WAIT_S
        while not set(self.agent_ids) <= self.ready:
            if self.should_stop():
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                missing = sorted(a.decode() for a in set(self.agent_ids) - self.ready)
                raise TimeoutError(f"learners missing after {JOIN_WAIT_S:.0f} s: {missing}")
            if time.monotonic() - last_hello > 1.0:
                self.peer.send_to(protocol.ALL_AGENTS, protocol.pack({"op": lockstep.HELLO}))
                last_hello = time.monotonic()
            self._pump(0.2)

    # ----- the run -----

    def run(self, should_stop=lambda: False) -> dict | None:
        self.should_stop = should_stop
        try:
            try:
                self.wait_for_learners()
            except KeyboardInterrupt:
                return None
            return self._train()
        finally:
            self.peer.close()

    def _train(self) -> dict:
        cfg, s = self.cfg, self.s
        env, critic = s.env, s.critic
        opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr)  # the learners hold the policies' and priors'
        log_file = open(self.out / "train.jsonl", "w") if self.out else None
        # one line per update: the learning curves of a desync sweep (agents/learn_desync.py)
        update_file = open(self.out / "updates.jsonl", "w") if self.out else None
        board = tensorboard_writer(self.out)
        obs = env.reset()
        first = np.ones(cfg.batch, dtype=bool)
        episodes = successes = 0
        step = 0
        history, rate_bits, wire_bits = [], 0.0, 0.0
        start = last_line = time.monotonic()
        update = 0
        self.training = True
        self.snapshots = {0: (copy.deepcopy(critic.state_dict()), copy.deepcopy(opt.state_dict()))}
        while update < cfg.updates:
            update += 1
            try:
                values, rewards, dones = [], [], []
                ended = won = 0
                for _ in range(cfg.rollout):
                    self.peer.send_each(zip(self.agent_ids, lockstep.pack_obs(step, obs.cpu().numpy(), first)))
                    values.append(critic(obs))
                    actions = self._actions(step)
                    if not values[1:]:  # every learner saved update - 1 before acting in this one
                        self.committed = update - 1
                    obs, reward, done, success = env.step(actions.to(s.device))
                    first = done.cpu().numpy()
                    rewards.append(step_reward(reward, s.per_agent, cfg.batch))
                    dones.append(done.float()[:, None])
                    n_done, n_won = int(done.sum()), int(success.sum())
                    episodes, successes = episodes + n_done, successes + n_won
                    ended, won = ended + n_done, won + n_won
                    step += 1
                returns, values, adv = advantages(critic, obs, rewards, dones, values, cfg)
                self.peer.send_each((agent, learn_wire.pack_advantage(update, adv_column(adv, k)))
                                    for k, agent in enumerate(self.agent_ids))
                opt.zero_grad()
                (cfg.value_coef * (returns - values).pow(2).mean()).backward()
                critic_params = [q for q in critic.parameters() if q.grad is not None]
                reports = self._from_each(learn_wire.NORMS, lambda k, body, u=update: learn_wire.unpack_norms(
                    body, u, sum(1 for _ in s.policies[k].parameters()), cfg.agents - 1), "gradient norms")
                norms, rates, bits = [], [], []
                for n, rate, wire, _ in reports:  # in train.py's parameter order: policies, then the critic
                    norms += n
                    rates.append(rate)
                    bits.append(wire)
                norms = [torch.tensor(n, dtype=torch.float32) for n in norms]
                norms += [n.cpu() for n in torch._foreach_norm([q.grad for q in critic_params])]
                total = torch.linalg.vector_norm(torch.stack(norms))  # what clip_grad_norm_ computes over them all
                self.peer.send_each((agent, learn_wire.pack_clip(update, float(total))) for agent in self.agent_ids)
                torch.nn.utils.clip_grads_with_norm_(critic_params, 1.0, total.to(s.device))
                opt.step()
                self.snapshots[update] = (copy.deepcopy(critic.state_dict()), copy.deepcopy(opt.state_dict()))
                self.snapshots = {u: v for u, v in self.snapshots.items() if u >= update - 3}
                rate_bits, wire_bits = float(np.mean(rates)), float(np.mean(bits))
                wall = time.monotonic() - start
                if update_file:
                    update_file.write(json.dumps(self._update_row(update, step * cfg.batch, won / max(ended, 1), ended,
                                                                  wire_bits, rate_bits, [p for *_, p in reports])) + "\n")
                    update_file.flush()  # a sweep's progress, a fault test's clock
                if self.progress and time.monotonic() - last_line >= PROGRESS_EVERY_S:
                    print(live_line(update, cfg.updates, step * cfg.batch, wall, successes / max(episodes, 1), rate_bits)
                          + f"  {cfg.codec} bits/msg on the wire {wire_bits:.2f}", file=sys.stderr, flush=True)
                    last_line = time.monotonic()
                stop = self.should_stop()
                if update % cfg.eval_every == 0 or update == cfg.updates or stop:
                    self.gather()
                    row = eval_row(s.policies, s.layers, cfg, update, step * cfg.batch, wall,
                                   successes / max(episodes, 1), rate_bits)
                    row["wire_bits"] = wire_bits
                    history.append(row)
                    log_row(row, cfg, log_file, board, self.progress)
                    episodes = successes = 0
                    last_line = time.monotonic()
                if stop:
                    if self.progress:
                        print(f"[learn] stopping after update {update} of {cfg.updates}: evaluating and writing what "
                              "it has", file=sys.stderr, flush=True)
                    break
            except Rollback:
                update = self._roll_back()
                critic.load_state_dict(self.snapshots[update][0])
                opt.load_state_dict(self.snapshots[update][1])
                obs, first = env.reset(), np.ones(cfg.batch, dtype=bool)  # the voided rollout's episodes go
        wall = time.monotonic() - start
        if log_file:
            log_file.close()
            update_file.close()
        if board:
            board.close()
        self.training = False
        summary = final_summary(s.policies, cfg, history, update, wall, step * cfg.batch, s.device)
        summary["networked"] = self.finish(update)
        summary["networked"].update(rollbacks=self.rounds, desync=self.desync.to_dict())
        if self.out:
            write_run(self.out, cfg, s.pcfg, s.policies, critic, summary, continuation(s.layers))
        return summary

    def _on_broker_restart(self) -> None:
        if self.training:
            log.warning("the broker restarted: the update under way is voided")
            self.broker_restarted = True

    def _roll_back(self) -> int:
        """Every learner back to the last update all of them saved: ROLLBACK (again each
        second, to a learner not yet answering: one restarting, or not yet registered with
        a restarted broker) until each answers ROLLED, then RESUME. -> that update."""
        self.rounds += 1
        to, rnd = self.committed, self.rounds
        log.warning("rollback %d: every learner back to update %d; update %d is redone", rnd, to, to + 1)
        if self.progress:
            print(f"[learn] {'a learner rejoined' if self.rejoined else 'the broker restarted'}: back to update "
                  f"{to}, redoing update {to + 1}", file=sys.stderr, flush=True)
        self.rejoined.clear()
        self.broker_restarted = False
        waiting, asked = set(self.agent_ids), 0.0
        deadline = time.monotonic() + JOIN_WAIT_S
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"learners {sorted(a.decode() for a in waiting)} did not roll back")
            if time.monotonic() - asked > 1.0:
                self.peer.send_each((a, protocol.pack({"op": learn_wire.ROLLBACK, "to": to, "round": rnd}))
                                    for a in waiting)
                asked = time.monotonic()
            self._pump(0.2)
            for a in list(waiting):
                for body in self.inbox[a]:
                    req = protocol.unpack(body) if learn_wire.op_of(body) == learn_wire.ROLLED else {}
                    if req.get("round") == rnd:
                        waiting.discard(a)
        # a learner sent nothing after its ROLLED: what any holds from before is stale
        self.rejoined.clear()  # one that joined during the rollback got ROLLBACK like the others
        self.broker_restarted = False
        for a in self.agent_ids:
            self.inbox[a].clear()
        self.actions.clear()
        self.peer.send_each((a, protocol.pack({"op": learn_wire.RESUME, "round": rnd})) for a in self.agent_ids)
        return to

    def _update_row(self, update: int, env_steps: int, success: float, episodes: int, wire_bits: float,
                    rate_bits: float, probes: list[dict]) -> dict:
        """One update's figures: training success, real bits per message, the fraction of
        decodes that used the wrong noise, and per link `listener>speaker` the cosine of
        the gradient sent against the synchronized listener's (and their norms' ratio)."""
        decodes = sum(p["decodes"] for p in probes)
        row = {"update": update, "env_steps": env_steps, "success": success, "episodes": episodes,
               "wire_bits": wire_bits, "rate_bits": rate_bits,
               "desynced": sum(p["desynced"] for p in probes) / max(decodes, 1)}
        if all("cos" in p for p in probes):
            for k, p in enumerate(probes):
                peers = [j for j in range(self.cfg.agents) if j != k]
                for j, c, r in zip(peers, p["cos"], p["ratio"]):
                    row[f"cos_{k}>{j}"], row[f"ratio_{k}>{j}"] = c, r
        return row

    def _actions(self, step: int) -> torch.Tensor:
        """Every learner's actions for `step`, (B, N)."""
        cfg = self.cfg
        out = np.zeros((cfg.batch, cfg.agents), dtype=np.int64)
        got: set[int] = set()

        def poll() -> bool:
            for k, body in list(self.actions.items()):
                del self.actions[k]
                try:
                    f = frame.unpack(body)
                    if f.sender != k or f.stamp != step:
                        raise ChannelError(f"action frame of agent {f.sender} for step {f.stamp}")
                    out[:, k] = lockstep.unpack_actions(f, cfg.batch, self.s.env.n_actions)
                    got.add(k)
                except ChannelError as e:
                    log.warning("bad action frame from agent %d: %s", k, e)
            return len(got) == cfg.agents

        self._wait(poll, f"actions for step {step}")
        return torch.from_numpy(out)

    def gather(self) -> None:
        """Every learner's policy and prior into this process's copies (for an evaluation)."""
        self.peer.send_each((agent, protocol.pack({"op": learn_wire.STATE_ASK})) for agent in self.agent_ids)
        states = self._from_each(learn_wire.STATE, lambda _k, body: learn_wire.parse(body, learn_wire.STATE), "learner state")
        for k, req in enumerate(states):
            policy, layer = self.s.policies[k], self.s.layers[k]
            mine = dict(policy.state_dict())
            if layer.prior is not None:
                mine.update({f"prior.{n}": v for n, v in layer.prior.state_dict().items()})
            got = learn_wire.unpack_tensors(req, mine)
            policy.load_state_dict({n: got[n] for n in policy.state_dict()})
            if layer.prior is not None:
                layer.prior.load_state_dict({n: got[f"prior.{n}"] for n in layer.prior.state_dict()})

    def finish(self, updates: int) -> dict:
        """END to every learner, their figures, and the broker's bytes per update by kind."""
        self.peer.send_each((agent, protocol.pack({"op": lockstep.END})) for agent in self.agent_ids)
        try:
            learners = self._from_each(learn_wire.LEARNER_STATS, lambda _k, body: learn_wire.parse(body, learn_wire.LEARNER_STATS),
                                       "learner figures", protocol.FINISH_WAIT_S)
        except TimeoutError:
            learners = []
        broker = self.peer.stats()
        per_update = {kind: {key: sum(broker["totals"][d][kind][key] for d in ("up", "down")) / max(updates, 1)
                             for key in ("payload", "header", "framing", "total")}
                      for kind in broker["totals"]["up"]}
        return {"grad_codec": self.grad_codec, "updates": updates, "bytes_per_update": per_update,
                "learners": learners}
