"""Child processes that never outlive their parent and stop in order, and the loopback
ports they meet on, and the stop signal a role polls: what `ddcl up` (ddcl/up.py), `ddcl up
--train` (agents/learn.py), the benches and the tests start and stop roles with."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 60.0, alive=lambda: True) -> None:
    """Until something accepts connections on the loopback port (or raise TimeoutError)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def ddcl(*args: str) -> list[str]:
    """A role's command line: `ddcl ...` in this interpreter (the package above runs it)."""
    return [sys.executable, "-m", "ddcl", *args]


def stop_flag():
    """SIGINT/SIGTERM set a flag the role's loop polls, so every socket closes cleanly; a
    second one stops at once (KeyboardInterrupt: status 130), for a user who will not wait
    for the clean stop (a training's final evaluation, say)."""
    flag = []

    def handler(signum, _frame):
        flag.append(signum)
        if len(flag) > 1:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return lambda: bool(flag)


PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform == "linux" else None


def dies_with(parent: int):
    """A child's preexec_fn (`parent`: the starting process's pid, taken before the fork):
    on Linux, SIGTERM when that process dies, however it dies."""
    def setup() -> None:
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # it died before the line above
                os.kill(os.getpid(), signal.SIGTERM)
    return setup


def _child_setup(parent: int):
    """Runs in each role before exec. Its own process group: a terminal's Ctrl-C reaches
    only `ddcl up`, which stops the world first so that it can still write its summary.
    No role outlives `ddcl up`."""
    def setup() -> None:
        os.setpgid(0, 0)
        dies_with(parent)()
    return setup


class ProcessGroup:
    """Children that stop in order: SIGTERM, a grace period, then SIGKILL."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], progress: bool = False) -> subprocess.Popen:
        """Output to logs/<name>.log; with `progress`, stderr (live progress) to the terminal."""
        log = open(self.logs / f"{name}.log", "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=None if progress else subprocess.STDOUT,
                             preexec_fn=_child_setup(os.getpid()))
        self.procs.append((name, p))
        return p

    def stop(self, first: tuple[str, ...] = (), grace_s: float = 5.0) -> None:
        """The children named in `first`, then the others together."""
        for batch in ([p for n, p in self.procs if n in first], [p for n, p in self.procs if n not in first]):
            for p in batch:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            wait_or_kill(batch, grace_s)


def wait_or_kill(procs: list[subprocess.Popen], grace_s: float) -> list[subprocess.Popen]:
    """Waits up to grace_s for procs together, then kills those still running: none
    outlives its parent. Returns the killed ones."""
    deadline = time.monotonic() + grace_s
    killed = []
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            killed.append(p)
    return killed


def exit_reason(rc: int) -> str:
    return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"status {rc}"


def last_words(log: Path) -> str:
    """': <the log's last line>', to name a child's reason for dying; '' for an empty log."""
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return f": {lines[-1]}" if lines else ""


def wait_world(world: subprocess.Popen, services: dict[str, subprocess.Popen], agents: dict[str, subprocess.Popen],
               logs: Path) -> int:
    """The world's exit status. A service that dies under it is named at once (the world
    ends the run itself once it misses the broker), and so is an agent that dies (its
    steps then miss their deadline; agents exit 0 only once the world ends the run)."""
    gone: set[str] = set()
    while (rc := world.poll()) is None:
        for name, p in {**services, **agents}.items():
            if name in gone or (code := p.poll()) is None or (name in agents and code == 0):
                continue
            gone.add(name)
            label = {"broker": "the broker", "sync": "the sync service"}.get(name, name)
            why = last_words(logs / f"{name}.log") if code > 0 else ""  # an error exit's last line says why
            print(f"[up] {label} exited during the run ({exit_reason(code)}){why}", file=sys.stderr, flush=True)
        time.sleep(0.1)
    return rc


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
