"""The operator's verbs: STATS, and CONTROL requests (protocol.CONTROL_OPS) that add,
clear and list faults or set the step relay, whether a tool sends them or a faults file
schedules them by world step. A failed request changes nothing. Every fault change is
logged, appended to the run's fault log and published on the bus, so a run can be
watched while it goes and replayed after.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .faults import CLOCK_KINDS, FaultError
from .faults_file import Scheduled
from .protocol import (BROKER_ID, CLOCK, CONTROL_OPS, CONTROL_REPLY, DELIVER, FAULT_ADD, FAULT_CLEAR, FAULT_LIST,
                       STATS_REPLY, STEP_RELAY, clip, pack, unpack)
from .registry import PeerInfo

log = logging.getLogger("ddcl.broker")


class Control:
    def __init__(self, broker, log_dir: Path | None):
        self.broker = broker
        self.scheduled: list[Scheduled] = []  # from a faults file, in step order
        self.fault_log = open(Path(log_dir) / "faults.jsonl", "a") if log_dir else None
        self.ops = {FAULT_ADD: self.fault_add, FAULT_CLEAR: self.fault_clear, FAULT_LIST: self.fault_list,
                    STEP_RELAY: self.step_relay}

    def close(self) -> None:
        if self.fault_log:
            self.fault_log.close()

    # -- verbs: open to every connection, tools register nothing ----------------------

    def on_stats(self, routing: bytes, peer: PeerInfo | None, parts: list[bytes]) -> None:
        broker = self.broker
        broker.acct.record("up", "control", peer.link if peer else "?", parts)
        broker.reply(routing, "?", [STATS_REPLY, pack(broker.stats())])

    def on_control(self, routing: bytes, peer: PeerInfo | None, parts: list[bytes]) -> None:
        broker = self.broker
        broker.acct.record("up", "control", peer.link if peer else "?", parts)
        broker.reply(routing, "?", [CONTROL_REPLY, pack(self.request(parts[1]))])

    def request(self, body: bytes) -> dict:
        """One CONTROL request's reply, {"ok": bool, ...}."""
        try:
            req = unpack(body)
        except Exception:  # msgpack raises several unrelated types on garbage
            return {"ok": False, "error": "malformed control message"}
        if not isinstance(req, dict):
            return {"ok": False, "error": "a control request is a map with an 'op'"}
        op = req.get("op")
        handle = self.ops.get(op) if isinstance(op, str) else None  # a list or map is no key
        if handle is None:
            return {"ok": False, "error": f"unknown control op {clip(repr(op))}; use {', '.join(CONTROL_OPS)}"}
        try:
            return handle(req)
        except FaultError as e:
            return {"ok": False, "error": str(e)}

    # -- ops ----------------------------------------------------------------------------

    def fault_add(self, req: dict) -> dict:
        broker = self.broker
        fault = broker.faults.validate(req, {p.link for p in broker.registry.agents()})
        broker.faults.add(fault, broker.acct.step)
        self.fault_changed("add", [fault])
        return {"ok": True, "fault": fault.as_dict()}

    def fault_clear(self, req: dict) -> dict:
        fid = req.get("id")
        if fid is not None and (isinstance(fid, bool) or not isinstance(fid, int)):
            raise FaultError(f"fault id must be an integer, got {clip(repr(fid))}")
        gone = self.broker.faults.clear(fid)
        self.fault_changed("clear", gone)
        return {"ok": True, "cleared": [f.as_dict() for f in gone]}

    def fault_list(self, _req: dict) -> dict:
        return {"ok": True, "faults": self.broker.faults.listing(), "step": self.broker.acct.step}

    def step_relay(self, req: dict) -> dict:
        every = req.get("every")
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise FaultError(f"step-relay needs every >= 0, got {clip(repr(every))}")
        self.broker.relay_every = every
        return {"ok": True, "every": every}

    # -- faults scheduled by world step ---------------------------------------------------

    def schedule(self, entries: list[Scheduled]) -> None:
        self.scheduled = sorted(entries, key=lambda e: e.step)

    def run_scheduled(self, step: int) -> None:
        """The requests due by `step`, made as if a tool had sent them."""
        while self.scheduled and self.scheduled[0].step <= step:
            req = self.scheduled.pop(0).request
            reply = self.request(pack(req))
            if not reply.get("ok"):
                log.warning("scheduled fault %s at step %d failed: %s", req, step, reply.get("error"))

    # -- what a fault change sets off ----------------------------------------------------

    def fault_changed(self, action: str, faults) -> None:
        for f in faults:
            log.info("fault %s: %s", action, f.as_dict())
            self.write_log(action, f)
            if f.kind in CLOCK_KINDS:
                self.push_clock(f.target)
        if any(f.kind == "reorder" for f in faults) and action == "clear":
            self.broker.relay.line.flush_windows()
        self.broker.telemetry.publish_faults()

    def write_log(self, action: str, fault) -> None:
        if self.fault_log:
            self.fault_log.write(json.dumps({"action": action, "step": self.broker.acct.step, "time": time.time(),
                                             "fault": fault.as_dict()}) + "\n")
            self.fault_log.flush()

    def push_clock(self, agent: str) -> None:
        """An agent's clock faults, which live in the agent: sent on every change, and
        again when it registers after a restart."""
        broker = self.broker
        peer = broker.peers.get(agent.encode())
        if peer:
            body = pack({"op": CLOCK, **broker.faults.clock_of(agent)})
            broker.deliver(peer, [DELIVER, BROKER_ID, body], "control", 0)
