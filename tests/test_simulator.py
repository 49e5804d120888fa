"""Whole runs with every role its own OS process."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from agents import lockstep
from agents.desync import desync_by_step
from agents.inprocess import run_inprocess
from agents.run_config import RunConfig
from broker import protocol
from broker.peer import Peer
from channel import frame
from tests.conftest import DEVICES, ROOT, SLOW_S, ddcl, free_port, metrics_rows, steps_done, wait_registered, wait_row, wait_steps

# A step's deadline for runs whose assertions are not about deadlines: agents that miss one
# act without their peers' messages, which changes actions, successes and figures. On a
# quiet machine a step takes milliseconds, so only a loaded one ever comes near it.
GENEROUS_DEADLINE = "30"


def test_ddcl_up_writes_summary_and_metrics(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "ddcl", "up", "--steps", "60", "--batch", "4", "--codec", "rice",
                        "--deadline", GENEROUS_DEADLINE, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bytes per step" in r.stdout.lower()
    s = json.loads((out / "summary.json").read_text())
    assert (s["steps"], s["agents"], s["batch"], s["codec"]) == (60, 2, 4, "rice")
    m = s["messages"]
    assert m["sent"] == m["delivered"] + m["dropped"] + m["rejected"] == 2 * 60
    for table in (s["bytes_per_step"], s["float32_bytes_per_step"]):
        for d in ("up", "down", "sum"):
            assert table[d]["total"] == pytest.approx(table[d]["payload"] + table[d]["header"] + table[d]["framing"])
        assert table["sum"]["total"] == pytest.approx(table["up"]["total"] + table["down"]["total"])
    # float32 pricing of the same messages: 4 bytes per value, 16 values, 2 agents.
    assert s["float32_bytes_per_step"]["up"]["payload"] == 2 * 4 * 16
    assert s["bytes_per_step"]["up"]["total"] < s["float32_bytes_per_step"]["up"]["total"]
    assert 0 < s["bits_per_message"] < 32 * 16
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(60))  # every step once, in order, from batched writes
    # the rows and the summary count the same episodes and rewards
    assert sum(r["episodes_done"] for r in rows) == s["episodes"]
    assert s["success_rate"] == (sum(r["successes"] for r in rows) / s["episodes"] if s["episodes"] else None)
    assert s["mean_reward"] == pytest.approx(sum(r["reward"] for r in rows) / 60)  # per instance and step
    assert all(r["latency_s"] > 0 and r["deadline_misses"] == [0, 0] for r in rows)


def test_a_second_run_into_the_same_folder_reports_only_its_own_decodes(tmp_path):
    """Agents append to their oracle logs (a restarted agent goes on); a new run in the
    same folder starts them afresh, so its desync figures count its own decodes only."""
    out = tmp_path / "run"
    for steps in (30, 20):
        r = subprocess.run([sys.executable, "-m", "ddcl", "up", "--steps", str(steps), "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert r.returncode == 0, r.stdout + r.stderr
        s = json.loads((out / "summary.json").read_text())
        assert s["desync"]["messages"] == 2 * steps  # each of 2 agents decodes its peer once per step


def test_shipped_traffic_junction_checkpoint_talks_over_the_network(tmp_path):
    """Five agent processes with the shipped tj-easy policy: 128-value messages, one range
    model per agent from the checkpoint, through the broker. The cars succeed and the
    messages stay far below float32 on the wire."""
    out = tmp_path / "tj"
    r = subprocess.run([sys.executable, "-m", "ddcl", "up", "--env", "tj-easy", "--steps", "40", "--batch", "16",
                        "--codec", "range", "--checkpoint", str(ROOT / "deploy" / "checkpoint" / "tj-easy.pt"),
                        "--deadline", GENEROUS_DEADLINE, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert (s["agents"], s["values_per_message"], s["episodes"]) == (5, 128, 32)
    assert s["success_rate"] >= 0.9 and s["messages"]["delivered"] == 5 * 40
    assert s["bits_per_message"] < 32 * 128 / 500  # the trained cars say a few bits, not 4096
    assert s["bytes_per_step"]["sum"]["total"] * 100 < s["float32_bytes_per_step"]["sum"]["total"]


EQUIVALENCE_CASES = [("goal", 2, "mlp", "mean", "cpu"), ("goal", 2, "gru", "attention", "cpu"),
                     ("pp-easy", 3, "mlp", "mean", "cpu")]
# agents on CUDA against the in-process run on CUDA: the same kernels on the same card
EQUIVALENCE_CASES += [("goal", 2, "gru", "attention", d) for d in DEVICES if d != "cpu"]


@pytest.mark.parametrize("env,n,core,aggregate,device", EQUIVALENCE_CASES)
def test_networked_run_matches_in_process_run_bit_for_bit(procs, tmp_path, env, n, core, aggregate, device):
    cfg = RunConfig(env=env, agents=n, steps=25, batch=3, codec="rice", seed=4, core=core, aggregate=aggregate)
    ep = procs.broker()
    procs.start("sync", "sync", "serve", "--broker", ep, "--seed", "4", "--epoch-seed", "9")
    for k in range(n):
        procs.start(f"agent-{k}", "agent", "--broker", ep, "--id", f"agent-{k}", "--device", device,
                    "--record", str(tmp_path / f"rec{k}.pkl"))
    world = procs.start("world", "world", "--broker", ep, "--env", env, "--agents", str(n), "--steps", "25",
                        "--batch", "3", "--codec", "rice", "--seed", "4", "--core", core, "--aggregate", aggregate,
                        "--deadline", GENEROUS_DEADLINE, "--out", str(tmp_path / "run"))
    assert world.wait(SLOW_S) == 0, procs.log("world")
    for k in range(n):
        assert procs.procs[f"agent-{k}"].wait(SLOW_S) == 0, procs.log(f"agent-{k}")
    torch.set_num_threads(1)
    expected = run_inprocess(cfg, run_seed=4, epoch_seed=9, device=device)
    for k in range(n):
        got = pickle.loads((tmp_path / f"rec{k}.pkl").read_bytes())
        assert len(got) == len(expected[k]) == 25
        for g, e in zip(got, expected[k]):
            assert g["step"] == e["step"]
            np.testing.assert_array_equal(g["z_hat"], e["z_hat"])
            np.testing.assert_array_equal(g["actions"], e["actions"])
            assert g["received"].keys() == e["received"].keys() == set(range(n)) - {k}
            for j in g["received"]:
                np.testing.assert_array_equal(g["received"][j], e["received"][j])
    # And the receiver's reconstruction is the sender's z_hat, bit for bit.
    a0 = pickle.loads((tmp_path / "rec0.pkl").read_bytes())
    a1 = pickle.loads((tmp_path / "rec1.pkl").read_bytes())
    for x, y in zip(a0, a1):
        np.testing.assert_array_equal(x["z_hat"], y["received"][0])


def test_an_agent_that_cannot_write_its_oracle_log_still_runs(procs, tmp_path):
    """The oracle log is off the data plane: an agent that cannot open it (here a folder
    in its place; elsewhere a run folder on another host) warns and plays on."""
    ep = procs.broker()
    procs.start("sync", "sync", "serve", "--broker", ep)
    run = tmp_path / "run"
    world = procs.start("world", "world", "--broker", ep, "--steps", "30", "--out", str(run))
    wait_registered(ep, "world", world)  # so it has cleared the old logs
    (run / "oracle-agent-1.jsonl").mkdir()
    for k in range(2):
        procs.start(f"agent-{k}", "agent", "--broker", ep, "--id", f"agent-{k}", "--device", "cpu")
    assert world.wait(SLOW_S) == 0, procs.log("world")
    assert procs.procs["agent-1"].wait(SLOW_S) == 0 and "no oracle log" in procs.log("agent-1")
    s = json.loads((run / "summary.json").read_text())
    assert s["steps"] == 30 and s["messages"]["delivered"] == 60 and s["agents_reporting"] == [0, 1]
    assert s["desync"]["messages"] == 0  # agent-1's frames cannot be matched to their sends


def test_killed_agent_misses_deadlines_then_rejoins(procs, tmp_path):
    ep = procs.broker()
    procs.start("sync", "sync", "serve", "--broker", ep)
    procs.start("agent-0", "agent", "--broker", ep, "--id", "agent-0", "--device", "cpu")
    procs.start("agent-1", "agent", "--broker", ep, "--id", "agent-1", "--device", "cpu")
    # a deadline a live agent meets however loaded the machine (0.2 s was missed 36 times by
    # agent-0 beside other test workers), and the dead one misses every step
    world = procs.start("world", "world", "--broker", ep, "--steps", "400", "--deadline", "3", "--out", str(tmp_path / "run"))
    wait_steps(tmp_path / "run", 21, world, log=lambda: procs.log("world"))
    procs.procs["agent-1"].send_signal(signal.SIGKILL)
    # the world keeps stepping on deadlines meanwhile
    wait_row(tmp_path / "run", lambda r: r["deadline_misses"][1] >= 3, world, "three misses of the killed agent",
             log=lambda: procs.log("world"))
    procs.start("agent-1b", "agent", "--broker", ep, "--id", "agent-1", "--device", "cpu")
    assert world.wait(600) == 0, procs.log("world")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["steps"] == 400
    rows = metrics_rows(tmp_path / "run")
    first_miss = next((r for r in rows if r["deadline_misses"][0]), None)
    assert s["deadline_misses"][0] == 0, f"the live agent missed; first at {first_miss}\n{procs.log('agent-0')}"
    assert s["reregistrations"] == 0  # the world waited out whole deadlines and stayed registered
    assert s["deadline_misses"][1] >= 3
    last = rows[-20:]
    assert last[0]["deadline_misses"] == last[-1]["deadline_misses"]  # rejoined: no new misses


def test_a_run_goes_on_through_a_broker_restart(procs, tmp_path):
    """The broker SIGKILLed mid-run, with a clock fault on, and started again on its port:
    every peer registers again under its id, the steps of the outage miss their deadline,
    the fault the old broker held ends with it, and the run ends."""
    port = free_port()
    ep = procs.broker(port)
    procs.start("sync", "sync", "serve", "--broker", ep, "--beacon-every", "0")  # no beacon corrects the skew
    for k in range(2):
        procs.start(f"agent-{k}", "agent", "--broker", ep, "--device", "cpu")  # ids assigned, as in compose
    run = tmp_path / "run"
    # a restart on a loaded machine can take longer than the default 10 s the world waits
    # a deadline live agents meet however loaded the machine: the outage's steps must be the
    # only ones that miss it (0.2 s is missed beside other test workers)
    world = procs.start("world", "world", "--broker", ep, "--steps", "3000", "--deadline", "3", "--out", str(run),
                        "--broker-timeout", "120")
    wait_steps(run, 21, world, log=lambda: procs.log("world"))
    assert ddcl("broker", "fault", "skew", "agent-1", "2", "--broker", ep).returncode == 0
    # the fault reached agent-1 before the observations of any step sent after it took effect
    wait_steps(run, steps_done(run) + 5, world, log=lambda: procs.log("world"))
    procs.procs["broker"].send_signal(signal.SIGKILL)
    procs.procs["broker"].wait()
    for name in ("agent-0", "agent-1", "sync", "world"):  # every peer has missed it (LIVENESS heartbeats)
        procs.wait_log(name, "no word from the broker at")
    procs.broker(port)
    assert world.wait(600) == 0, procs.log("world")
    s = json.loads((run / "summary.json").read_text())
    assert s["steps"] == 3000 and s["reregistrations"] == 1
    assert min(s["deadline_misses"]) >= 1  # the outage's steps
    assert 0 < s["broker"]["steps"] < 3000  # the new broker counts from when it came up
    assert s["messages"]["sent"] == s["messages"]["delivered"] > 0
    for name in ("agent-0", "agent-1", "sync", "world"):
        assert "the broker at" in procs.log(name) and "answers again" in procs.log(name), name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    back = max(r["step"] for r, prev in zip(rows[1:], rows) if r["deadline_misses"] != prev["deadline_misses"])
    by_step = desync_by_step(run, 1)
    assert any(v > 0 for step, v in by_step.items() if step < back)  # the skew took
    late = [v for step, v in by_step.items() if step > back + 20]
    assert late and not any(late)  # and left with the broker that held it


def test_agents_left_by_a_world_that_died_join_the_next_one(procs, tmp_path):
    ep = procs.broker()
    procs.start("sync", "sync", "serve", "--broker", ep)
    for k in range(2):
        procs.start(f"agent-{k}", "agent", "--broker", ep, "--device", "cpu")
    first = procs.start("world", "world", "--broker", ep, "--steps", "100000", "--out", str(tmp_path / "first"))
    wait_steps(tmp_path / "first", 21, first, log=lambda: procs.log("world"))
    first.send_signal(signal.SIGKILL)  # no END: the agents keep its config
    first.wait()
    second = procs.start("world-2", "world", "--broker", ep, "--steps", "200", "--deadline", GENEROUS_DEADLINE,
                         "--out", str(tmp_path / "second"))
    assert second.wait(SLOW_S) == 0, procs.log("world-2")
    s = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert s["agents_reporting"] == [0, 1] and s["deadline_misses"] == [0, 0]
    assert s["messages"]["sent"] == 400  # the broker's count, from when this run started stepping
    assert s["bits_per_frame"] is not None and s["desync"]["messages"] == 400  # the agents' own: this run's only


def test_a_world_waiting_for_agents_stops_on_sigterm(procs):
    """No agent ever joins: SIGTERM must end the wait at once (the join timeout is 60 s),
    with a plain message, not a traceback."""
    ep = procs.broker()
    world = procs.start("world", "world", "--broker", ep, "--steps", "10")
    wait_registered(ep, "world", world)  # its stop handler is set before it registers
    world.send_signal(signal.SIGTERM)
    # status 130 and the message, not the join timeout's refusal: a loaded machine only makes it slower
    assert world.wait(SLOW_S) == 130, procs.log("world")
    assert "stopped before step 0" in procs.log("world") and "Traceback" not in procs.log("world")


def test_step_0_waits_until_every_agent_is_ready(procs):
    """Two stand-in agents (real peers on the broker) join and get the config; the world
    sends no observation until both say READY, however long they take (an agent warming
    a CUDA device takes seconds, longer than a step's deadline)."""
    ep = procs.broker()
    world = procs.start("world", "world", "--broker", ep, "--steps", "3", "--deadline", "0.2")
    wait_registered(ep, "world", world)
    with Peer(ep, b"agent", b"agent-0") as a0, Peer(ep, b"agent", b"agent-1") as a1:
        def ops(got: list[bytes]) -> list[str | None]:
            return [None if protocol.is_channel_frame(b) else protocol.unpack(b)["op"] for b in got]  # None: an observation

        def from_world(seconds: float, until=lambda ops: False) -> list[bytes]:
            """What the world sent either stand-in within `seconds`, or until `until(their
            ops)` holds; they heartbeat meanwhile."""
            got, end = [], time.monotonic() + seconds
            while time.monotonic() < end and not until(ops(got)):
                for a in (a0, a1):
                    a.heartbeat_if_idle()
                    msg = a.recv(0.05)
                    if msg and msg[0] == protocol.DELIVER and msg[1] == protocol.WORLD_ID:
                        got.append(msg[2])
            return got

        for a in (a0, a1):
            a.send_to(protocol.WORLD_ID, protocol.pack({"op": lockstep.JOIN}))
        joined = ops(from_world(SLOW_S, until=lambda ops: ops.count(lockstep.CONFIG) >= 2))
        assert joined.count(lockstep.CONFIG) >= 2 and None not in joined, joined
        a0.send_to(protocol.WORLD_ID, protocol.pack({"op": lockstep.READY}))
        assert None not in ops(from_world(2.0))  # ten deadlines: still no observation
        a1.send_to(protocol.WORLD_ID, protocol.pack({"op": lockstep.READY}))
        got = from_world(SLOW_S, until=lambda ops: None in ops)
        assert None in ops(got), f"no observation {SLOW_S} s after both agents were ready: {ops(got)}"
        first = frame.unpack(next(b for b in got if protocol.is_channel_frame(b)))
        assert (first.kind, first.stamp) == (frame.Kind.OBSERVATION, 0)
    assert world.wait(SLOW_S) == 0, procs.log("world")  # no actions: every step passed its deadline


def test_a_role_with_no_broker_says_so_and_exits(procs):
    agent = procs.start("agent", "agent", "--broker", f"tcp://127.0.0.1:{free_port()}")
    assert agent.wait(SLOW_S) == 2
    out = procs.log("agent")
    assert "error: no answer from the broker" in out and "Traceback" not in out


def _processes_with(text: str) -> list[int]:
    """Live processes whose command line contains `text`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:  # gone meanwhile
            pass
    return found


@pytest.fixture
def long_up(tmp_path):
    """A `ddcl up` of 100000 steps, once it steps: (process, endpoint, out folder). Whatever
    the test leaves running is killed afterwards."""
    port, out = free_port(), tmp_path / "run"
    up = subprocess.Popen([sys.executable, "-m", "ddcl", "up", "--steps", "100000", "--port", str(port),
                           "--deadline", "3", "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wait_steps(out, 21, up)
    yield up, f"127.0.0.1:{port}", out
    for pid in [up.pid] + _processes_with(f"127.0.0.1:{port}"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_on_ddcl_up_prints_what_ran_and_leaves_no_process(long_up):
    up, endpoint, out = long_up
    up.send_signal(signal.SIGINT)  # a terminal's Ctrl-C: the children have their own process group
    stdout, _ = up.communicate(timeout=SLOW_S)
    assert up.returncode == 130, stdout
    s = json.loads((out / "summary.json").read_text())
    assert 20 < s["steps"] < 100000 and f"stopped at step {s['steps']} of 100000" in stdout
    assert s["steps"] == len((out / "metrics.jsonl").read_text().splitlines())
    assert s["messages"]["sent"] == 2 * s["steps"] and s["agents_reporting"] == [0, 1]
    assert _processes_with(endpoint) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_do_not_outlive_a_killed_ddcl_up(long_up):
    up, endpoint, out = long_up
    assert len(_processes_with(endpoint)) >= 5  # broker, sync, world, 2 agents
    up.kill()
    up.communicate()
    killed = time.monotonic()
    deadline = killed + 30
    while _processes_with(endpoint):
        assert time.monotonic() < deadline, _processes_with(endpoint)
        time.sleep(0.02)
    gone_s = time.monotonic() - killed
    # the world wrote what it could: its own figures for the steps it ran
    s = json.loads((out / "summary.json").read_text())
    assert 20 < s["steps"] < 100000 and s["steps"] == len((out / "metrics.jsonl").read_text().splitlines())
    assert s["bytes_per_step"] is None and s["success_rate"] is not None
    # the promise the docs make, checked last so that a loaded machine's slow exit is
    # reported with its figure, after everything else held
    assert gone_s < 1.0, f"the last child lived {gone_s:.2f} s after `ddcl up` was killed"


def test_a_broker_killed_under_ddcl_up_ends_the_run_with_its_reason(long_up):
    up, endpoint, out = long_up
    (broker,) = _processes_with(f"--bind\0tcp://{endpoint}")
    os.kill(broker, signal.SIGKILL)
    text, _ = up.communicate(timeout=SLOW_S)
    assert up.returncode == 1, text
    assert "[up] the broker exited during the run (killed by SIGKILL)" in text
    assert "no word from the broker" in text and "metrics.jsonl holds the steps run" in text
    assert "Traceback" not in text
    assert len((out / "metrics.jsonl").read_text().splitlines()) > 20
    deadline = time.monotonic() + SLOW_S  # the last of them may still be on its way out
    while _processes_with(endpoint):
        assert time.monotonic() < deadline, f"still alive {SLOW_S} s after `ddcl up` ended: {_processes_with(endpoint)}"
        time.sleep(0.05)


def test_ddcl_broker_stats_shows_a_live_run(long_up):
    _, endpoint, _ = long_up
    live = json.loads(ddcl("broker", "stats", "--json", "--broker", f"tcp://{endpoint}").stdout)
    assert live["steps"] > 20 and live["step"] == live["steps"] - 1
    assert live["last_step_message_bytes"]["total"] == sum(live["last_step_message_bytes"][d] for d in ("up", "down"))
    assert live["bytes_per_step"]["sum"]["total"] > 0 and live["messages"]["sent"] >= 2 * live["steps"] - 2
    text = ddcl("broker", "stats", "--broker", f"tcp://{endpoint}").stdout
    step, seen = map(int, re.search(r"at tcp://\S+: step (\d+) \((\d+) steps seen\); peers: agent-0, agent-1, "
                                    r"sync, world\n", text).groups())
    assert step >= live["step"] and seen == step + 1
    assert re.search(r"\n\|\s+sum \|\s+[\d.]+ \|\s+[\d.]+ \|\s+[\d.]+ \|\s+[1-9][\d.]* \|", text)
    assert re.search(r"\nlast step: \d+ B up, \d+ B down, [1-9]\d* B of agent messages\n", text)
    assert re.search(r"\nmessages: sent [1-9]\d*, delivered [1-9]\d*, dropped 0, rejected 0; other frames: ", text)


def test_an_agent_killed_under_ddcl_up_is_named_and_the_run_goes_on(long_up):
    up, endpoint, out = long_up
    (agent,) = _processes_with(f"tcp://{endpoint}\0--id\0agent-1")
    os.kill(agent, signal.SIGKILL)
    seen, deadline = [], time.monotonic() + SLOW_S
    while not any("[up] agent-1 exited during the run (killed by SIGKILL)" in line for line in seen):
        assert time.monotonic() < deadline and up.poll() is None, "".join(seen)
        seen.append(up.stdout.readline())  # the world's progress prints a line a second
    steps_then = len((out / "metrics.jsonl").read_text().splitlines())
    # the world steps on: one deadline (3 s) a step, each a miss of agent-1's
    wait_row(out, lambda r: r["step"] > steps_then and r["deadline_misses"][1] >= 2, up,
             "two missed deadlines of the killed agent after it was named")
    up.send_signal(signal.SIGINT)
    text, _ = up.communicate(timeout=SLOW_S)
    assert up.returncode == 130, text
    s = json.loads((out / "summary.json").read_text())
    # the misses are the killed agent's alone; the world, silent for a whole deadline each
    # step, stayed registered (given up for dead, its next observations would be lost)
    assert s["steps"] > steps_then and s["deadline_misses"][1] >= 2
    assert s["deadline_misses"][0] == 0 and s["reregistrations"] == 0, s["deadline_misses"]
    assert s["agents_reporting"] == [0]
    assert _processes_with(endpoint) == []


def test_ddcl_up_refuses_a_checkpoint_for_another_env_before_starting(tmp_path):
    r = ddcl("up", "--env", "goal", "--steps", "5", "--checkpoint", str(ROOT / "deploy" / "checkpoint" / "tj-easy.pt"),
             "--out", str(tmp_path / "run"), timeout=120)
    assert r.returncode == 2
    assert "is for env 'tj-easy', not 'goal'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # nothing started


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_benchmarks_children_die_with_it():
    """What benchmarks start (their `ddcl up`) goes when the benchmark is killed."""
    code = ("import os, subprocess, sys, time; from agents.launcher import dies_with; "
            "p = subprocess.Popen(['sleep', '600'], preexec_fn=dies_with(os.getpid())); "
            "print(p.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + SLOW_S
    while os.path.exists(f"/proc/{child}") and open(f"/proc/{child}/stat").read().split()[2] != "Z":
        assert time.monotonic() < deadline, "the child outlived its killed parent"
        time.sleep(0.05)
