"""Locality report from the messages actually delivered (DESIGN.md "Locality, defined").

Data-plane messages are legal only between graph neighbours (edges derived from the model declaration and
the partition). Coordinator messages are legal only as control (phase triggers, batch size) to any node,
or as boundary data: x to the input layer's nodes, y and beta to the output layer's nodes.
"""
from __future__ import annotations

from collections import defaultdict

from nodes.model import COORDINATOR

BOUNDARY_TARGETS = {"x": "input", "y": "output", "beta": "output"}


def locality_report(model, blocks: list, logs: dict) -> dict:
    """logs: {node id: MessageLog.export()} -> {messages, bytes, per_edge, coordinator, violations}."""
    legal = model.legal_edges(blocks)
    role = {b.node_id: ("input" if b.layer == 1 else "") + ("output" if b.layer == model.N else "")
            for b in blocks}
    per_edge = defaultdict(lambda: defaultdict(int))
    coordinator = defaultdict(int)
    violations = []
    total = nbytes = 0
    for log in logs.values():
        for src, dst, kind, phase, count, size in log["counters"]:
            total += count
            nbytes += size
            if src == COORDINATOR:
                coordinator[kind] += count
                target = BOUNDARY_TARGETS.get(phase)
                ok = kind == "control" or (kind == "boundary" and target is not None and target in role.get(dst, ""))
                why = f"coordinator sent {kind} {phase!r} to {dst}"
            else:
                per_edge[f"{src}->{dst}"][kind] += count
                ok = (src, dst) in legal
                why = f"{src} and {dst} are not graph neighbours"
            if not ok:
                violations.append({"src": src, "dst": dst, "kind": kind, "phase": phase, "count": count,
                                   "why": why})
    return {"messages": total, "bytes": nbytes, "edges": len(per_edge), "legal_edges": len(legal),
            "per_edge": {k: dict(v) for k, v in sorted(per_edge.items())},
            "coordinator": dict(coordinator), "violations": violations}
