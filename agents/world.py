"""The world process: B instances of the environment, driven in lockstep.

Per step: send every agent its observations in one message (the broker marks the step
boundary on them), collect every agent's actions until the per-step deadline, step the
env, send the next observations, then note this step's results while the agents work.
Metrics rows (metrics.jsonl and the bus) are written in batches (METRICS_EVERY_S): a
row, a write and a publication per step would cost more than the step's own work on a
small machine (each publication a broker message and a wake-up).
An agent whose actions miss the deadline gets action 0 ("stay"/"gas") for that step,
counted in `deadline_misses`; a restarted agent re-joins and is sent the config again.
A broker silent for `broker_timeout_s` ends the run (BrokerLost; metrics.jsonl keeps the
steps run); one restarted within it takes the world back, and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from broker import protocol
from broker import trace
from broker.bus import Publisher
from broker.peer import BrokerLost, Peer
from channel import ChannelError, frame, load_kernels

from . import lockstep
from .desync import analyze, clear_oracle
from .envs import make
from .run_config import AgentSetup, RunConfig

log = logging.getLogger("ddcl.world")

METRICS_EVERY_S = 0.1  # metrics rows go out (file, and bus as JSON lines) this often


class Metrics:
    """The run's per-step results: noted as they come (one tuple a step), turned into
    rows and totals when flushed. Env outputs are new arrays each step, so holding them
    until then is safe."""

    def __init__(self, path: Path | None, bus: Publisher, batch: int):
        self.file = open(path, "w") if path else None
        self.bus, self.batch = bus, batch
        self.pending: list[tuple] = []
        self.episodes = self.successes = 0
        self.reward_sum = 0.0
        self.flushed_at = time.monotonic()

    def note(self, step: int, latency: float, reward, done, success, misses: list[int]) -> None:
        self.pending.append((step, latency, reward, done, success, misses))

    def due(self) -> bool:
        return time.monotonic() - self.flushed_at >= METRICS_EVERY_S

    def flush(self) -> None:
        rows = []
        for step, latency, reward, done, success, misses in self.pending:
            ended, won = int(done.sum()), int(success.sum())
            team = reward.reshape(self.batch, -1).sum(axis=1)  # per-agent rewards: the team's
            self.episodes, self.successes = self.episodes + ended, self.successes + won
            self.reward_sum += float(team.sum())
            rows.append(json.dumps({"step": step, "latency_s": latency, "reward": float(team.mean()),
                                    "episodes_done": ended, "successes": won, "deadline_misses": misses}))
        self.pending.clear()
        self.flushed_at = time.monotonic()
        if rows:
            text = "\n".join(rows)
            if self.file:
                self.file.write(text + "\n")
            self.bus.publish("metrics", text.encode())

    def close(self) -> None:
        self.flush()
        if self.file:
            self.file.close()


class World:
    def __init__(self, endpoint: str, cfg: RunConfig, out: Path | None, progress=True, bus_url: str = "embedded",
                 curve=None, run: str = "default"):
        cfg.validate()  # a config that cannot run is refused (ConfigError) before anything starts
        self.cfg, self.run_name = cfg, run
        self.t0 = 0.0  # wall clock: when step 0 happens, set just before it
        self.out = Path(out) if out else None
        if self.out:  # an earlier run's files in the same folder would pass for this run's
            clear_oracle(self.out)
            (self.out / "summary.json").unlink(missing_ok=True)
        self.progress = progress
        self.env = make(cfg.env, cfg.batch, cfg.seed, cfg.agents)
        load_kernels()  # before registering: the first actions must not wait for them
        self.peer = Peer(endpoint, b"world", protocol.WORLD_ID, curve=curve)
        trace.name("world")
        self.bus = Publisher(bus_url, run, "world", self.peer)
        self.agent_ids = [protocol.agent_id(k) for k in range(cfg.agents)]
        self.slot_of = {agent: k for k, agent in enumerate(self.agent_ids)}
        self.ready: set[bytes] = set()
        self.agent_stats: dict[int, dict] = {}
        self.misses = [0] * cfg.agents
        self.late = 0
        self.parent = os.getppid()  # `ddcl up`, or whatever started this role

    def agent_config(self) -> bytes:
        setup = AgentSetup(self.cfg, self.t0, str(self.out.resolve()) if self.out else "")
        return protocol.pack({"op": lockstep.CONFIG, "setup": setup.to_wire()})

    def _control(self, src: bytes, body: bytes) -> None:
        req = protocol.unpack(body)
        if req.get("op") == lockstep.JOIN:
            self.peer.send_to(src, self.agent_config())
        elif req.get("op") == lockstep.READY:
            self.ready.add(src)
        elif req.get("op") == lockstep.AGENT_STATS:
            self.agent_stats[int(req["agent"])] = req

    def _pump(self, timeout_s: float, on_frame=None) -> None:
        msg = self.peer.recv(timeout_s)
        if msg is None or msg[0] != protocol.DELIVER or len(msg) != 3:
            return
        src, body = msg[1], msg[2]
        if protocol.is_channel_frame(body):
            if on_frame:
                on_frame(src, body)
        else:
            try:
                self._control(src, body)
            except Exception as e:  # a bad control message must not stop the world
                log.warning("bad control message from %s: %s", src, e)

    def wait_for_agents(self, should_stop=lambda: False) -> bool:
        """True once every agent is ready (configured, its device warm); False when
        stopped first."""
        want = set(self.agent_ids)
        deadline = time.monotonic() + self.cfg.join_timeout_s
        last_hello = 0.0
        while not want <= self.ready:
            if should_stop():
                return False
            if time.monotonic() > deadline:
                raise TimeoutError(f"agents missing after {self.cfg.join_timeout_s}s: "
                                   f"{sorted(x.decode() for x in want - self.ready)}")
            if time.monotonic() - last_hello > 1.0:  # agents configured by a world that died ask no more
                self.peer.send_to(protocol.ALL_AGENTS, protocol.pack({"op": lockstep.HELLO}))
                last_hello = time.monotonic()
            self._pump(0.2)
        return True

    def run(self, should_stop=lambda: False) -> dict | None:
        """The run's summary; None when stopped before every agent was ready. The world's
        connections close however the run ends."""
        try:
            return self._lockstep(should_stop) if self.wait_for_agents(should_stop) else None
        finally:
            self.bus.close()
            self.peer.close()

    @torch.inference_mode()  # the env is torch; nothing here needs gradients
    def _lockstep(self, should_stop) -> dict:
        cfg, env = self.cfg, self.env
        if cfg.clock == "wall":  # step t happens at t0 + t * tick; agents read their clocks against it
            self.t0 = time.time() + 0.5
            for agent in self.agent_ids:
                self.peer.send_to(agent, self.agent_config())
        obs = env.reset().numpy()
        metrics = Metrics(self.out / "metrics.jsonl" if self.out else None, self.bus, cfg.batch)
        try:
            return self._steps(should_stop, obs, metrics)
        finally:
            metrics.close()  # the steps run are in metrics.jsonl however the run ends

    def _steps(self, should_stop, obs: np.ndarray, metrics: Metrics) -> dict:
        cfg, env = self.cfg, self.env
        start = last_print = time.monotonic()
        steps_done = 0
        sent_at = self.send_observations(0, obs, np.ones(cfg.batch, dtype=bool)) if cfg.steps else None
        for step in range(cfg.steps):
            actions = self.collect_actions(step, self.orphaned)
            if actions is None:  # orphaned mid-step: the step is not run, nor counted
                break
            if (silent := self.peer.silent_s()) > cfg.broker_timeout_s:
                raise BrokerLost(f"no word from the broker at {self.peer.endpoint} for {silent:.1f} s: "
                                 f"the run ends at step {step} of {cfg.steps}"
                                 + (f"; {self.out / 'metrics.jsonl'} holds the steps run" if self.out else ""))
            obs, reward, done, success = (x.numpy() for x in env.step(torch.from_numpy(actions)))
            trace.mark("env stepped")
            latency = time.monotonic() - sent_at
            steps_done = step + 1
            go_on = steps_done < cfg.steps and not should_stop()
            if go_on:  # the next step goes out first: the bookkeeping below overlaps the agents' work
                sent_at = self.send_observations(steps_done, obs, done)
            metrics.note(step, latency, reward, done, success, list(self.misses))
            if not go_on or metrics.due():
                metrics.flush()
                now = time.monotonic()
                if self.progress and now - last_print >= 1.0:
                    last_print = now
                    sr = metrics.successes / metrics.episodes if metrics.episodes else float("nan")
                    print(f"[world] step {steps_done}/{cfg.steps}  {steps_done / (now - start):.0f} steps/s  "
                          f"episodes {metrics.episodes}  success {sr:.3f}", file=sys.stderr, flush=True)
            if not go_on:
                break
        elapsed = time.monotonic() - start
        broker_stats = None
        if not self.orphaned():
            self.finish_agents()
            broker_stats = self.peer.stats()
        # else the summary holds the world's own figures only
        summary = self.summary(broker_stats, steps_done, elapsed, metrics.episodes, metrics.successes,
                               metrics.reward_sum)
        if self.out:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def orphaned(self) -> bool:
        """The process that started this one is gone. Under `ddcl up` that means broker
        and agents are going down with it (each gets SIGTERM): no action or figure of
        theirs will come, and waiting for them would keep this process alive past them."""
        return os.getppid() != self.parent

    def send_observations(self, step: int, obs: np.ndarray, first: np.ndarray) -> float:
        """Step `step` starts: each agent gets its observations, all in one message (the
        broker marks the step on the first). Returns when they went out."""
        if self.t0:
            time.sleep(max(0.0, self.t0 + step * self.cfg.tick_s - time.time()))
        sent_at = time.monotonic()
        trace.mark("obs out")
        self.peer.send_each(zip(self.agent_ids, lockstep.pack_obs(step, obs, first)))
        trace.mark("obs sent")
        return sent_at

    def collect_actions(self, step: int, give_up=lambda: False) -> np.ndarray | None:
        """This step's actions, as they come until the deadline; None when give_up()
        came true first, which it is asked every lockstep.STOP_POLL_S."""
        cfg = self.cfg
        actions = np.zeros((cfg.batch, cfg.agents), dtype=np.int64)  # 0 is the default action
        got: set[int] = set()

        def on_frame(src: bytes, body: bytes) -> None:
            try:
                f = frame.unpack(body)
                k = self.slot_of.get(src)
                if k is None or f.sender != k:
                    return
                if f.stamp != step:
                    self.late += 1  # an answer to a step that already timed out
                    return
                actions[:, k] = lockstep.unpack_actions(f, cfg.batch, self.env.n_actions)
                got.add(k)
                trace.mark("action in")
            except ChannelError as e:
                log.warning("bad action frame from %s: %s", src, e)

        deadline = time.monotonic() + cfg.deadline_s
        while len(got) < cfg.agents and (left := deadline - time.monotonic()) > 0:
            if give_up():
                return None
            self._pump(min(left, lockstep.STOP_POLL_S), on_frame)
        for k in set(range(cfg.agents)) - got:
            self.misses[k] += 1
        return actions

    def finish_agents(self) -> None:
        end = protocol.pack({"op": lockstep.END})
        self.peer.send_each((agent, end) for agent in self.agent_ids)
        deadline = time.monotonic() + protocol.FINISH_WAIT_S
        while len(self.agent_stats) < self.cfg.agents and (left := deadline - time.monotonic()) > 0:
            self._pump(left)

    def summary(self, b: dict | None, steps: int, elapsed: float, episodes: int, successes: int, reward_sum: float) -> dict:
        cfg = self.cfg
        frames = sum(s["messages"] for s in self.agent_stats.values())
        # a checkpoint's shape wins over the world's defaults for untrained policies; its
        # learned steps differ per agent and dimension: their mean prices the desync error
        dims = {s.get("msg_dim") for s in self.agent_stats.values()}
        deltas = [s.get("delta") for s in self.agent_stats.values()]
        if len(dims) == 1 and None not in deltas:
            msg_dim, delta = dims.pop(), deltas[0] if len(set(deltas)) == 1 else float(np.mean(deltas))
        else:
            msg_dim, delta = cfg.msg_dim, cfg.delta
        bits = sum(s["payload_bits"] for s in self.agent_stats.values())
        seeds = {s.get("run_seed") for s in self.agent_stats.values()}
        run_seed = seeds.pop() if len(seeds) == 1 else None
        # what the agents' oracle logs say about their noise (flushed before they reported)
        desync = analyze(self.out, delta, run_seed, cfg.batch * msg_dim) if self.out and run_seed is not None else None
        return {
            "env": cfg.env, "agents": cfg.agents, "batch": cfg.batch, "steps": steps, "codec": cfg.codec,
            # None: the broker went down with a killed `ddcl up` before the world could ask
            "bytes_per_step": b and b["bytes_per_step"],
            "float32_bytes_per_step": b and b["float32_bytes_per_step"],
            # one frame carries an agent's messages for all B instances
            "bits_per_message": bits / (frames * cfg.batch) if frames else None,
            "bits_per_frame": bits / frames if frames else None,
            "values_per_message": msg_dim,
            "delta": delta,
            "messages": b and b["messages"],
            "success_rate": successes / episodes if episodes else None,
            "episodes": episodes,
            "mean_reward": reward_sum / max(steps * cfg.batch, 1),
            "steps_per_second": steps / elapsed if elapsed > 0 else None,
            "deadline_misses": self.misses,
            "late_actions": self.late,
            # a restarted broker counts from zero: its figures then cover the steps since
            "reregistrations": self.peer.reregistrations,
            "silent_peers": sum(s["silent_peers"] for s in self.agent_stats.values()),
            # frames a receiver could not decode (a corrupt link, a codec mismatch): heard as silence
            "bad_frames": sum(s.get("bad_frames", 0) for s in self.agent_stats.values()),
            "beacons_received": sum(s.get("beacons", 0) for s in self.agent_stats.values()),
            "bad_beacons": sum(s.get("bad_beacons", 0) for s in self.agent_stats.values()),
            "sync": cfg.sync, "clock": cfg.clock,
            "agents_reporting": sorted(self.agent_stats),
            "desync": desync,
            "broker": b and {k: b[k] for k in ("by_kind_per_step", "other", "refused", "links", "steps")},
            "config": {**cfg.to_wire(), "run": self.run_name},  # the run name: the bus topics it went to
        }
