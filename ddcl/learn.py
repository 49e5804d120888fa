"""Learning to communicate: `ddcl train` (in-process A2C, a checkpoint), `ddcl evaluate` and
`ddcl report` on its folder, `ddcl learn world|learner` (the networked training's roles,
alone), and `ddcl sweep` (grids of runs)."""

from __future__ import annotations

import logging

from agents.train_config import CODECS, TrainConfig

from .options import (POSITIVE, COUNT, Refused, add_agent_id, add_broker, add_config_flags, add_device, checked, given, int_list, out_folder,
                      positive_float, stop_flag)

TARGETS = ("one", "all-but-one")  # agents.desync_grid.TARGETS, without its torch import


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train DDCL policies in-process (A2C); write a checkpoint")
    add_config_flags(p, TrainConfig)
    p.add_argument("--out", default="runs/train", help="output folder (default runs/train)")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from agents.agent import pick_device
    from agents.policy import CheckpointError
    from agents.train import train

    cfg = TrainConfig(**given(args, TrainConfig))
    checked(cfg.validate)
    checked(pick_device, cfg.device)
    out = out_folder(args.out)
    try:
        s = train(cfg, out, should_stop=stop_flag())
    except CheckpointError as e:  # --init's checkpoint does not fit
        raise Refused(str(e)) from None
    print_final(s)
    print(f"{s['env_steps_per_s']:.0f} env steps/s on {s['device']}; wrote {out}/checkpoint.pt")
    if s["updates_done"] < cfg.updates:
        print(f"stopped at update {s['updates_done']} of {cfg.updates}")
        return 130
    return 0


def train_networked(args) -> int:
    """`ddcl up --train`: `ddcl train` over the broker, its roles as processes."""
    from agents.agent import pick_device
    from agents.learn import config_for, read_summary, render, train_up

    cfg = checked(config_for, given(args, TrainConfig))
    checked(pick_device, cfg.device)
    rc = train_up(cfg, out_folder(args.out), args.grad_codec, cfg.device)
    if rc in (0, 130) and (s := read_summary(args.out)):
        print_final(s)
        print(render(s) + f"\nwrote {args.out}/checkpoint.pt")
    return rc


def print_final(s: dict) -> None:
    """The held-out evaluation of `ddcl train` and `ddcl evaluate`."""
    cfg, f = s["config"], s["final"]
    codec = cfg["codec"]
    bits = [a["bits_per_message"][codec] for a in f["agents"]]
    mean = sum(bits) / len(bits)
    print(f"success {f['success_rate']:.4f} over {cfg['batch']} episodes ({f['episode_steps']:.1f} steps per "
          f"episode); {s['no_communication_success']:.4f} with the messages silenced")
    print(f"real bits per message ({codec}): " + ", ".join(f"agent {k} {b:.2f}" for k, b in enumerate(bits))
          + f"; mean {mean:.3f}, {32 * cfg['msg_dim'] / mean if mean else float('inf'):.0f} x fewer than "
          f"{cfg['msg_dim']} float32 values")
    if "delta_spread" in s:
        print("learned steps, min / median / max: " + ", ".join(
            f"agent {k} " + " / ".join(f"{x:.3g}" for x in d) for k, d in enumerate(s["delta_spread"])))
    if "goal_frequency_fit" in s:
        g = s["goal_frequency_fit"]
        # weighted by goal probability, not by message count: long episodes weigh no more
        print(f"goal: speaker {g['mean_bits']:.2f} bits/msg averaged over goals (goal entropy "
              f"{g['shannon_bound_bits']:.2f}), r(goal probability, bits) = {g['pearson_r']:.3f}")
        # success is by an episode's first goal; a goal drawn only at a reset has none
        won = {int(k): v for k, v in f["success_by_goal"].items()}
        print("per goal, most to least frequent: bits " + " ".join(f"{b:.2f}" for b in g["bits"])
              + "; success " + " ".join(f"{won[k]:.3f}" if k in won else "-" for k in g["goals"]))


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="rerun a `ddcl train` folder's held-out evaluation, on more episodes")
    p.add_argument("run", help="the folder `ddcl train --out` wrote")
    p.add_argument("--episodes", type=POSITIVE, help="fresh instances, one episode each (default: the run's batch)")
    p.add_argument("--seed", type=COUNT, help="evaluation seed (default: the run's; with the default episodes this "
                                             "reproduces the run's final figures)")
    add_device(p)
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from agents.train import evaluate_run

    s = checked(evaluate_run, args.run, args.episodes, args.seed, args.device)
    print_final(s)
    trained, here = s["trained_on"], s["device"]
    if trained and trained != here and args.episodes is None and args.seed is None:
        # a CUDA env draws its episodes from CUDA's generator: not the run's own episodes
        print(f"note: trained on {trained}, evaluated on {here}: other episodes than the run's, so these "
              f"figures differ from its summary (evaluate on {trained} to reproduce them)")
    return 0


def add_report(sub) -> None:
    p = sub.add_parser("report", help="PNG plots of a `ddcl train` folder")
    p.add_argument("run", help="the folder `ddcl train --out` wrote")
    p.set_defaults(func=_report)


def _report(args) -> int:
    from agents.report import report

    try:
        for path in report(args.run):
            print(f"wrote {path}")
    except FileNotFoundError as e:
        raise Refused(str(e)) from None
    return 0


def add_sweep_skew(sub) -> None:
    p = sub.add_parser("skew", help="networked runs: success and bits against clock skew, one line per sync mode")
    p.add_argument("--values", type=int_list(), default="0,1,2,4,8,16", help="skews in steps (default 0,1,2,4,8,16)")
    p.add_argument("--target", choices=TARGETS, default="one",
                   help="skew agent-1 (one) or agents 1..N-1 (all-but-one) (default one)")
    p.add_argument("--sync", default="implicit,stamped,checked:2",
                   help="sync modes (default implicit,stamped,checked:2)")
    p.add_argument("--steps", type=POSITIVE, default=300, help="steps per run (default 300)")
    p.add_argument("--batch", type=POSITIVE, default=32, help="env instances per run (default 32)")
    p.add_argument("--codec", default="rice", choices=CODECS, help="message codec (default rice)")
    p.add_argument("--env", help="environment of an untrained run (default goal); a checkpoint names its own")
    p.add_argument("--checkpoint", help="trained policy; its env and agent count come from it (default: untrained)")
    p.add_argument("--out", default="runs/sweep-skew",
                   help="folder for runs, CSV and PNG; a run already there is not run again (default runs/sweep-skew)")
    p.set_defaults(func=_sweep_skew)


def _sync_modes(text: str) -> None:
    from agents.message import SyncMode

    for mode in text.split(","):  # refused here, not by a run halfway through the grid
        checked(SyncMode.parse, mode)


def _sweep_skew(args) -> int:
    from .sweep import sweep_skew

    _sync_modes(args.sync)
    out_folder(args.out)
    return sweep_skew(args)


def add_sweep_desync(sub) -> None:
    p = sub.add_parser("desync", help="the desync grid in-process: skew, drift x beacons, a clock jump with beacons "
                                      "lost, a stale seed; per sync mode and seed (resumable)")
    p.add_argument("--checkpoints", default="deploy/checkpoint/tj-easy.pt,deploy/checkpoint/goal-tight.pt",
                   help="trained policies, comma-separated (default tj-easy.pt and goal-tight.pt)")
    p.add_argument("--batch", type=int_list(1), default="32,256", help="env instances per policy, in the same order "
                                                                        "(default 32,256)")
    p.add_argument("--skews", type=int_list(), default="0,1,2,4,8,16,64,-64", help="skews in steps (default "
                                                                                   "0,1,2,4,8,16,64,-64)")
    p.add_argument("--beacons", type=int_list(0), default="1,10,100,0",
                   help="beacon periods for drift and the clock jump, 0 = none (default 1,10,100,0)")
    p.add_argument("--lost", type=int_list(0), default="2",
                   help="beacons lost after the clock jump, beacons every 10 (default 2)")
    p.add_argument("--sync", default="implicit,stamped,checked:2,checked:6,healing:32",
                   help="sync modes (default implicit,stamped,checked:2,checked:6,healing:32)")
    p.add_argument("--seeds", type=POSITIVE, default=3, help="run seeds 0..N-1 per cell (default 3)")
    p.add_argument("--steps", type=POSITIVE, default=150, help="steps per cell (default 150)")
    p.add_argument("--codec", default="range", choices=CODECS,
                   help="message codec; range takes each checkpoint's own models (default range)")
    p.add_argument("--only-skew", action="store_true", help="the skew cells alone")
    p.add_argument("--out", default="runs/sweep-desync",
                   help="folder for results.jsonl, the CSV and PNGs; cells already in results.jsonl are skipped "
                        "(default runs/sweep-desync)")
    p.set_defaults(func=_sweep_desync)


def _sweep_desync(args) -> int:
    from pathlib import Path

    from .sweep import sweep_desync

    _sync_modes(args.sync)
    checkpoints = args.checkpoints.split(",")
    if len(args.batch) != len(checkpoints):
        raise Refused(f"--batch needs one value per checkpoint ({len(checkpoints)}), got {len(args.batch)}")
    for ck in checkpoints:
        if not Path(ck).is_file():
            raise Refused(f"no checkpoint {ck}")
    out_folder(args.out)
    return sweep_desync(args)


def add_sweep_wall_clock(sub) -> None:
    p = sub.add_parser("wall-clock", help="networked wall-clock runs, agent-1's clock offset and drifting "
                                          "through libfaketime, per beacon period")
    p.add_argument("--faketime", default="+2s x1.01",
                   help="agent-1's FAKETIME: offset and rate (default '+2s x1.01': 2 s ahead, 1 %% fast)")
    p.add_argument("--beacons", type=int_list(0), default="0,10,100",
                   help="beacon periods, 0 = none (default 0,10,100)")
    p.add_argument("--steps", type=POSITIVE, default=200, help="steps per run (default 200)")
    # a loaded machine delays a step's read of the clock: a tick well above that keeps the
    # lateness out of the offset measured
    p.add_argument("--tick", type=positive_float, default=0.25, help="seconds per step (default 0.25)")
    p.add_argument("--batch", type=POSITIVE, default=16, help="env instances (default 16)")
    p.add_argument("--out", default="runs/sweep-wall-clock",
                   help="folder for runs, CSV and PNG; a run already there is not run again "
                        "(default runs/sweep-wall-clock)")
    p.set_defaults(func=_sweep_wall_clock)


def _sweep_wall_clock(args) -> int:
    from .sweep import sweep_wall_clock

    out_folder(args.out)
    return sweep_wall_clock(args)


def add_sweep_train_skew(sub) -> None:
    p = sub.add_parser("train-skew", help="networked training under clock faults: learning curves and gradient bias "
                                          "per fault and sync mode")
    p.add_argument("--skews", type=int_list(), default="1,2,4,8", help="skews of agent-1, in steps (default 1,2,4,8)")
    p.add_argument("--kinds", default="skew,skew-mid,drift",
                   help="fault kinds: skew (from step 0), skew-mid (from the middle update), drift (with and "
                        "without beacons) (default all three)")
    p.add_argument("--sync", default="implicit,stamped,checked:2", help="sync modes (default implicit,stamped,checked:2)")
    p.add_argument("--drift-ppm", type=positive_float, default=100_000.0,
                   help="drift of agent-1's clock, parts per million of steps (default 100000: a step per 10)")
    p.add_argument("--beacon-every", type=POSITIVE, default=20, help="steps between beacons in the corrected drift "
                                                                     "runs (default 20)")
    p.add_argument("--agent", type=COUNT, default=1, help="the faulted learner (default 1, the goal toy's listener)")
    p.add_argument("--updates", type=POSITIVE, default=300, help="updates per run (default 300)")
    p.add_argument("--batch", type=POSITIVE, default=256, help="env instances per run (default 256)")
    p.add_argument("--lr", type=positive_float, default=0.01, help="Adam learning rate (default 0.01)")
    p.add_argument("--lam", type=float, default=0.002, help="rate penalty (default 0.002)")
    p.add_argument("--seed", type=COUNT, default=0, help="run seed, the same for every cell (default 0)")
    p.add_argument("--out", default="runs/sweep-train-skew",
                   help="folder for the runs, CSV and PNGs; a run already in it is kept (default runs/sweep-train-skew)")
    p.set_defaults(func=_sweep_train_skew)


def _sweep_train_skew(args) -> int:
    from .sweep_train import KINDS, sweep_train_skew

    _sync_modes(args.sync)
    if unknown := set(args.kinds.split(",")) - set(KINDS):
        raise Refused(f"unknown fault kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    out_folder(args.out)
    return sweep_train_skew(args)


def add_learn_roles(sub) -> None:
    """The networked training's roles, alone: what `ddcl up --train` starts, and what
    deploy/compose.train.yaml runs in containers."""
    from agents.learn import GRAD_CODECS

    w = sub.add_parser("world", help="the learning world: envs, centralized critic, updates; writes OUT")
    add_broker(w)
    w.add_argument("--out", help="run folder: checkpoint, summary, curves (default: none written)")
    w.add_argument("--config", default="{}", help="TrainConfig fields as JSON, as `ddcl up --train` passes them; "
                                                  "flags given beside it win")
    add_config_flags(w, TrainConfig)  # `ddcl train`'s, for a world started by hand or by compose
    w.add_argument("--grad-codec", default="float32", choices=GRAD_CODECS, help="gradient frames (default float32)")
    w.add_argument("--quiet", action="store_true", help="no progress lines")
    w.add_argument("--desync", default="{}", help="a clock fault and the gradient probe, as JSON: "
                                                  "agents/learn_desync.py's LearnDesync fields")
    w.set_defaults(func=_learn_world)
    a = sub.add_parser("learner", help="one learning agent: its policy, its DDCL layer, its optimizer")
    add_broker(a)
    add_agent_id(a)
    add_device(a)
    a.add_argument("--state-dir", help="folder for the learner's saved states: restarted with its id, it "
                                       "resumes from them (default: kept in memory only)")
    a.set_defaults(func=_learner)


def _quiet_peers() -> None:
    # the broker heartbeats every BROKER_HEARTBEAT_S for a learning run, past the peers'
    # 3 s of patience: a quiet broker is the norm, and a lost one ends the run with its own
    # error (learning_world.WAIT_S)
    logging.getLogger("ddcl.peer").setLevel(logging.ERROR)


def _learn_world(args) -> int:
    import json

    from agents.learn import config_for, render
    from agents.learn_desync import LearnDesync
    from agents.learning_world import LearningWorld

    try:
        cfg = config_for({**json.loads(args.config), **given(args, TrainConfig)})
        desync = LearnDesync.from_dict(json.loads(args.desync))
    except (TypeError, ValueError) as e:  # unknown field, bad JSON, bad value
        raise Refused(f"--config / --desync: {e}") from None
    out = out_folder(args.out) if args.out else None
    _quiet_peers()
    summary = LearningWorld(args.broker, cfg, out, args.grad_codec, progress=not args.quiet,
                            desync=desync).run(stop_flag())
    if summary is None:
        return 130
    print_final(summary)
    print(render(summary))
    return 0


def _learner(args) -> int:
    from agents.agent import wanted_agent_id
    from agents.learner import Learner

    _quiet_peers()
    learner = checked(Learner, args.broker, wanted_agent_id(args.id), args.device, state_dir=args.state_dir)
    learner.run(stop_flag())
    return 0
