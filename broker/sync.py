"""The PRNG synchronization service (minimal form): owns the run seed and the epoch
seed, and answers every agent's request for them. Later: rotation, beacons, clocks."""

from __future__ import annotations

import logging
import time

from . import protocol as P
from .peer import Peer

log = logging.getLogger("ddcl.sync")


def serve(endpoint: str, run_seed: int, epoch_seed: int, should_stop=lambda: False) -> None:
    with Peer(endpoint, b"sync", P.SYNC_ID) as peer:
        log.info("sync service up: run seed %d, epoch seed %d", run_seed, epoch_seed)
        while not should_stop():
            peer.heartbeat_if_idle()
            msg = peer.recv(0.2)
            if not msg or msg[0] != P.DELIVER or len(msg) != 3:
                continue
            try:
                req = P.unpack(msg[2])
            except Exception:  # msgpack raises several types on garbage
                continue
            if isinstance(req, dict) and req.get("op") == "epoch":
                peer.send_to(msg[1], P.pack({"op": "epoch", "epoch": 0, "run_seed": run_seed, "epoch_seed": epoch_seed, "switch_step": 0}))


def fetch_epoch(peer: Peer, timeout_s: float = 10.0) -> dict:
    """Ask the sync service for the current (run seed, epoch seed)."""

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        peer.send_to(P.SYNC_ID, P.pack({"op": "epoch"}))
        until = time.monotonic() + 1.0
        while (left := until - time.monotonic()) > 0:
            msg = peer.recv(left)
            if msg and msg[0] == P.DELIVER and msg[1] == P.SYNC_ID:
                reply = P.unpack(msg[2])
                if reply.get("op") == "epoch":
                    return reply
    raise TimeoutError(f"no answer from the sync service in {timeout_s}s")
