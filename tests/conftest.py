"""Fixtures that start real processes (broker, sync, world, agents) and always stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agents.launcher import free_port, wait_port  # noqa: F401  (the tests use the launcher's)
from channel import load_kernels

ROOT = Path(__file__).resolve().parents[1]

# The devices a test runs on: the CPU always, CUDA where present (not a skip where absent:
# the CPU case is the test's coverage there). `pytest -k cuda` runs the CUDA cases alone.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Here, not mid-test: a cold numba cache costs seconds, and peers of a test that
# compiled while they waited would miss their heartbeats.
load_kernels()


def stats(endpoint: str) -> dict:
    """A running broker's live figures, asked as the CLI asks."""
    from broker.peer import Peer

    with Peer(endpoint, b"cli") as p:
        return p.stats()


# How long a wait on something that will happen (a process starting, a run stepping, a
# message arriving) may take before the test fails saying what never came. Generous: on a
# quiet machine each takes a second or two, but beside other test workers and CPU hogs on
# two cores, five processes importing torch took minutes. A wait that succeeds returns at
# once, so only a test that fails pays the whole of it.
SLOW_S = 240


def ddcl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """One `ddcl` command run to its end, output captured (`timeout` only guards a hang)."""
    return subprocess.run([sys.executable, "-m", "ddcl", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def wait_registered(endpoint: str, peer: str, proc: subprocess.Popen, timeout_s: float = SLOW_S) -> None:
    """Until `peer` has registered with the broker (`proc` must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while peer not in stats(endpoint)["peers"]:
        assert time.monotonic() < deadline and proc.poll() is None, f"{peer} never registered"
        time.sleep(0.1)


def _complete_lines(path: Path) -> list[str]:
    """The file's lines that end in a newline: a writer may be midway through the last."""
    if not path.exists():
        return []
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


def steps_done(run: Path) -> int:
    return len(_complete_lines(run / "metrics.jsonl"))


def wait_steps(run: Path, n: int, proc: subprocess.Popen, timeout_s: float = SLOW_S, log=lambda: "") -> None:
    """Until the run in folder `run` has n steps in its metrics; a run that died fails at
    once, and so does one that made no step for `timeout_s` (its processes' start-up
    included: beside other test workers on two cores that took minutes)."""
    last, deadline = -1, 0.0
    while (done := steps_done(run)) < n:
        if proc.poll() is not None:  # its last metrics may have landed since the check above
            assert steps_done(run) >= n, f"the run exited ({proc.returncode}) at {steps_done(run)} steps\n{log()}"
            return
        if done != last:
            last, deadline = done, time.monotonic() + timeout_s
        assert time.monotonic() < deadline, f"run stuck at {done} steps for {timeout_s:.0f} s\n{log()}"
        time.sleep(0.05)


def metrics_rows(run: Path) -> list[dict]:
    import json

    return [json.loads(x) for x in _complete_lines(run / "metrics.jsonl")]


def wait_row(run: Path, ready, proc: subprocess.Popen, what: str, timeout_s: float = SLOW_S, log=lambda: "") -> dict:
    """The first metrics row of the run in `run` for which ready(row) holds, once written;
    fails saying `what` never happened if the run ends or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = next((r for r in metrics_rows(run) if ready(r)), None)
        if row is not None:
            return row
        rows = metrics_rows(run)
        assert proc.poll() is None, f"the run exited ({proc.returncode}) before {what}\n{log()}"
        assert time.monotonic() < deadline, (f"{what} never happened in {timeout_s:.0f} s; last row: "
                                             f"{rows[-1] if rows else None}\n{log()}")
        time.sleep(0.05)


def until(ep: str, ready, timeout_s: float = SLOW_S) -> dict:
    """The broker's stats once ready(stats) holds: another connection's messages may
    still be on their way when a test asks, and a loaded broker may be slow to act."""
    deadline = time.monotonic() + timeout_s
    while not ready(s := stats(ep)):
        assert time.monotonic() < deadline, f"the broker never got there in {timeout_s:.0f} s; its stats: {s}"
        time.sleep(0.05)
    return s


class Procs:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str, env_extra: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "a")
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **(env_extra or {}))
        p = subprocess.Popen([sys.executable, "-m", "ddcl", *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def wait_log(self, name: str, text: str, timeout_s: float = SLOW_S) -> None:
        """Until process `name` has logged `text`."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log(name):
            assert self.procs[name].poll() is None or text in self.log(name), \
                f"{name} exited ({self.procs[name].returncode}) without logging {text!r}:\n{self.log(name)}"
            assert time.monotonic() < deadline, f"{name} never logged {text!r} in {timeout_s:.0f} s:\n{self.log(name)}"
            time.sleep(0.05)

    def broker(self, port: int | None = None) -> str:
        port = port or free_port()
        self.start("broker", "broker", "serve", "--bind", f"tcp://127.0.0.1:{port}")
        wait_port(port)
        return f"tcp://127.0.0.1:{port}"

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def procs(tmp_path):
    group = Procs(tmp_path)
    yield group
    group.stop_all()


def mosquitto_binary() -> str | None:
    import shutil

    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen, str]:
    """A private Mosquitto on a free port, and its URL: the real MQTT broker (scripts/setup
    installs it)."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.fail("mosquitto is not installed: run scripts/setup (apt package 'mosquitto')")
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    p = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p, f"mqtt://127.0.0.1:{port}"


@pytest.fixture
def mosquitto(tmp_path):
    p, url = start_mosquitto(tmp_path)
    try:
        yield url
    finally:
        p.terminate()
        p.wait(5)


@pytest.fixture
def scripted_success():
    """Success rate of a hand-written policy (env -> actions) over `episodes` episode lengths
    of a batched env."""

    def run(env, policy, episodes: int) -> float:
        env.reset()
        wins = done_count = 0
        for _ in range(episodes * env.max_steps):
            _, _, done, ok = env.step(policy(env))
            wins, done_count = wins + ok.sum(), done_count + done.sum()
        return wins / done_count

    return run
