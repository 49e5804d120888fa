"""Agent messages: a registered agent's DDCL message, copied to every other agent.

Link faults act on each copy: the fault table decides its fate (broker/faults.py), the
link-fault line holds what is delayed or reordered (broker/linkline.py). With no fault
in force, a bundler may gather a step's messages into one send per recipient
(broker/bundle.py). Agent messages keep the identity sent = delivered + dropped +
rejected at every moment, so each is counted as sent once it is on its way.
"""

from __future__ import annotations

from channel import ChannelError, frame

from .bundle import Bundler, Spoken
from .faults import flipped
from .linkline import LinkLine
from .registry import PeerInfo


class Relay:
    def __init__(self, broker, bundle_wait_s: float | None):
        self.broker = broker
        self.line = LinkLine(broker.faults.rng)
        # how long a partial bundle waits; None: every message forwarded on its own
        self.bundler = Bundler(bundle_wait_s) if bundle_wait_s is not None else None

    def next_due(self) -> float | None:
        """When a held copy or a partial bundle must go out (time.monotonic())."""
        dues = [d for d in (self.line.next_due(), self.bundler and self.bundler.due()) if d is not None]
        return min(dues) if dues else None

    # -- the verb -------------------------------------------------------------------------

    def on_agent_message(self, routing: bytes, sender: PeerInfo | None, parts: list[bytes]) -> None:
        """Only a registered agent's well-formed message counts as one; anything else is
        refused on its own line."""
        f = self.checked(routing, sender, parts)
        if f is None:
            return
        header = len(parts[0]) - len(f.payload)
        if self.bundler is not None and not self.broker.faults.faults:  # faults act on each copy: none bundled
            self.bundle(sender, parts, f, header)
        else:
            self.broadcast(sender, parts, f, header)

    def checked(self, routing: bytes, sender: PeerInfo | None, parts: list[bytes]) -> frame.Frame | None:
        broker = self.broker
        if sender is None:
            broker.refuse_unknown(routing, parts)
            return None
        if sender.index is None:  # the world or a tool sent a bare channel frame
            broker.break_rule(routing, "malformed", parts, b"agent messages come from registered agents")
            return None
        try:
            f = frame.unpack(parts[0])
            if f.kind != frame.Kind.MESSAGE:
                raise ChannelError("not a message frame")
            if f.sender != sender.index:
                raise ChannelError("frame sender does not match the registered id")
        except ChannelError:
            broker.acct.messages["sent"] += 1
            broker.break_rule(routing, "malformed", parts, None, agent_message=True)
            return None
        return f

    # -- one by one -------------------------------------------------------------------------

    def broadcast(self, sender: PeerInfo, parts: list[bytes], f: frame.Frame, header: int) -> None:
        acct, faults = self.broker.acct, self.broker.faults
        acct.messages["sent"] += 1
        recipients = [p for p in self.broker.registry.agents() if p is not sender]
        ok = bool(recipients)
        for peer in recipients:
            plan = faults.link_plan(sender.link, peer.link, len(parts[0]), len(f.payload))
            if plan.copies == 0:
                ok = False
                acct.other["fault_dropped"] = acct.other.get("fault_dropped", 0) + 1
            sent = parts if plan.flip is None else [flipped(parts[0], 8 * header + plan.flip)]
            for _ in range(plan.copies):
                if not self.route(peer, sent, len(f.payload), header, f.count, plan.delay, sender.link):
                    ok = False
        # counted once it is on its way: the copies are the step's critical path, the count is not
        acct.record("up", "message", sender.link, parts, len(f.payload))
        acct.record_float32("up", header, f.count)
        acct.messages["delivered" if ok else "dropped"] += 1

    def route(self, peer: PeerInfo, parts, payload: int, header: int, count: int, delay: float, src: str) -> bool:
        """An agent-message copy: now, after a delay, or through a reorder window."""
        window = self.broker.faults.reorder_window(src, peer.link)
        if delay > 0 or window > 1:
            self.line.hold((src, peer.link), delay, window, peer.id, parts, payload, header, count)
            return True
        return self.deliver_copy(peer, parts, payload, header, count)

    def deliver_copy(self, peer: PeerInfo, parts, payload: int, header: int, count: int) -> bool:
        if self.broker.deliver(peer, parts, "message", payload):
            self.broker.acct.record_float32("down", header, count)
            return True
        return False

    def release_due(self) -> None:
        """Held copies whose time has come, and a bundle that waited long enough, go out."""
        for held in self.line.due():
            peer = self.broker.peers.get(held.dest)
            if peer is None or not self.deliver_copy(peer, held.parts, held.payload, held.header, held.count):
                self.broker.acct.other["dropped"] += 1
        if self.bundler and (bundle := self.bundler.overdue()):
            self.send_bundle(bundle)

    # -- bundled ------------------------------------------------------------------------------

    def bundle(self, sender: PeerInfo, parts: list[bytes], f: frame.Frame, header: int) -> None:
        acct = self.broker.acct
        acct.record("up", "message", sender.link, parts, len(f.payload))
        acct.record_float32("up", header, f.count)
        for bundle in self.bundler.add(Spoken(sender.id, parts[0], len(f.payload), header, f.count)):
            self.send_bundle(bundle)

    def new_step(self) -> None:
        """The world marked a step: the last step's bundles go out as they are."""
        if self.bundler:
            for bundle in self.bundler.new_step():
                self.send_bundle(bundle)

    def send_bundle(self, bundle: list[Spoken]) -> None:
        """Each agent gets one message of the bundle's frames but its own; each frame is
        accounted as the copy it is, and each message as delivered once every recipient
        has its copy."""
        acct = self.broker.acct
        failed: set[bytes] = set()
        recipients = self.broker.registry.agents()
        for peer in recipients:
            mine = [s for s in bundle if s.sender != peer.id]
            if not mine:
                continue
            if self.broker.deliver(peer, [s.data for s in mine], "message", sum(s.payload for s in mine)):
                for s in mine:
                    acct.record_float32("down", s.header, s.count)
            else:
                failed.update(s.sender for s in mine)
        for s in bundle:  # a held message counts as sent once it goes: the identity holds at every moment
            heard = any(p.id != s.sender for p in recipients)
            acct.messages["sent"] += 1
            acct.messages["delivered" if heard and s.sender not in failed else "dropped"] += 1
