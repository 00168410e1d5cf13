"""Probes: what `Simulator.run` records (experiments/api.py), by name.

A probe names one thing to observe, checked against the model and the engine's partition before anything runs:

    Probe("L1")                     the state of group L1 after each step          (samples, B, units)
    Probe("L1", every=5)            the same at the steps t with t % 5 == 0
    Probe(edge=("L1", "L2"))        the signal messages node L1 sent to node L2    (samples, B, width of L1's block)
    Probe(accumulators="L1")        node L1's accumulators at the run's end        {path: tensor}

Group names are the model's dynamic groups (nodes/graph.Group; the layered nets' `L1` .. `LN`, L0 being the clamped
input x); node ids are the engine's partition (the in-process engine runs the layer partition, where a node is named
after its group; a fabric's `granularity` and `fabric.split` give `L1.0`, `L1.1`, ...: `Simulator.summary()` lists
them). A group of a two-field layout (positions and momenta) records (samples, B, 2, units).

Steps count from the state's start (zero, or `Simulator.reset`): a run of n steps from step t0 yields the states
after its steps, t0 + 1 .. t0 + n, those with t % every == 0; one run of 30 steps and two runs of 10 and 20 record
the same samples. An edge's message sampled at step t is the one that carried a(s_t), what the receiver's step t + 1
reads. The states and signals come from the engine's recording (run_phase(record_states=True): each node's own,
gathered by the coordinator as for audits); the accumulators from each node (Engine.accumulators).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nodes.graph import SIGNAL

LISTED = 12  # how many valid names an error lists


@dataclass(frozen=True)
class Probe:
    """One of `group` (a dynamic group's state), `edge` ((sender node, receiver node): its signal messages) or
    `accumulators` (a node id); `every`: sample the steps t with t % every == 0; `name`: the key of its data
    (default: the group, "L1->L2", "L1.accumulators")."""

    group: str | None = None
    every: int = 1
    edge: tuple | None = None
    accumulators: str | None = None
    name: str | None = None

    @property
    def key(self) -> str:
        if self.name is not None:
            return self.name
        if self.edge is not None:
            return f"{self.edge[0]}->{self.edge[1]}"
        if self.accumulators is not None:
            return f"{self.accumulators}.accumulators"
        return str(self.group)


class ProbeData(dict):
    """{probe name: data} for one run: a group's states (samples, B, units), an edge's messages (samples, B, width),
    a node's accumulators {path: tensor} (their shapes: the node's held tensors'); `steps` {probe name: [step t of
    each sample]} (an accumulator probe: the run's last step)."""

    def __init__(self, data=(), steps=None):
        super().__init__(data)
        self.steps = dict(steps or {})


def _some(names) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def check_probes(probes, model, specs: dict) -> tuple:
    """The probes as a tuple, each checked against the model's groups and the partition's nodes and signal ports
    (specs); an unknown name is a ValueError naming the field and listing the valid ones."""
    probes = tuple(probes)
    seen = set()
    dynamic = [g.name for g in model.dynamic_groups]
    for p in probes:
        if not isinstance(p, Probe):
            raise ValueError(f"probes: expected Probe objects, got {p!r}")
        given = [f for f in ("group", "edge", "accumulators") if getattr(p, f) is not None]
        if len(given) != 1:
            raise ValueError(f"Probe: give exactly one of a group, edge= or accumulators=; got {given or 'none'}")
        if isinstance(p.every, bool) or not isinstance(p.every, int) or p.every < 1:
            raise ValueError(f"every: must be an integer >= 1, got {p.every!r}")
        if p.group is not None and p.group not in dynamic:
            inputs = [g.name for g in model.groups if g.role == "input"]
            why = (f"{p.group!r} is the clamped input (its state is the batch's x)" if p.group in inputs
                   else f"model {model.name} has no group {p.group!r}")
            raise ValueError(f"group: {why}; the groups a probe can record: {_some(dynamic)}")
        if p.edge is not None:
            edges = [(q.src, q.dst) for s in specs.values() for q in s.in_ports if q.kind == SIGNAL]
            if not (isinstance(p.edge, (tuple, list)) and len(p.edge) == 2) or tuple(p.edge) not in edges:
                raise ValueError(f"edge: {p.edge!r} is not a (sender, receiver) pair of nodes with a signal port; "
                                 f"the edges: {_some(f'({a}, {b})' for a, b in sorted(edges))}")
        if p.accumulators is not None and p.accumulators not in specs:
            raise ValueError(f"accumulators: no node {p.accumulators!r}; the nodes: {_some(specs)}")
        if p.accumulators is not None and p.every != 1:
            raise ValueError("every: an accumulator probe reads the run's end only")
        if p.key in seen:
            raise ValueError(f"name: two probes named {p.key!r}; give one a name=")
        seen.add(p.key)
    return probes


def sampled(probes, model, t0: int, steps: int, recorded: dict | None, accumulators: dict | None) -> ProbeData:
    """The probes' data of a run of `steps` steps from step t0: recorded = run_phase's result with states (the groups'
    (steps+1, B, ...) and the nodes' signals), accumulators = Engine.accumulators() (either None where no probe
    reads it)."""
    order = [g.name for g in model.dynamic_groups]
    data, at = {}, {}
    for p in probes:
        if p.accumulators is not None:
            data[p.key], at[p.key] = accumulators[p.accumulators], [t0 + steps]
            continue
        k = [j for j in range(1, steps + 1) if (t0 + j) % p.every == 0]
        series = (recorded["states"][order.index(p.group)] if p.group is not None
                  else recorded["signals"][p.edge[0]])
        data[p.key], at[p.key] = series[torch.tensor(k, dtype=torch.long)], [t0 + j for j in k]
    return ProbeData(data, at)
