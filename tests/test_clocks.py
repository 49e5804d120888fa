"""Clocks: the logical clock's arithmetic, and in wall mode a real clock shifted with
libfaketime desynchronizes exactly like an injected skew of the same size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.clock import Clock
from agents.desync import analyze, desync_by_step

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
# Wall mode reads the step off the clock when an observation arrives, so a tick must be
# longer than any delay of a loaded machine: at 0.1 s a clean run beside other test
# workers read 8 % of its steps one tick late. The shifts below are 3 ticks.
TICK_S = 0.5


def test_logical_clock_skew_drift_and_beacon_correction():
    c = Clock()
    assert c.view(10) == 10
    c.set_faults(skew=3, drift_ppm=0, world_step=10)
    assert c.view(11) == 14
    c.on_beacon(ref_step=12, ref_time=0.0)
    assert c.view(12) == 12 and c.view(50) == 50
    c.set_faults(skew=3, drift_ppm=100_000, world_step=50)  # 10 %: one step per ten
    assert c.view(60) == 61 and c.view(80) == 83
    c.on_beacon(ref_step=80, ref_time=0.0)
    assert c.view(80) == 80


def wall_run(procs, tmp_path: Path, name: str, agent1_env=None, faults: str = "") -> Path:
    from tests.conftest import SLOW_S, free_port, wait_port

    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    run = tmp_path / name
    run.mkdir()
    fault_file = tmp_path / f"{name}.toml"
    fault_file.write_text(faults)
    procs.start(f"{name}-broker", "broker", "serve", "--bind", ep, "--log-dir", str(run), "--faults", str(fault_file))
    wait_port(port)
    procs.start(f"{name}-sync", "sync", "serve", "--broker", ep, "--beacon-every", "0")
    procs.start(f"{name}-agent-0", "agent", "--broker", ep, "--id", "agent-0", "--device", "cpu")
    procs.start(f"{name}-agent-1", "agent", "--broker", ep, "--id", "agent-1", "--device", "cpu", env_extra=agent1_env)
    world = procs.start(f"{name}-world", "world", "--broker", ep, "--steps", "40", "--clock", "wall", "--tick", str(TICK_S),
                        "--deadline", "30", "--out", str(run))
    assert world.wait(SLOW_S) == 0, procs.log(f"{name}-world")
    for k in range(2):
        assert procs.procs[f"{name}-agent-{k}"].wait(SLOW_S) == 0
    return run


@pytest.mark.skipif(not FAKETIME_LIB.exists(), reason="libfaketime missing: scripts/setup installs the 'faketime' package")
def test_faketime_shift_equals_injected_skew_in_wall_mode(procs, tmp_path):
    clean = wall_run(procs, tmp_path, "clean")
    faked = wall_run(procs, tmp_path, "faked", agent1_env={
        "LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": f"+{3 * TICK_S}", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    skewed = wall_run(procs, tmp_path, "skewed",
                      faults=f'[[fault]]\nstep = 0\nkind = "skew"\ntarget = "agent-1"\nvalue = {3 * TICK_S * 1000:g}\n')
    summary = lambda run: json.loads((run / "summary.json").read_text())  # noqa: E731
    assert summary(clean)["clock"] == "wall"
    result = {}
    for name, run in (("clean", clean), ("faked", faked), ("skewed", skewed)):
        by_step = desync_by_step(run, 1)
        late = [v for s, v in by_step.items() if s >= 3]  # the fault file applies at step 0
        result[name] = (sum(late) / len(late), analyze(run, 0.2, 0, 4)["mean_error"])
    assert result["clean"] == (0.0, 0.0)
    assert result["faked"][0] > 0.95 and result["skewed"][0] > 0.95
    # both are off by 3 ticks: the same desync, hence errors of the same size
    assert result["faked"][1] == pytest.approx(result["skewed"][1], rel=0.25)


def test_a_wall_clock_beacon_that_took_its_latency_for_offset_keeps_the_view_on_the_step():
    """A beacon for step 0 arrives 50 ms after the sync service stamped it: the correction
    takes those 50 ms for offset, and a reading right at step 0's start lands 50 ms before
    it (or after it, for a stamp taken late). A 10 s tick: the machine's delays do not count."""
    import time

    t0 = time.time()
    c = Clock(mode="wall", tick_s=10.0, t0=t0)
    c.on_beacon(ref_step=0, ref_time=t0 - 0.05)
    assert c.view(0) == 0
    c.on_beacon(ref_step=0, ref_time=t0 + 0.05)  # the other side of the tick's start
    assert c.view(0) == 0
