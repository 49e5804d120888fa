"""Faults during networked training, with real processes: a learner killed (SIGKILL) and
started again with its id, and a broker killed and started again on its port, each in
the middle of a run. The run finishes; the update under way is redone, never applied by
some parties and not others (each learner's Adam counts exactly the run's updates); the
checkpoint loads in `ddcl evaluate` and `ddcl up --checkpoint`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


from agents.launcher import free_port, wait_port
from agents.train import evaluate_run

# goal, 2 learners, small: a few hundred updates of 5 steps take seconds, so a kill after
# KILL_AT of them lands mid-run
CONFIG = dict(env="goal", msg_dim=1, codec="range", rate_loss="entropy", batch=32, rollout=5, updates=60,
              eval_every=1000, seed=3, device="cpu")
KILL_AT = 15  # updates the world has logged before the fault
WAIT_S = 150  # process starts import torch: slow on a loaded 2-core machine


class Run:
    """A broker, the learning world and two learners, each started alone (conftest's Procs)."""

    def __init__(self, procs):
        self.procs, self.tmp, self.out = procs, procs.tmp, procs.tmp / "run"
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.broker = self.start_broker()
        self.world = procs.start("world", "learn", "world", "--broker", self.endpoint, "--out", str(self.out),
                                 "--config", json.dumps(CONFIG), "--quiet")
        self.learners = {k: self.learner(k) for k in range(2)}

    def start_broker(self) -> subprocess.Popen:
        broker = self.procs.start("broker", "broker", "serve", "--bind", self.endpoint, "--heartbeat", "10")
        wait_port(self.port, alive=lambda: broker.poll() is None)
        return broker

    def learner(self, k: int) -> subprocess.Popen:
        return self.procs.start(f"agent-{k}", "learn", "learner", "--broker", self.endpoint, "--id", f"agent-{k}", "--device", "cpu",
                                "--state-dir", str(self.out / "learners"))

    def updates(self) -> list[dict]:
        path = self.out / "updates.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]

    def wait_updates(self, n: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while len(self.updates()) < n:
            assert self.world.poll() is None, self.logs()
            assert time.monotonic() < deadline, f"no {n} updates in {WAIT_S} s\n{self.logs()}"
            time.sleep(0.05)

    def finish(self) -> int:
        try:
            return self.world.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not finish\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.tmp.glob("*.log")))


def _check_finished(run: Run) -> dict:
    assert run.finish() == 0, run.logs()
    s = json.loads((run.out / "summary.json").read_text())
    assert s["updates_done"] == CONFIG["updates"] and s["networked"]["rollbacks"] >= 1
    # the voided update is logged once its redo ends (and twice where the first try got that far)
    assert sorted(set(r["update"] for r in run.updates())) == list(range(1, CONFIG["updates"] + 1))
    # every learner's last saved state took exactly the run's Adam steps: none applied the
    # voided update and then its redo, none missed one
    for k in range(2):
        state = torch.load(run.out / "learners" / f"agent-{k}-update-{CONFIG['updates']}.pt", weights_only=True)
        steps = {int(v["step"]) for v in state["opt"]["state"].values()}
        assert steps == {CONFIG["updates"]}, (k, steps)
    return s


def _loads_in_up(run: Run) -> None:
    up = subprocess.run([sys.executable, "-m", "ddcl", "up", "--checkpoint", str(run.out / "checkpoint.pt"),
                         "--steps", "10", "--batch", "4", "--codec", "range", "--out", str(run.tmp / "up")],
                        capture_output=True, text=True, timeout=WAIT_S)
    assert up.returncode == 0, up.stderr[-3000:]
    assert json.loads((run.tmp / "up" / "summary.json").read_text())["steps"] == 10


def test_a_killed_learner_restarted_with_its_id_resumes_and_the_run_finishes(procs):
    run = Run(procs)
    run.wait_updates(KILL_AT)
    run.learners[1].send_signal(signal.SIGKILL)
    run.learners[1].wait(10)
    run.learners[1] = run.learner(1)
    s = _check_finished(run)
    # `ddcl evaluate`'s path: the run's own held-out figures again
    assert evaluate_run(run.out, device="cpu")["final"]["success_rate"] == s["final"]["success_rate"]


def test_a_broker_restarted_mid_update_is_survived(procs):
    run = Run(procs)
    run.wait_updates(KILL_AT)
    run.broker.send_signal(signal.SIGKILL)
    run.broker.wait(10)
    run.broker = run.start_broker()
    _check_finished(run)
    _loads_in_up(run)
