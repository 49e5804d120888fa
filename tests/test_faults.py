"""Faults: validation, the broker CLI against a running `ddcl up`, and what they cost."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.desync import analyze, desync_by_step
from broker.faults import LINK_KINDS, MAX_DELAY_MS, MAX_QUEUE_S, FaultError, FaultTable, LinkPlan
from broker.faults_file import load_faults
from tests.conftest import SLOW_S, ddcl, free_port, steps_done, wait_steps

AGENTS = {"agent-0", "agent-1"}


@pytest.mark.parametrize("req, message", [
    ({"kind": "skew", "target": "agent-7", "value": 3}, "unknown agent"),
    ({"kind": "skew", "target": "agent-1", "value": 10**9}, "within"),
    ({"kind": "skew", "target": "agent-1", "value": "3"}, "number"),
    ({"kind": "drop", "value": -0.1}, "probability"),
    ({"kind": "drop", "value": float("nan")}, "number"),
    ({"kind": "reorder", "value": 1}, "window"),
    ({"kind": "delay", "target": "agent-0>agent-9", "value": 5}, "unknown agent or link"),
    ({"kind": "melt", "value": 1}, "unknown fault kind"),
])
def test_bad_fault_requests_are_refused_and_change_nothing(req, message):
    table = FaultTable()
    with pytest.raises(FaultError, match=message):
        table.validate(req, AGENTS)
    assert table.faults == {}


def test_link_plans_follow_the_faults():
    table = FaultTable()
    table.add(table.validate({"kind": "drop", "target": "agent-0>agent-1", "value": 1.0}, AGENTS), 0)
    table.add(table.validate({"kind": "delay", "target": "agent-1", "value": 30}, AGENTS), 0)
    assert table.link_plan("agent-0", "agent-1") == LinkPlan(0, 0.0)
    assert table.link_plan("agent-1", "agent-0") == LinkPlan(1, 0.03)
    table.add(table.validate({"kind": "duplicate", "value": 1.0}, AGENTS), 0)
    assert table.link_plan("agent-1", "agent-0").copies == 2
    table.add(table.validate({"kind": "beacon-loss", "target": "agent-1", "value": 2}, AGENTS), 0)
    assert [table.blocks_beacon("agent-1") for _ in range(3)] == [True, True, False]
    assert table.clear(None) and table.faults == {}


def test_faults_file_parses_and_rejects_with_the_entry_named(tmp_path):
    good = tmp_path / "f.toml"
    good.write_text('[[fault]]\nstep = 5\nkind = "skew"\ntarget = "agent-1"\nvalue = 3\n[[clear]]\nstep = 9\nall = true\n')
    assert load_faults(good) == [(5, {"op": "fault-add", "kind": "skew", "target": "agent-1", "value": 3}),
                                 (9, {"op": "fault-clear", "id": None})]
    bad = tmp_path / "b.toml"
    bad.write_text('[[fault]]\nstep = -1\nkind = "skew"\n')
    with pytest.raises(FaultError, match="fault #1"):
        load_faults(bad)


def live_skew_run(procs, tmp_path, sync: str):
    """A long `ddcl up`; skew agent-1 by 3 steps through the CLI, list, clear, list."""
    port = free_port()
    run = tmp_path / sync.replace(":", "")
    up = procs.start("up-" + sync, "up", "--steps", "100000", "--port", str(port), "--sync", sync,
                     "--beacon-every", "0", "--out", str(run))
    broker = ["--broker", f"tcp://127.0.0.1:{port}"]
    wait_steps(run, 30, up)
    r = ddcl("broker", "fault", "skew", "agent-1", "3", *broker)
    assert r.returncode == 0 and "fault 1: skew agent-1 3" in r.stdout, r.stderr
    listed = json.loads(ddcl("broker", "fault", "list", "--json", *broker).stdout)
    assert [(f["id"], f["kind"], f["target"], f["value"]) for f in listed["faults"]] == [(1, "skew", "agent-1", 3.0)]
    wait_steps(run, steps_done(run) + 60, up)
    assert ddcl("broker", "fault", "clear", "1", *broker).returncode == 0
    assert json.loads(ddcl("broker", "fault", "list", "--json", *broker).stdout)["faults"] == []
    wait_steps(run, steps_done(run) + 60, up)
    up.terminate()
    assert up.wait(SLOW_S) in (0, 130, -15)
    events = [json.loads(x) for x in (run / "faults.jsonl").read_text().splitlines()]
    added, cleared = events[0]["step"], events[1]["step"]
    by_step = desync_by_step(run, 1)
    before = [v for s, v in by_step.items() if s < added]
    during = [v for s, v in by_step.items() if added + 2 <= s < cleared]
    after = [v for s, v in by_step.items() if s >= cleared + 2]
    return before, during, after


def mean(xs):
    return sum(xs) / len(xs)


def test_skew_desyncs_implicit_links_until_cleared(procs, tmp_path):
    before, during, after = live_skew_run(procs, tmp_path, "implicit")
    assert mean(before) == 0
    assert mean(during) > 0.9  # every decode on agent-1's links uses the wrong noise
    assert after and mean(after) == 0


def test_stamped_frames_carry_the_step_and_stay_in_sync(procs, tmp_path):
    before, during, after = live_skew_run(procs, tmp_path, "stamped")
    assert mean(before) == 0 and mean(during) < 0.02 and mean(after) == 0


def test_a_world_started_alone_reports_desync_with_the_sync_services_seed(procs, tmp_path):
    """Roles started one by one, as containers run them: the world's summary carries the
    desync figures, priced with the run seed the agents got from the sync service (11),
    not the world's own env seed (0)."""
    ep = procs.broker()
    procs.start("sync", "sync", "serve", "--broker", ep, "--seed", "11", "--beacon-every", "0")
    for k in range(2):
        procs.start(f"agent-{k}", "agent", "--broker", ep, "--id", f"agent-{k}", "--device", "cpu")
    run = tmp_path / "run"
    world = procs.start("world", "world", "--broker", ep, "--steps", "600", "--seed", "0", "--out", str(run))
    wait_steps(run, 20, world)
    assert ddcl("broker", "fault", "skew", "agent-1", "2", "--broker", ep).returncode == 0
    assert world.wait(SLOW_S * 2) == 0, procs.log("world")
    d = json.loads((run / "summary.json").read_text())["desync"]
    assert d["messages"] == 2 * 600 and 0 < d["desynced_fraction"] < 1
    assert d["mean_error"] == analyze(run, 0.2, 11, 4)["mean_error"] != analyze(run, 0.2, 0, 4)["mean_error"]
    assert "desync (implicit sync)" in procs.log("world")


def test_the_next_beacon_corrects_a_skewed_clock(tmp_path):
    faults = tmp_path / "f.toml"
    faults.write_text('[[fault]]\nstep = 33\nkind = "skew"\ntarget = "agent-1"\nvalue = 2\n')
    run = tmp_path / "run"
    r = ddcl("up", "--steps", "80", "--beacon-every", "20", "--faults", str(faults), "--out", str(run), timeout=600)
    assert r.returncode == 0, r.stderr
    by_step = desync_by_step(run, 1)
    assert all(by_step[s] == 0 for s in range(0, 33))
    assert all(by_step[s] > 0.9 for s in range(35, 40))  # skewed, no beacon yet
    assert all(by_step[s] == 0 for s in range(41, 80))  # beacon at step 40 corrected it
    summary = json.loads((run / "summary.json").read_text())
    assert summary["beacons_received"] >= 2 * 3


def test_sweep_writes_csv_and_plot(tmp_path):
    out = tmp_path / "sweep"
    r = ddcl("sweep", "skew", "--values", "0,2", "--sync", "implicit,stamped", "--steps", "40", "--batch", "4",
             "--out", str(out), timeout=800)
    assert r.returncode == 0, r.stderr
    rows = (out / "sweep_skew.csv").read_text().splitlines()
    assert rows[0].startswith("sync,skew,success_rate,bits_per_message")
    by = {(line.split(",")[0], line.split(",")[1]): line.split(",") for line in rows[1:]}
    assert float(by[("implicit", "2")][5]) > 0.9 and float(by[("stamped", "2")][5]) == 0
    assert float(by[("implicit", "0")][5]) == 0
    assert (out / "sweep_skew.png").stat().st_size > 10_000


def test_epochs_rotate_in_step_and_a_stale_seed_desyncs_until_cleared(tmp_path):
    faults = tmp_path / "f.toml"
    faults.write_text('[[fault]]\nstep = 10\nkind = "stale-seed"\ntarget = "agent-1"\n'
                      '[[clear]]\nstep = 60\nid = 1\n')
    run = tmp_path / "run"
    r = ddcl("up", "--steps", "100", "--epoch-steps", "25", "--beacon-every", "5", "--faults", str(faults),
             "--out", str(run), timeout=600)
    assert r.returncode == 0, r.stderr
    by_step = desync_by_step(run, 1)
    assert all(by_step[s] == 0 for s in range(0, 25))  # the seed for 25.. was announced before 10
    assert all(by_step[s] == 0 for s in range(25, 50))
    assert all(by_step[s] > 0.9 for s in range(51, 60))  # epoch 2 started at 50: agent-1 never heard of it
    assert all(by_step[s] == 0 for s in range(66, 100))  # cleared at 60, beacon at 65
    rec = json.loads((run / "summary.json").read_text())["desync"]["recovery_steps"]
    assert rec and rec[0]["steps_to_recover"] <= 5


def table_with(*reqs: dict) -> FaultTable:
    table = FaultTable()
    for req in reqs:
        table.add(table.validate(req, AGENTS), 0)
    return table


@pytest.mark.parametrize("req, message", [
    ({"kind": "burst-loss", "value": 0.1}, "needs r"),
    ({"kind": "burst-loss", "value": 0.1, "r": 1.5}, "probability"),
    ({"kind": "bandwidth", "value": 1}, "bits/s"),
    ({"kind": "bandwidth", "value": 1e11}, "bits/s"),
    ({"kind": "jitter", "value": -1}, "ms"),
    ({"kind": "corrupt", "value": 2}, "probability"),
    ({"kind": "partition", "target": "agent-0>agent-7"}, "unknown agent or link"),
])
def test_bad_link_fault_requests_are_refused(req, message):
    with pytest.raises(FaultError, match=message):
        FaultTable().validate(req, AGENTS)


def test_jitter_spreads_delays_around_the_delay_and_never_below_zero():
    table = table_with({"kind": "delay", "value": 20}, {"kind": "jitter", "value": 10})
    delays = [table.link_plan("agent-0", "agent-1").delay for _ in range(2000)]
    assert 0.010 <= min(delays) < 0.012 and 0.028 < max(delays) <= 0.030
    wide = table_with({"kind": "jitter", "value": 50})
    assert min(wide.link_plan("agent-0", "agent-1").delay for _ in range(2000)) == 0.0


def test_a_partition_cuts_its_links_until_cleared():
    table = table_with({"kind": "partition", "target": "agent-0>agent-1"})
    assert table.link_plan("agent-0", "agent-1").copies == 0
    assert table.link_plan("agent-1", "agent-0").copies == 1  # one way only
    table.clear(1)
    assert table.link_plan("agent-0", "agent-1").copies == 1


def test_bandwidth_queues_copies_then_loses_what_would_wait_too_long():
    table = table_with({"kind": "bandwidth", "value": 8000})  # 100 bytes take 0.1 s
    table.clock = lambda: 5.0
    delays = [table.link_plan("agent-0", "agent-1", wire_bytes=100).delay for _ in range(10)]
    assert delays == pytest.approx([0.1 * (i + 1) for i in range(10)])
    assert table.link_plan("agent-0", "agent-1", wire_bytes=100).copies == 0  # 1.1 s: over MAX_QUEUE_S
    assert table.link_plan("agent-1", "agent-0", wire_bytes=100).delay == pytest.approx(0.1)  # its own budget
    table.clock = lambda: 6.0  # the queue drained
    assert table.link_plan("agent-0", "agent-1", wire_bytes=100).delay == pytest.approx(0.1)


def test_burst_loss_loses_in_bursts_at_the_gilbert_rate():
    def runs(lost: list[bool]) -> float:
        n = sum(1 for i, x in enumerate(lost) if x and (i == 0 or not lost[i - 1]))
        return sum(lost) / n

    burst = table_with({"kind": "burst-loss", "value": 0.1, "r": 0.3})
    lost = [burst.link_plan("agent-0", "agent-1").copies == 0 for _ in range(100_000)]
    assert sum(lost) / len(lost) == pytest.approx(0.1 / (0.1 + 0.3), abs=0.01)  # p / (p + r)
    assert runs(lost) == pytest.approx(1 / 0.3, abs=0.2)  # a bad spell lasts 1/r copies
    iid = table_with({"kind": "drop", "value": 0.25})
    assert runs([iid.link_plan("agent-0", "agent-1").copies == 0 for _ in range(100_000)]) < 1.5


def test_corrupt_flips_one_payload_bit():
    from broker.faults import flipped

    table = table_with({"kind": "corrupt", "value": 1.0})
    flips = {table.link_plan("agent-0", "agent-1", wire_bytes=9, payload_bytes=3).flip for _ in range(500)}
    assert flips == set(range(24))
    assert table.link_plan("agent-0", "agent-1", wire_bytes=6, payload_bytes=0).flip is None
    data = bytes(range(9))
    for bit in range(72):
        out = flipped(data, bit)
        assert sum(bin(a ^ b).count("1") for a, b in zip(out, data)) == 1 and flipped(out, bit) == data


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries(
    {"kind": st.sampled_from(LINK_KINDS),
     "target": st.sampled_from(["*", "agent-0", "agent-1", "agent-0>agent-1", "agent-1>agent-0"]),
     "value": st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-10, 10**11))},
    optional={"r": st.one_of(st.floats(), st.text(max_size=3)), "loss_bad": st.floats(-1, 2)}), max_size=6),
    st.lists(st.tuples(st.booleans(), st.integers(0, 10**6), st.integers(0, 10**5)), min_size=1, max_size=30))
def test_any_link_faults_give_plans_within_bounds(reqs, copies):
    table = FaultTable()
    for req in reqs:
        try:
            table.add(table.validate(req, AGENTS), 0)
        except FaultError:
            pass
    for forward, wire, payload in copies:
        src, dst = ("agent-0", "agent-1") if forward else ("agent-1", "agent-0")
        plan = table.link_plan(src, dst, wire, payload)
        assert plan.copies >= 0 and plan.delay >= 0
        assert plan.flip is None or 0 <= plan.flip < 8 * payload
        assert plan.delay <= len(table.faults) * (MAX_DELAY_MS / 1000 + MAX_QUEUE_S)
