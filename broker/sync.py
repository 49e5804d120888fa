"""The PRNG synchronization service: owns the (epoch, seed) schedule and keeps clocks honest.

Epoch e covers world steps [e*E, (e+1)*E) with a seed derived from (run seed, e); every
beacon (each K world steps, broadcast through the broker) carries the reference step and
time, the current epoch and the next one, so a rotation is announced up to K steps ahead
and agents switch at the announced step. An agent that asks (`{"op": "epoch"}`: at start,
after a restart) gets the same information at once. The world's step reaches the service
as STEP messages the broker relays from the world's step boundaries: only every
gcd(K, E) steps, as the service asks, since waking a process every step slows the
lockstep.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from . import protocol
from .peer import Peer

log = logging.getLogger("ddcl.sync")


def epoch_seed(run_seed: int, base_seed: int, epoch: int) -> int:
    """24-bit seed of an epoch: epoch 0 uses base_seed, later ones a hash of all three."""
    if epoch == 0:
        return base_seed & 0xFFFFFF
    h = hashlib.blake2b(f"{run_seed}:{base_seed}:{epoch}".encode(), digest_size=3).digest()
    return int.from_bytes(h, "big")


class Schedule:
    def __init__(self, run_seed: int, base_seed: int, epoch_steps: int):
        self.run_seed, self.base_seed, self.epoch_steps = run_seed, base_seed, epoch_steps

    def epoch_at(self, step: int) -> int:
        return max(step, 0) // self.epoch_steps if self.epoch_steps else 0

    def announcement(self, step: int) -> dict:
        """The current and the next epoch as [start step, seed] pairs."""
        e = self.epoch_at(step)
        epochs = [[e * self.epoch_steps, epoch_seed(self.run_seed, self.base_seed, e)]]
        if self.epoch_steps:
            epochs.append([(e + 1) * self.epoch_steps, epoch_seed(self.run_seed, self.base_seed, e + 1)])
        return {"run_seed": self.run_seed, "epoch": e, "epochs": epochs}


def serve(endpoint: str, run_seed: int, base_seed: int, epoch_steps: int = 0, beacon_every: int = 0,
          should_stop=lambda: False, bus_url: str = "embedded", run: str = "default", curve=None) -> None:
    from .bus import Publisher

    schedule = Schedule(run_seed, base_seed, epoch_steps)
    step = 0
    with Peer(endpoint, b"sync", protocol.SYNC_ID, curve=curve) as peer:
        # only the steps that matter: beacon times and epoch boundaries (multiples of the gcd)
        relay = [protocol.CONTROL, protocol.pack({"op": protocol.STEP_RELAY, "every": math.gcd(beacon_every, epoch_steps)})]
        peer.request(relay, protocol.CONTROL_REPLY)
        bus = Publisher(bus_url, run, "sync", peer)

        def publish_epoch(at: int) -> None:
            bus.publish("epoch", protocol.pack(schedule.announcement(at)), retain=True)

        publish_epoch(0)
        log.info("sync service up: run seed %d, epoch seed %d, E=%d, beacons every %d", run_seed, base_seed,
                 epoch_steps, beacon_every)

        def taken_back() -> None:  # a restarted broker knows none of this
            peer.send_parts(relay)  # its reply goes unread
            publish_epoch(step)

        peer.on_reregistered = taken_back
        try:
            while not should_stop():
                msg = peer.recv(0.2)
                if not msg:
                    continue
                if msg[0] == protocol.STEP and len(msg) == 2:
                    new = int(protocol.unpack(msg[1]))
                    if schedule.epoch_at(new) != schedule.epoch_at(step):
                        publish_epoch(new)
                    step = new
                    if beacon_every and step % beacon_every == 0:
                        beacon = {"op": protocol.BEACON, "ref_step": step, "ref_time": time.time(),
                                  **schedule.announcement(step)}
                        peer.send_to(protocol.ALL_AGENTS, protocol.pack(beacon))
                elif msg[0] == protocol.DELIVER and len(msg) == 3:
                    try:
                        req = protocol.unpack(msg[2])
                    except Exception:  # msgpack raises several types on garbage
                        continue
                    if isinstance(req, dict) and req.get("op") == protocol.EPOCH:
                        peer.send_to(msg[1], protocol.pack({"op": protocol.EPOCH, "ref_step": step, **schedule.announcement(step)}))
        finally:
            bus.close()


def fetch_epoch(peer: Peer, timeout_s: float = 60.0) -> dict:
    """Ask the sync service for the current epochs (retrying: it may start later, and a
    loaded machine takes a while to import torch in every process at once)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        peer.send_to(protocol.SYNC_ID, protocol.pack({"op": protocol.EPOCH}))
        until = time.monotonic() + 1.0
        while (left := until - time.monotonic()) > 0:
            msg = peer.recv(left)
            if msg and msg[0] == protocol.DELIVER and msg[1] == protocol.SYNC_ID:
                reply = protocol.unpack(msg[2])
                if reply.get("op") == protocol.EPOCH:
                    return reply
    raise TimeoutError(f"no answer from the sync service in {timeout_s}s")
