"""The healing sync mode: the sender stamps its full step only when its clock jumped and
every K steps; the receiver anchors on stamps and counts its own ticks between them. Real
frames through the real message path, clocks that jump as hypothesis likes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.message import MessageChannel, SyncMode
from channel import codecs, frame

SHAPE = (2, 3)


def pair(mode: str):
    """A sender's channel and a receiver's: each end keeps its own anchors."""
    build = lambda: MessageChannel.build([codecs.get("rice")] * 2, SHAPE[1], 0.2, 7, SyncMode.parse(mode))  # noqa: E731
    return build(), build()


def seed_for(step: int) -> int:
    return 5 + (step // 50) % 3  # epochs, so a wrong step can also mean a wrong seed


# a clock view per world step: a walk whose steps are mostly +1, with jumps either way
views = st.lists(st.one_of(st.just(1), st.just(1), st.just(1), st.integers(-80, 80)), min_size=1, max_size=60).map(
    lambda d: list(np.cumsum([0, *d[1:]]) + d[0]))


@settings(max_examples=60, deadline=None)
@given(tx=views, rx_offset=st.integers(-100, 100), every=st.integers(1, 40))
def test_every_frame_decodes_with_the_senders_noise_however_its_clock_jumps(tx, rx_offset, every):
    sender, receiver = pair(f"healing:{every}")
    z = np.linspace(-1, 1, SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE)
    for tick, view in enumerate(tx):
        view = int(view)
        z_hat, data, _ = sender.speak(z, 1, view, seed_for(view))
        _, heard, used = receiver.hear(data, tick + rx_offset, seed_for, SHAPE, tick=tick)
        assert used == (view, seed_for(view))
        assert np.array_equal(heard, z_hat)


def test_stamps_only_at_jumps_and_every_k_and_a_lost_stamp_heals_at_the_next():
    sender, receiver = pair("healing:8")
    z = np.zeros(SHAPE, dtype=np.float32)
    stamped, wrong = [], []
    for tick in range(40):
        view = tick + (5 if tick >= 13 else 0)  # the sender's clock jumps 5 steps at tick 13
        _, data, _ = sender.speak(z, 1, view, 5)
        if frame.unpack(data).stamp_mode == frame.StampMode.FULL:
            stamped.append(tick)
        if tick == 13:
            continue  # the jump's stamped frame is lost
        _, _, (step, _) = receiver.hear(data, tick, lambda s: 5, SHAPE, tick=tick)
        if step != view:
            wrong.append(tick)
    # the first 8 messages, the jump, and every view divisible by 8
    assert stamped == [0, 1, 2, 3, 4, 5, 6, 7, 8, 13, 19, 27, 35]
    assert wrong == [14, 15, 16, 17, 18]  # until the view-24 stamp at tick 19


def test_healing_frames_cost_a_stamp_only_when_sent_and_the_mode_parses_strictly():
    sender, _ = pair("healing:4")
    z = np.zeros(SHAPE, dtype=np.float32)
    sizes = [len(sender.speak(z, 1, v, 5)[1]) for v in range(1, 13)]
    plain = len(pair("implicit")[0].speak(z, 1, 1, 5)[1])
    # the first STARTUP_STAMPS messages stamped, then views 9 to 11 plain and 12 (a multiple of 4) stamped
    assert all(n > plain for n in sizes[:8]) and sizes[8:11] == [plain] * 3 and sizes[11] > plain
    assert str(SyncMode.parse("healing:32")) == "healing:32"
    for bad in ("healing:0", "healing:", "healing:-3", "healing:x"):
        with pytest.raises(ValueError):
            SyncMode.parse(bad)


def test_a_healing_receiver_refuses_a_low_stamp_and_takes_a_hostile_full_one():
    _, receiver = pair("healing:8")
    payload = codecs.get("rice").encode(np.zeros(6, dtype=np.int64))
    low = frame.pack(kind=frame.Kind.MESSAGE, sender=1, codec=frame.CODEC_IDS["rice"], count=6, payload=payload,
                     stamp_mode=frame.StampMode.LOW, stamp=3, stamp_bits=4)
    from channel import ChannelError

    with pytest.raises(ChannelError):
        receiver.hear(low, 0, seed_for, SHAPE, tick=0)
    far = frame.pack(kind=frame.Kind.MESSAGE, sender=1, codec=frame.CODEC_IDS["rice"], count=6, payload=payload,
                     stamp_mode=frame.StampMode.FULL, stamp=2**62 - 1)
    _, _, (step, _) = receiver.hear(far, 0, seed_for, SHAPE, tick=0)
    assert step == 2**62 - 1


def test_an_epoch_table_knows_when_a_rotation_went_unannounced():
    from agents.agent import Epochs

    e = Epochs()
    assert e.stale_at(10**6) is None  # one epoch known: no rotations at all
    e.update({"epochs": [[0, 1], [50, 9]]})
    assert [e.stale_at(s) for s in (0, 49, 99, 100, 180)] == [None, None, None, 100, 100]
    e.update({"epochs": [[100, 4], [150, 8]]})
    assert e.stale_at(180) is None and e.stale_at(200) == 200 and e.seed_for(180) == 8


def test_the_grid_cell_desyncs_heals_and_recovers_as_its_clocks_say():
    """The desync grid's in-process cell on the shipped goal policy: implicit sync off on
    every decode under a skew, healing on none; a clock jump at step 23 recovers at the
    beacon of step 30; a stale seed is healed at the rotation, not at the next beacon."""
    from agents.desync_grid import Cell, run_cell

    def cell(scenario, sync, value=0.0, beacons=0):
        return run_cell(Cell("deploy/checkpoint/goal.pt", scenario, "one", value, beacons, 0, sync, 0, 140, 8))

    assert cell("skew", "implicit", 4)["desynced_fraction"] == 1.0
    healed = cell("skew", "healing:32", -64)
    assert healed["desynced_fraction"] == 0.0 and healed["header_bytes"] < cell("skew", "stamped", -64)["header_bytes"]
    assert cell("jump", "implicit", 4, 10)["steps_to_recover"] == 7
    stale, heals = cell("stale-seed", "implicit", beacons=10), cell("stale-seed", "healing:32", beacons=10)
    assert stale["steps_to_recover"] == 5 and heals["desynced_fraction"] < stale["desynced_fraction"] / 10


def test_a_healing_agent_asks_for_the_epoch_its_beacons_missed(tmp_path):
    """Real processes: agent-1's beacons are blocked from step 10 to 60, so it never hears
    of epoch 2 (step 50). Under implicit sync it is off until the beacon after the clear
    (tests/test_faults.py); a healing agent asks the sync service as its clock passes 50."""
    import json

    from agents.desync import desync_by_step
    from tests.conftest import ddcl

    faults = tmp_path / "f.toml"
    faults.write_text('[[fault]]\nstep = 10\nkind = "stale-seed"\ntarget = "agent-1"\n[[clear]]\nstep = 60\nid = 1\n')
    run = tmp_path / "run"
    r = ddcl("up", "--steps", "70", "--epoch-steps", "25", "--beacon-every", "5", "--sync", "healing:8",
             "--faults", str(faults), "--out", str(run), timeout=600)
    assert r.returncode == 0, r.stderr
    by_step = desync_by_step(run, 1)
    assert all(by_step[s] == 0 for s in range(0, 50))
    assert by_step[59] == 0  # healed before the clear: the answer came within the epoch's first steps
    assert all(by_step[s] == 0 for s in range(60, 70))
    assert json.loads((run / "summary.json").read_text())["broker"]["other"].get("beacons_lost", 0) > 0
