"""DDCL for PettingZoo: a message channel around any `ParallelEnv`, and the goal toy as one.

`DDCLParallelEnv` is for learners that do not backpropagate through the channel (PPO,
IPPO, MAPPO with separate actors, Q-learning...): the message is one more part of each
agent's action, learned by RL alone, because no gradient crosses `env.step`. A learner
that backpropagates from the listener into the speaker (DIAL, CommNet, TarMAC, this
project's trainer) puts `channel.torch.DDCL` inside its own network instead
(docs/layer.md).

This module needs `pettingzoo` (and gymnasium); nothing else of the project imports it.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv
from pettingzoo.utils.wrappers import BaseParallelWrapper

from channel import ShapeError
from channel.codecs import Codec
from channel.noise import MASK32, MAX_SENDER
from channel.torch import DDCL

from .envs.goal import GoalEnv

__all__ = ["DDCLParallelEnv", "GoalParallelEnv"]


class DDCLParallelEnv(BaseParallelWrapper):
    """Adds a DDCL message channel to any PettingZoo `ParallelEnv`.

    Each agent's action becomes ``{"action": <the env's action>, "message": <dim floats>}``.
    The wrapper quantizes each message with DDCL's shared dither (sender = the agent's
    index in `possible_agents`, step = the wrapper's step count), encodes it with the
    codec for real, decodes the bytes as a receiver would, and puts what each agent heard
    into its next observation: ``{"observation": <the env's>, "heard": (N - 1, dim)}``,
    one row per other agent in `possible_agents` order (zeros for one that sent nothing
    this step). ``infos[agent]["message_bits"]`` is the real length of the bitstream that
    agent's message became; ``infos[agent]["message_float32_bits"]`` the same message as
    raw floats.

    Not for differentiable learners: gradients cannot cross `step` (use `channel.torch.DDCL`).

    Args:
        env: The PettingZoo ParallelEnv to wrap (at most 256 agents).
        msg_dim: Message values per agent.
        delta: The quantization step (one number, or one per message dimension).
        codec: The codec name (``float32``, ``expgolomb``, ``rice``, ``range``) or a Codec.
            One message is a short bitstream: the prefix codes (``expgolomb``, ``rice``)
            pay no stream overhead, the range coder pays its 32-bit words.
        run_seed: The dither's run seed; ``reset(seed=s)`` replaces it with s (32 bits)
            and restarts the step count, so a seeded episode is reproducible.
        epoch_seed: The dither's epoch seed (24 bits).

    Raises:
        ShapeError: the env has more agents than a sender id can name.
        LayerError, DeltaError, CodecError: as `channel.torch.DDCL`.
    """

    def __init__(self, env: ParallelEnv, msg_dim: int = 4, *, delta: float = 0.2, codec: str | Codec = "expgolomb",
                 run_seed: int = 0, epoch_seed: int = 1):
        super().__init__(env)
        self.possible_agents = list(env.possible_agents)
        if len(self.possible_agents) > MAX_SENDER + 1:
            raise ShapeError(f"{len(self.possible_agents)} agents: sender ids name at most {MAX_SENDER + 1}")
        self.msg_dim = msg_dim
        self.layer = DDCL(msg_dim, delta=delta, codec=codec, run_seed=run_seed, epoch_seed=epoch_seed)
        self._sender = {a: k for k, a in enumerate(self.possible_agents)}
        self._peers = {a: [b for b in self.possible_agents if b != a] for a in self.possible_agents}
        message = spaces.Box(-np.inf, np.inf, (msg_dim,), np.float32)  # unbounded: DDCL's real-valued signal
        # one space object per agent, made once: PettingZoo's API test requires the same object
        self._action_spaces = {a: spaces.Dict({"action": env.action_space(a), "message": message})
                               for a in self.possible_agents}
        self._observation_spaces = {
            a: spaces.Dict({"observation": env.observation_space(a),
                            "heard": spaces.Box(-np.inf, np.inf, (len(self._peers[a]), msg_dim), np.float32)})
            for a in self.possible_agents}
        self._step = 0

    def action_space(self, agent):
        return self._action_spaces[agent]

    def observation_space(self, agent):
        return self._observation_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None):
        """Reset the env; nothing is heard yet.

        Args:
            seed: The env's seed, and (its low 32 bits) the dither's run seed; the step
                count restarts at 0. None keeps the run seed and the count going.
            options: Passed to the env.

        Returns:
            (observations, infos): each observation ``{"observation", "heard"}``, heard zeros.
        """
        obs, infos = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self.layer.run_seed, self._step = int(seed) & MASK32, 0
        return self._observed(obs, {}), {a: dict(i) for a, i in infos.items()}

    def step(self, actions: dict[Any, dict]):
        """Send every agent's message through DDCL for real, then step the env.

        Args:
            actions: Per agent ``{"action": <the env's action>, "message": msg_dim floats}``.

        Returns:
            (observations, rewards, terminations, truncations, infos) as the env's, each
            observation with what the agent heard this step, each sender's info with
            ``message_bits`` and ``message_float32_bits``.

        Raises:
            ShapeError: a message is not msg_dim values.
            QuantizerError: a message holds NaN, infinity or |z / delta| >= 2**31.
        """
        inner, heard, bits = {}, {}, {}
        for agent, act in actions.items():
            inner[agent] = act["action"]
            z = np.asarray(act["message"], dtype=np.float32)
            if z.shape != (self.msg_dim,):
                raise ShapeError(f"{agent}'s message is shaped {z.shape}, not ({self.msg_dim},)")
            sender = self._sender[agent]
            sent = self.layer.encode(z[None], self._step, sender)
            # what every receiver reconstructs from the bytes, with the dither it regenerates
            heard[agent] = self.layer.decode(sent.payload, (1, self.msg_dim), self._step, sender)[0]
            bits[agent] = sent.bits
        obs, rewards, terminations, truncations, infos = self.env.step(inner)
        self._step += 1
        infos = {a: dict(i) for a, i in infos.items()}
        for agent, info in infos.items():
            if agent in bits:
                info["message_bits"] = bits[agent]
                info["message_float32_bits"] = 32 * self.msg_dim
        return self._observed(obs, heard), rewards, terminations, truncations, infos

    def _observed(self, obs: dict, heard: dict) -> dict:
        silent = np.zeros(self.msg_dim, dtype=np.float32)
        return {a: {"observation": o,
                    "heard": np.stack([heard.get(b, silent) for b in self._peers[a]]) if self._peers[a]
                    else np.zeros((0, self.msg_dim), dtype=np.float32)}
                for a, o in obs.items()}


class GoalParallelEnv(ParallelEnv):
    """The DDCL paper's goal toy (agents/envs/goal.py) as a PettingZoo `ParallelEnv`.

    ``speaker_0`` sees the goal's cell and only speaks (its action space is Discrete(1));
    each ``listener_K`` sees its own cell (one-hot x, one-hot y) and moves (0 stay, N, S,
    E, W). Every agent gets the team reward (+1 when all listeners stand on the goal,
    -0.01 per other step); the episode terminates on success and is truncated after 50
    steps. ``infos[agent]["success"]`` says whether the step reached the goal. The env
    itself has no channel: wrap it in `DDCLParallelEnv` to let the speaker talk.

    Args:
        listeners: Listener agents (1: the paper's toy).
    """

    metadata = {"name": "ddcl_goal_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, listeners: int = 1):
        self.possible_agents = ["speaker_0"] + [f"listener_{k}" for k in range(listeners)]
        self.agents: list[str] = []
        self._env: GoalEnv | None = None
        seen = spaces.Box(0.0, 1.0, (GoalEnv.obs_dim,), np.float32)
        self._observation_spaces = {a: seen for a in self.possible_agents}
        self._action_spaces = {a: spaces.Discrete(1 if a == "speaker_0" else GoalEnv.n_actions)
                               for a in self.possible_agents}

    def observation_space(self, agent):
        return self._observation_spaces[agent]

    def action_space(self, agent):
        return self._action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None):
        """A new episode: a random goal and start cells.

        Args:
            seed: Seeds the episodes from here on; None goes on drawing from the last seed's
                generator (a fresh random one at first).
            options: Unused.

        Returns:
            (observations, infos): each agent's float32 observation, empty infos.
        """
        if seed is not None or self._env is None:  # unseeded: the episodes go on drawing from one generator
            self._env = GoalEnv(1, secrets.randbits(63) if seed is None else seed, agents=len(self.possible_agents),
                                auto_reset=False)
        self.agents = list(self.possible_agents)
        return self._observed(self._env.reset()), {a: {} for a in self.agents}

    def step(self, actions: dict):
        """One move of every listener (a missing one stays).

        Args:
            actions: Per agent its Discrete action (the speaker's is ignored).

        Returns:
            (observations, rewards, terminations, truncations, infos); infos hold ``success``.
        """
        moves = np.zeros((1, len(self.possible_agents)), dtype=np.int64)
        for k, agent in enumerate(self.possible_agents[1:], start=1):
            moves[0, k] = int(actions.get(agent, 0))
        obs, reward, done, success = self._env.step(torch.from_numpy(moves))
        observed = self._observed(obs)
        won, over = bool(success[0]), bool(done[0])
        agents, self.agents = self.agents, [] if over else self.agents
        return (observed, {a: float(reward[0]) for a in agents}, {a: won for a in agents},
                {a: over and not won for a in agents}, {a: {"success": won} for a in agents})

    def _observed(self, obs: torch.Tensor) -> dict:
        rows = obs[0].numpy()
        return {a: rows[k].copy() for k, a in enumerate(self.possible_agents) if a in self.agents}
