"""Clock faults in networked training (agents/learn_desync.py): the noise step each
learner keys its dither by, what each sync mode lets a receiver recover, and a real
networked run where a skew from a mid-run update desyncs every decode from then on and
bends the gradient the speaker receives, while before it the probe reads exactly 1."""

from __future__ import annotations

import json

import pytest
import torch

from agents.learn import train_up
from agents.learn_desync import LearnDesync
from agents.message import MessageChannel, SyncMode
from agents.train_config import TrainConfig
from channel.torch import DDCL

ROLLOUT = 5


def test_a_skew_lands_at_its_update_and_drift_grows_until_a_beacon_sets_it_back():
    skew = LearnDesync(skew=2, from_update=3)
    assert [skew.view(1, s, ROLLOUT) for s in (0, 9, 10, 11)] == [0, 9, 12, 13]
    assert skew.view(0, 11, ROLLOUT) == 11  # only the faulted agent's clock is off
    drift = LearnDesync(drift_ppm=100_000)  # a step every 10
    assert [drift.view(1, s, ROLLOUT) - s for s in (0, 4, 6, 14, 16, 40)] == [0, 0, 1, 1, 2, 4]
    beacons = LearnDesync(drift_ppm=100_000, beacon_every=20)
    assert [beacons.view(1, s, ROLLOUT) - s for s in (6, 16, 20, 26, 36, 40)] == [1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("bad", [{"sync": "sometimes"}, {"skew": "2"}, {"probe": 1}, {"from_update": 0},
                                 {"nonsense": 1}, {"agent": 300}, {"skew": True}])
def test_a_bad_desync_spec_is_refused(bad):
    with pytest.raises(ValueError):
        LearnDesync.from_dict(bad)


@pytest.mark.parametrize("mode, skew, wrong", [("implicit", 1, 2), ("stamped", 8, 0), ("checked:2", 1, 0),
                                               ("checked:2", 2, 1), ("checked:2", 4, 2)])
def test_each_sync_mode_recovers_the_skews_its_frames_carry(mode, skew, wrong):
    """The learner's path: speak at its own view, hear at its own view with what the
    frame carries; count the decodes whose noise step is not the sender's (both links)."""
    spec = LearnDesync(sync=mode, skew=skew)
    ch = MessageChannel([DDCL(1, delta=0.2, codec="float32") for _ in range(2)], SyncMode.parse(mode))
    step, z = 40, torch.randn(4, 1)
    off = 0
    for sender, receiver in ((0, 1), (1, 0)):
        _, data, _ = ch.speak(z, sender, spec.view(sender, step, ROLLOUT), 1)
        _, _, (used, _) = ch.hear(data, spec.view(receiver, step, ROLLOUT), lambda _s: 1, (4, 1))
        off += used != spec.view(sender, step, ROLLOUT)
    assert off == wrong


def test_a_mid_run_skew_desyncs_every_decode_from_its_update_and_biases_the_gradient(tmp_path):
    cfg = TrainConfig(env="goal", msg_dim=1, codec="range", rate_loss="entropy", batch=32, rollout=ROLLOUT, updates=6,
                      eval_every=1000, seed=2, device="cpu")
    desync = {"sync": "implicit", "skew": 2, "from_update": 4, "probe": True}
    assert train_up(cfg, tmp_path, progress=False, desync=desync) == 0
    rows = [json.loads(line) for line in (tmp_path / "updates.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3, 4, 5, 6]
    before, after = rows[:3], rows[3:]
    assert all(r["desynced"] == 0 for r in before) and all(r["desynced"] == 1 for r in after)
    for link in ("cos_1>0", "cos_0>1"):
        # synchronized: the probe's gradient is the one sent, to rounding of the cosine
        assert all(r[link] > 1 - 1e-9 for r in before), [r[link] for r in before]
        # desynced: another z_hat, so another gradient, though still close in direction
        assert all(0 < r[link] < 1 - 1e-9 for r in after), [r[link] for r in after]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["networked"]["desync"]["skew"] == 2
    assert sum(a["desynced"] for a in s["networked"]["learners"]) == 2 * 3 * ROLLOUT  # both links, 3 updates


def test_the_sweep_keeps_finished_cells_and_writes_its_table_and_plots(tmp_path, capsys):
    """Every cell's folder already holds a run: the sweep starts none, and writes the CSV
    and a PNG per fault kind from what the folders hold."""
    import argparse

    from ddcl.sweep_train import cells, sweep_train_skew

    args = argparse.Namespace(skews=[1, 4], kinds="skew,skew-mid,drift", sync="implicit,stamped", drift_ppm=1e5,
                              beacon_every=20, agent=1, updates=4, batch=8, lr=0.01, lam=0.0, seed=0, out=str(tmp_path))
    grid = cells(args)
    assert len(grid) == 1 + 2 * (2 + 2 + 2) and len({c.name for c in grid}) == len(grid)
    for cell in grid:
        run = tmp_path / cell.name
        run.mkdir()
        faulted = bool(cell.desync)
        rows = [{"update": u, "env_steps": 80 * u, "success": 0.5, "episodes": 4, "wire_bits": 1.5, "rate_bits": 1.0,
                 "desynced": float(faulted), **({"cos_1>0": 0.99, "ratio_1>0": 1.0, "cos_0>1": 1.0, "ratio_0>1": 1.0}
                                                 if faulted else {})} for u in range(1, 5)]
        (run / "updates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (run / "summary.json").write_text(json.dumps({"final": {"success_rate": 0.75}}))
    assert sweep_train_skew(args) == 0
    assert "done before, kept" in capsys.readouterr().err
    table = (tmp_path / "train_skew.csv").read_text().splitlines()
    assert len(table) == 1 + len(grid) and "cos_mean_1>0" in table[0]
    assert all((tmp_path / f"train_skew_{kind}.png").stat().st_size > 0 for kind in ("skew", "skew-mid", "drift"))
