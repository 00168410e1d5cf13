"""Locality report from the messages actually delivered, as each receiver logged them (docs/guide/auditing.md,
"What the locality report rests on").

A data-plane message is legal only on a declared port (src, dst, kind) of the model's graph and partition. What
the coordinator delivers is legal as `control` (calls: phase triggers, parameters, checkpoints) to any node, as
`boundary` only where the model routes it (x to the nodes driven by the input, y to the output nodes), and as
`global` only for the signals every node may read: beta, the batch size, the batch's serial (`draw`, the clock that
keys the pre-activation noise), the protocol and its settings. Messages a
receiver dropped (cluster/runtime/admission.py: a forged sender, a duplicate, a malformed header, ...; kind `rejected`, or
`unknown` when no local node could be named), connections it refused (no valid credential) are violations too,
blamed on the connection's authenticated user, with a count each; `rejected_by_reason` sums them by reason. Stale
drops (an aborted phase's late messages) are normal traffic: counted under `stale`, not violations.
"""
from __future__ import annotations

from collections import defaultdict

from cluster.runtime.admission import NOT_VIOLATIONS
from cluster.runtime.message_log import COORDINATOR

GLOBALS = ("beta", "batch", "protocol", "draw")


def locality_report(specs: dict, logs: dict, protocol=None) -> dict:
    """specs {node: NodeSpec}; logs: an engine's message_logs() -> {messages, bytes, per_edge, coordinator,
    controls (the coordinator's calls by name, e.g. phase triggers, summed over the nodes), globals, boundary,
    violations, ...}."""
    declared = {(p.src, p.dst, p.kind) for s in specs.values() for p in s.in_ports}
    routes = {i: set(s.boundary) for i, s in specs.items()}
    allowed = set(GLOBALS) | set(getattr(protocol, "settings", {}) or {})
    per_edge = defaultdict(lambda: defaultdict(int))
    coordinator = defaultdict(int)
    controls = defaultdict(int)
    globals_seen = defaultdict(set)
    boundary_seen = defaultdict(set)
    violations = []
    by_reason = defaultdict(int)
    stale = total = nbytes = 0
    for node, log in logs.get("nodes", {}).items():
        for src, dst, kind, name, count, size in log["counters"]:
            total += count
            nbytes += size
            if src == COORDINATOR:
                coordinator[kind] += count
                if kind == "global":
                    globals_seen[name].add(dst)
                    ok, why = name in allowed, f"coordinator sent {name!r} to {dst}, which is not a global signal"
                elif kind == "boundary":
                    boundary_seen[name].add(dst)
                    ok, why = name in routes.get(dst, ()), f"coordinator sent {name!r} to {dst}, which it is not routed to"
                else:
                    controls[name] += count
                    ok, why = kind == "control", f"coordinator sent {kind} {name!r} to {dst}"
            else:
                per_edge[f"{src}->{dst}"][kind] += count
                ok = (src, dst, kind) in declared
                why = (f"{src} and {dst} are not graph neighbours" if not any(d[:2] == (src, dst) for d in declared)
                       else f"no port {src}->{dst} of kind {kind!r}")
            if not ok:
                violations.append({"src": src, "dst": dst, "kind": kind, "phase": name, "count": count, "why": why})
        for r in log.get("rejected", ()):
            reason, count = r.get("reason", "rejected"), r.get("count", 1)
            if reason in NOT_VIOLATIONS:
                stale += count
                continue
            by_reason[reason] += count
            violations.append({"src": r.get("user", r.get("src", "")), "dst": r.get("dst", node), "kind": "rejected",
                               "phase": "", "count": count, "reason": reason, "why": r["why"]})
    for r in logs.get("refused", ()):
        violations.append({"src": r.get("user", ""), "dst": r.get("host", ""), "kind": "refused", "phase": "",
                           "count": r.get("count", 1),
                           "why": f"connection refused: no valid credential ({r.get('mechanism')})"})
    for r in logs.get("unknown", ()):
        reason, count = r.get("reason", "unknown"), r.get("count", 1)
        by_reason[reason] += count
        violations.append({"src": r.get("user", ""), "dst": r.get("host", ""), "kind": "unknown", "phase": "",
                           "count": count, "reason": reason, "why": r.get("why", "")})
    return {"messages": total, "bytes": nbytes, "edges": len(per_edge),
            "legal_edges": len({d[:2] for d in declared}),
            "per_edge": {k: dict(v) for k, v in sorted(per_edge.items())},
            "coordinator": dict(coordinator), "controls": dict(sorted(controls.items())),
            "globals": {k: len(v) for k, v in sorted(globals_seen.items())},
            "boundary": {k: sorted(v) for k, v in sorted(boundary_seen.items())},
            "nodes": len(specs), "placement": logs.get("placement", {}), "violations": violations,
            "rejected_by_reason": dict(sorted(by_reason.items())), "stale": stale}
