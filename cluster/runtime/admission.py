"""What happens to a data-plane message that fails a check: it is dropped, never raised, and counted under a named
reason against the connection it arrived on (the authenticated user, not the sender its header claims).

A bad packet must not end a training run: the receiving node stays up and its step goes on when the legitimate
message arrives. Memory stays bounded whatever arrives: counters per (connection, reason) over a fixed set of
reasons and admitted users, plus the first `SAMPLES` drops kept whole for the report. `stale` (an aborted phase's
message arriving late) is normal traffic: counted, but not a violation (cluster/locality.py).
"""
from __future__ import annotations

from cluster.messages import Dropped

SAMPLES = 20
REASONS = {
    "undecodable": "the header is not msgpack within the size limits",
    "malformed": "the header is not [src, dst, kind, phase, serial, step, dtype, shape] with those types",
    "frames": "not exactly two frames (header, payload)",
    "control": "an abort or heartbeat on a connection other than the coordinator's",
    "not_here": "for a node this host does not run",
    "forged": "claims a sender that the connection's host does not run",
    "not_a_port": "not a declared in-port (src, kind) of its destination: not a graph neighbour",
    "kind": "a port kind its phase does not carry",
    "phase": "a phase name other than its serial's",
    "dtype": "a dtype other than its phase's",
    "shape": "a shape other than (rows of the phase, width of the port)",
    "size": "payload bytes do not match dtype and shape, or exceed the bound",
    "duplicate": "a (port, serial, step) already buffered",
    "replayed": "a (serial, step) its port has already delivered",
    "future": "a serial or step beyond what a neighbour in lockstep can reach",
    "full": "its port's buffer (or the host's queue) is full",
    "exchange": "a per-message data message to a host that exchanges frames, or a frame to one that does not",
    "stale": "an older phase's (an aborted one's): normal traffic, not a violation",
}
NOT_VIOLATIONS = ("stale",)


class Drops:
    """Dropped messages: a count per (user, reason) and the first SAMPLES drops as {user, reason, why}."""

    def __init__(self):
        self.counts = {}
        self.samples = []
        self.last = ""

    def add(self, user: str, reason: str, why: str) -> None:
        assert reason in REASONS, reason
        key = (str(user), reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.last = why
        if len(self.samples) < SAMPLES:
            self.samples.append({"user": str(user), "reason": reason, "why": why})

    def dropped(self, user: str, err: Dropped) -> None:
        self.add(user, err.reason, str(err))

    def total(self, reason: str | None = None) -> int:
        return sum(n for (_, r), n in self.counts.items() if reason is None or r == reason)

    def export(self) -> list:
        """[{user, reason, count, why}]: one entry per (user, reason), `why` its first sample's text if kept."""
        first = {}
        for s in self.samples:
            first.setdefault((s["user"], s["reason"]), s["why"])
        return [{"user": u, "reason": r, "count": n, "why": first.get((u, r), REASONS[r])}
                for (u, r), n in sorted(self.counts.items())]

    def clear(self) -> None:
        self.counts.clear()
        self.samples.clear()
        self.last = ""
