"""The same run in one process: env, policies and the real message path (quantize,
encode, frame, parse, decode) with no sockets. The networked run must match it bit for
bit; the trainer's evaluation uses the same path."""

from __future__ import annotations

import numpy as np
import torch

from .envs import make
from .message import MessageChannel
from .policy import PolicyConfig, forget, init_policies, initial_states, load_checkpoint
from .run_config import RunConfig


@torch.no_grad()
def run_inprocess(cfg: RunConfig, run_seed: int, epoch_seed: int, device: str = "cpu",
                  checkpoint: str | None = None) -> list[list[dict]]:
    """Per agent, per step: the z_hat it sent, the z_hat it decoded per peer, its actions.
    The policies (untrained, or `checkpoint`'s with its range models and learned steps, as
    an agent process loads them) run on `device`; the env stays on the CPU, as in the
    world process."""
    env = make(cfg.env, cfg.batch, cfg.seed, cfg.agents)
    if checkpoint:
        pcfg, policies, ck = load_checkpoint(checkpoint, cfg.env, env.obs_dim, env.n_actions, cfg.agents)
        spec = ck["codec"]
    else:
        pcfg = PolicyConfig(env.obs_dim, env.n_actions, cfg.msg_dim, delta=cfg.delta, core=cfg.core,
                            aggregate=cfg.aggregate)
        policies, spec = init_policies(pcfg, cfg.agents, cfg.seed), None
    policies = [p.to(device).eval() for p in policies]
    channel = MessageChannel.from_checkpoint(spec, cfg.codec, cfg.agents, pcfg.msg_dim, pcfg.delta, run_seed)
    shape = (cfg.batch, pcfg.msg_dim)
    records: list[list[dict]] = [[] for _ in range(cfg.agents)]
    obs = env.reset().numpy()
    states = initial_states(policies, cfg.batch, device)
    for step in range(cfg.steps):
        spoken = []
        for k, p in enumerate(policies):
            h, z, states[k] = p.speak(torch.from_numpy(np.ascontiguousarray(obs[:, k])).to(device), states[k])
            z_hat, data, _ = channel.speak(z, k, step, epoch_seed)
            spoken.append((h, z_hat, data))
        actions = np.zeros((cfg.batch, cfg.agents), dtype=np.int64)
        for k, p in enumerate(policies):
            received = {}
            for j, (_, _, data) in enumerate(spoken):
                if j != k:
                    sender, zh, _ = channel.hear(data, step, lambda _: epoch_seed, shape)
                    received[sender] = zh
            heard = np.stack([received[j] for j in sorted(received)], axis=1)  # (B, peers, D)
            actions[:, k] = p.act(spoken[k][0], torch.from_numpy(heard).to(device)).argmax(-1).cpu().numpy()
            records[k].append({"step": step, "z_hat": spoken[k][1], "received": received,
                               "actions": actions[:, k].copy()})
        obs, _, done, _ = (x.numpy() for x in env.step(torch.from_numpy(actions)))
        states = [forget(s, done) for s in states]
    return records
