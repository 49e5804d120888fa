"""A speaker and a listener learn to talk through DDCL on the paper's goal toy.

One file, top to bottom, in the style of CleanRL: A2C with a learned value baseline;
the listener's policy gradient flows through the quantized message z_hat into the
speaker (the straight-through gradient), and the rate term makes the speaker brief.
The lines that are DDCL are marked `# DDCL`; everything else is an ordinary policy.

    python examples/ddcl_goal.py                  # about 2 minutes on 2 CPU cores
    python examples/ddcl_goal.py --updates 300    # a quick look (fewer updates: less success)

It prints the listener's success on fresh episodes (greedy), against a random listener
and against the same policy with the messages silenced, and the speaker's real bits per
message: each step's messages encoded as one bitstream (what an agent process sends for
its B instances) and each message as a stream of its own.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agents.envs.goal import GoalEnv  # 8x8 grid; agent 0 sees the goal, agent 1 moves
from channel.torch import DDCL  # DDCL
from ddcl.options import add_config_flags, given  # a flag per Args field, its help the field's comment


@dataclass
class Args:
    seed: int = 1  # torch, env and DDCL noise seed (the run seed a networked run would use)
    batch: int = 256  # parallel episodes
    rollout: int = 10  # env steps per update
    updates: int = 3000  # gradient updates
    lr: float = 3e-3  # Adam learning rate of the speaker, listener and critic
    gamma: float = 0.95  # discount
    entropy_coef: float = 0.05  # action-entropy bonus
    msg_dim: int = 1  # message values
    delta: float = 0.2  # quantization step
    rate_loss: str = "expected"  # surrogate | codelength | entropy | expected (the learned prior's mean code length)
    codec: str = "range"  # float32 | expgolomb | rice | range: whose real bits are printed (range's model: the prior)
    lam: float = 0.003  # rate weight per bit, ramped up over the first 30 % of updates
    eval_episodes: int = 2048  # fresh episodes the trained policy is scored on
    threads: int = 1  # torch threads (results depend on it)


def parse_args() -> Args:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_flags(p, Args)
    return Args(**given(p.parse_args(), Args))


class Speaker(nn.Module):
    def __init__(self, obs_dim: int, msg_dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, msg_dim))

    def forward(self, obs):
        return self.net(obs)  # z: an unbounded real-valued message


class Listener(nn.Module):
    def __init__(self, obs_dim: int, msg_dim: int, n_actions: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim + msg_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, n_actions))

    def forward(self, obs, heard):
        return self.net(torch.cat([obs, heard], dim=-1))  # action logits


@torch.no_grad()
def evaluate(speaker, listener, ddcl, args: Args, seed: int, mode: str = "greedy") -> dict:
    """Fresh episodes, each run to its end; mode greedy, silent (messages zeroed) or random."""
    env = GoalEnv(args.eval_episodes, seed)
    obs = env.reset()
    active = torch.ones(args.eval_episodes, dtype=torch.bool)
    success = torch.zeros(args.eval_episodes, dtype=torch.bool)
    step_bits = message_bits = messages = 0
    for t in range(env.max_steps):
        z_hat = ddcl(speaker(obs[:, 0]), 10**9 + t, 0)  # DDCL: evaluation steps apart from training's
        m = ddcl.symbols()[active]  # DDCL: the integers sent by the episodes still running
        step_bits += ddcl.codec.encode_bits(m.reshape(-1).numpy())[1]  # DDCL: their one bitstream
        message_bits += int(ddcl.bits(per_message=True)[active.numpy()].sum())  # DDCL: a stream each
        messages += int(active.sum())
        if mode == "silent":
            z_hat = torch.zeros_like(z_hat)
        logits = listener(obs[:, 1], z_hat)
        move = torch.randint(0, 5, (args.eval_episodes,)) if mode == "random" else logits.argmax(-1)
        obs, _, done, succ = env.step(torch.stack([torch.zeros_like(move), move], 1))
        success |= active & succ
        active &= ~done
        if not active.any():
            break
    return {"success": success.float().mean().item(), "bits_per_message_stream_per_step": step_bits / messages,
            "bits_per_message_stream_each": message_bits / messages}


def main(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    env = GoalEnv(args.batch, args.seed)
    speaker = Speaker(env.obs_dim, args.msg_dim)
    listener = Listener(env.obs_dim, args.msg_dim, env.n_actions)
    critic = nn.Sequential(nn.Linear(2 * env.obs_dim, 64), nn.Tanh(), nn.Linear(64, 1))
    ddcl = DDCL(args.msg_dim, delta=args.delta, codec=args.codec, rate_loss=args.rate_loss,  # DDCL
                run_seed=args.seed)  # DDCL: the noise stream a networked run would use
    nets = [speaker, listener, critic]
    opt = torch.optim.Adam([{"params": [q for n in nets for q in n.parameters()]},
                            {"params": ddcl.parameters(), "lr": 1e-2}], lr=args.lr)  # DDCL: the prior learns too
    obs = env.reset()
    start, step = time.monotonic(), 0
    for update in range(1, args.updates + 1):
        logps, values, ents, rewards, dones, rates = [], [], [], [], [], []
        for _ in range(args.rollout):
            z_hat = ddcl(speaker(obs[:, 0]), step, 0)  # DDCL: quantized for real, gradient straight through
            rates.append(ddcl.rate_loss())  # DDCL: bits per message under the learned prior
            dist = torch.distributions.Categorical(logits=listener(obs[:, 1], z_hat))
            move = dist.sample()
            values.append(critic(obs.flatten(1)).squeeze(-1))
            logps.append(dist.log_prob(move))
            ents.append(dist.entropy())
            obs, reward, done, _ = env.step(torch.stack([torch.zeros_like(move), move], 1))
            rewards.append(reward)
            dones.append(done.float())
            step += 1
        with torch.no_grad():
            ret = critic(obs.flatten(1)).squeeze(-1)
        returns = []
        for r, d in zip(reversed(rewards), reversed(dones)):
            ret = r + args.gamma * ret * (1 - d)
            returns.append(ret)
        returns, values = torch.stack(returns[::-1]), torch.stack(values)
        adv = (returns - values).detach()
        lam = args.lam * min(1.0, update / (0.3 * args.updates))  # learn to talk, then to be brief
        loss = (-(torch.stack(logps) * adv).mean() + 0.5 * (returns - values).pow(2).mean()
                - args.entropy_coef * torch.stack(ents).mean() + lam * torch.stack(rates).mean())  # DDCL: + lam * rate
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_([q for n in nets for q in n.parameters()], 1.0)
        opt.step()
        if update % max(args.updates // 4, 1) == 0:
            print(f"update {update}/{args.updates}  {step * args.batch / (time.monotonic() - start):.0f} env steps/s  "
                  f"rate loss {torch.stack(rates).mean().item():.2f} bits", flush=True)
    trained = evaluate(speaker, listener, ddcl, args, args.seed + 1000)
    silent = evaluate(speaker, listener, ddcl, args, args.seed + 1000, mode="silent")
    random = evaluate(speaker, listener, ddcl, args, args.seed + 1000, mode="random")
    out = {"success": trained["success"], "success_silenced": silent["success"], "success_random": random["success"],
           "bits_per_message": trained["bits_per_message_stream_per_step"],
           "bits_per_message_alone": trained["bits_per_message_stream_each"], "float32_bits": 32 * args.msg_dim,
           "wall_s": time.monotonic() - start}
    print(f"success {out['success']:.3f} (messages silenced {out['success_silenced']:.3f}, random listener "
          f"{out['success_random']:.3f}) on {args.eval_episodes} fresh episodes\n"
          f"real {args.codec} bits per message: {out['bits_per_message']:.2f} with each step's messages in one "
          f"bitstream, {out['bits_per_message_alone']:.2f} with each message alone (float32: {out['float32_bits']})\n"
          f"{out['wall_s']:.0f} s")
    return out


if __name__ == "__main__":
    main(parse_args())
