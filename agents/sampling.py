"""Action sampling one agent at a time, from a generator of that agent's own.

The in-process trainer and the networked learner (one agent per OS process) must draw
the same actions from the same logits: a global torch RNG shared by every agent cannot
be reproduced in a process that holds one agent, so each agent draws from a generator
keyed by (run seed, agent) and both trainers call `sample` on one agent's (B, A) logits.
"""

from __future__ import annotations

import torch

_AGENT_BITS = 8  # agent ids are one byte (a channel frame's sender)


def generators(seed: int, agents, device) -> list[torch.Generator]:
    """One generator per agent in `agents` (ids), keyed by (seed, agent) alone."""
    return [torch.Generator(device=device).manual_seed((seed << _AGENT_BITS) | k) for k in agents]


def sample(logits: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One agent's actions from its (B, A) logits -> (actions (B,), log-probabilities (B,),
    entropies (B,)). A contiguous copy first: a slice of the trainer's (B, N, A) logits and
    the learner's own (B, A) then reduce over identical memory layouts."""
    dist = torch.distributions.Categorical(logits=logits.contiguous())
    actions = torch.multinomial(dist.probs, 1, generator=gen).squeeze(-1)
    return actions, dist.log_prob(actions), dist.entropy()
