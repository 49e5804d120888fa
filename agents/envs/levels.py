"""The envs' names and level tables, without torch: the `ddcl` command line lists and
checks them before any env (and torch with it) is imported."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrafficLevel:
    kind: str  # easy | medium | hard: IC3Net's road layouts
    dim: int  # IC3Net --dim
    slots: int  # cars (agent slots)
    max_steps: int
    add_rate: float  # MAGIC's settings, no curriculum
    vision: int = 1


TJ_LEVELS = {
    "tj-easy": TrafficLevel("easy", dim=6, slots=5, max_steps=20, add_rate=0.3),
    "tj-medium": TrafficLevel("medium", dim=14, slots=10, max_steps=40, add_rate=0.2),
    "tj-hard": TrafficLevel("hard", dim=18, slots=20, max_steps=80, add_rate=0.05),
}


@dataclass(frozen=True)
class PredatorPreyLevel:
    dim: int  # grid side
    predators: int  # agent slots
    max_steps: int
    vision: int


PP_LEVELS = {
    "pp-easy": PredatorPreyLevel(dim=5, predators=3, max_steps=20, vision=0),
    "pp-medium": PredatorPreyLevel(dim=10, predators=5, max_steps=40, vision=1),
    "pp-hard": PredatorPreyLevel(dim=20, predators=10, max_steps=80, vision=1),
}

ENVS = ("goal", *TJ_LEVELS, *PP_LEVELS)


def default_agents(name: str) -> int:
    """Agent slots when none are given: Traffic Junction's cars and Predator-Prey's
    predators are fixed by the level; everything else starts with 2."""
    if name in TJ_LEVELS:
        return TJ_LEVELS[name].slots
    if name in PP_LEVELS:
        return PP_LEVELS[name].predators
    return 2
