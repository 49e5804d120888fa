"""CURVE: with keys configured, only authorized clients get anything through."""

from __future__ import annotations

import pytest
import zmq
import zmq.auth

from broker import protocol
from broker.curve import Curve, generate
from broker.peer import BrokerError, Peer
from tests.conftest import ROOT, free_port, wait_port


def test_only_authorized_keys_get_through(procs, tmp_path):
    keys = tmp_path / "keys"
    generate(keys)
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    procs.start("broker", "broker", "serve", "--bind", ep, "--keys", str(keys))
    wait_port(port)
    with Peer(ep, b"agent", curve=Curve(keys)) as ok:
        assert ok.id == b"agent-0"
    with Peer(ep, b"cli", curve=Curve(keys)) as cli:
        assert cli.stats()["peers"] == {}

    (tmp_path / "rogue").mkdir()
    _, rogue = zmq.auth.create_certificates(tmp_path / "rogue", "client")  # well-formed, never authorized
    with pytest.raises(BrokerError, match="no answer"):
        Peer(ep, b"agent", timeout_s=1.5, curve=Curve(keys, client_secret=rogue))

    plain = zmq.Context.instance().socket(zmq.DEALER)  # no CURVE at all
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(ep)
    plain.send_multipart([protocol.REGISTER, b"agent", b""])
    assert plain.poll(1500) == 0
    plain.close()
    with Peer(ep, b"cli", curve=Curve(keys)) as cli:
        assert cli.stats()["peers"] == {}  # neither intruder registered


def test_ddcl_up_runs_with_keys(tmp_path):
    import json
    import os
    import subprocess
    import sys

    keys = tmp_path / "keys"
    r = subprocess.run([sys.executable, "-m", "ddcl", "keys", "gen", str(keys)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and (keys / "server.key_secret").exists()
    r = subprocess.run([sys.executable, "-m", "ddcl", "up", "--steps", "30", "--keys", str(keys), "--out", str(tmp_path / "run")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["messages"]["delivered"] == 60
