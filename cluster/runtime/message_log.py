"""What a receiver saw: every delivered message (src, dst, kind, phase, step, bytes), or counters per
(src, dst, kind, phase); the messages it dropped, counted per (connection, reason) (cluster/runtime/admission.py).

Data-plane kinds are the port kinds (`a`, ...); what the coordinator delivers is logged with src "coordinator"
and kind `control` (a call: phase trigger, set_params, update, ...), `boundary` (x, y) or `global` (beta, the
batch size, the protocol and its settings), named by the call's own structure, never by node code.
"""
from __future__ import annotations

from collections import defaultdict

from cluster.runtime.admission import Drops

COORDINATOR = "coordinator"
COORDINATOR_KINDS = ("control", "boundary", "global")


class MessageLog:
    """`mode='full'` keeps one record per message; `mode='counters'` keeps [count, bytes] per
    (src, dst, kind, phase), which is all the locality report needs and costs a dict update."""

    def __init__(self, mode: str = "counters"):
        if mode not in ("full", "counters"):
            raise ValueError(f"fabric.log: expected 'full' or 'counters', got {mode!r}")
        self.mode = mode
        self.records = []
        self.counters = defaultdict(lambda: [0, 0])
        self.drops = Drops()

    def record(self, src: str, dst: str, kind: str, phase: str, step: int, nbytes: int) -> None:
        c = self.counters[(src, dst, kind, phase)]
        c[0] += 1
        c[1] += nbytes
        if self.mode == "full":
            self.records.append((src, dst, kind, phase, step, nbytes))

    def count(self, src: str, dst: str, kind: str, phase: str, n: int, nbytes: int) -> None:
        """n deliveries at once (cluster/runtime/exchange.py logs a phase's steps per edge in bulk; `full` mode keeps its
        records per step there)."""
        c = self.counters[(src, dst, kind, phase)]
        c[0] += n
        c[1] += nbytes

    def export(self) -> dict:
        """"rejected": [{user, reason, count, why}] per (connection, reason), stale drops included (the report
        counts those apart); "samples": the first drops whole."""
        return {"mode": self.mode,
                "counters": [[*k, v[0], v[1]] for k, v in self.counters.items()],
                "records": [list(r) for r in self.records], "rejected": self.drops.export(),
                "samples": list(self.drops.samples)}

    def clear(self) -> None:
        self.records.clear()
        self.counters.clear()
        self.drops.clear()
