"""One declaration of a model as a graph: unit groups, parameters, interactions (DESIGN.md "The pieces").

A `Model` lists its unit groups (`Group`: a name, a size, a role: `input` (clamped, the boundary signal x),
`hidden`, or `output` (the cost's target y is routed there)) and its interactions (`Dense`: a weight matrix from a
source group to a destination group, an optional bias, symmetric or directed, an optional structural mask). From it
the rest of the project derives everything it needs:

  * the parameters and their shapes (`param_shapes`), and their seeded initial values (`init_params`),
  * a partition of every non-input group into blocks, one per logical node (`partition`),
  * each logical node's interface (`NodeSpec`): the tensors it holds (rows it owns, columns it replicates), the
    terms of its drive, the ports it sends and receives on, how its inbox is assembled, the boundary keys routed
    to it, and the G tensors of its local updates,
  * the legal edges of the locality audit (`legal_edges`) and the routing of boundary signals (`routes`).

Each interaction knows its own physics (nodes/interface.Interaction): its parameters and their seeded values, and
what each logical node holds of it, how that drives the node's units and how G of each held tensor is computed;
this module asks it and never looks at its kind. Dense (nodes/dense.py) is the interaction of the layered models, and
Local (nodes/interface.py) a parameter of one group's units alone. The message kinds "t" and "g"
(nodes/interface.EXTRA_KINDS) are what each interaction sends along itself. The vocabulary (Group, Local,
Interaction) and the NodeSpec's parts live in nodes/interface.py (re-exported here). Nothing here knows the runtime:
no sockets, no Ray.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from nodes.dense import Dense
from nodes.interface import (EXTRA_KINDS, INTERACTIONS, ROLES, SIGNAL, Block, Grad, Group, Held, Interaction, Local,
                             NodeSpec, Port, Slot, Term, assemble, carried, connected as _connected, slice_params,
                             target_of)

__all__ = ["Model", "EXTRA_KINDS", "INTERACTIONS", "ROLES", "SIGNAL", "Block", "Dense", "Grad", "Group", "Held",
           "Interaction", "Local", "NodeSpec", "Port", "Slot", "Term", "assemble", "carried", "slice_params",
           "target_of"]  # the vocabulary, re-exported


def _per_sender(spec: "NodeSpec", kind: str, senders, **fields) -> "NodeSpec":
    """The spec with a slot `<kind>.<sender>` (the node's own width) and an in-port of `kind` per sender, and the
    given fields (what it sends itself)."""
    w, slots = spec.width, dict(spec.slots)
    for c in sorted(senders):
        slots[f"{kind}.{c}"] = Slot(f"{kind}.{c}", spec.block.group, kind, w, ((c, 0, w),))
    ports = spec.in_ports + tuple(Port(c, spec.id, kind, w) for c in senders)
    return dataclasses.replace(spec, slots=slots, in_ports=tuple(sorted(ports, key=lambda p: (p.src, p.kind))),
                               **fields)


@dataclass(frozen=True)
class Model:
    """A declaration: `physics` names the dynamics (nodes/dynamics.PHYSICS) that every node runs on it, and `rule`
    the class of the nodes' local rule (a subclass of nodes.rules.NodeRule; None for the Dense-interaction rule)."""

    name: str
    physics: str
    activation: str
    groups: tuple
    interactions: tuple
    dt: float = 1.0
    lr_index: dict = field(default_factory=dict, compare=False)  # parameter -> index into the run's lr list
    rule: type | None = field(default=None, compare=False)  # the nodes' rule class (None: nodes.rules.NodeRule)
    init: object = field(default=None, compare=False)  # (params, generator) -> params after the seeded init
    frozen: tuple = ()     # parameters that never learn (their learning rate is 0 whatever the run's lr)

    def __post_init__(self):
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name}: duplicate group names in {names}")
        for g in self.groups:
            if g.role not in ROLES or g.size < 1:
                raise ValueError(f"model {self.name}: group {g.name} needs a role in {ROLES} and size >= 1")
        for it in self.interactions:
            for end in it.ends:
                if end not in names:
                    raise ValueError(f"model {self.name}: interaction {it} names unknown group {end!r}")
            if self.group(it.ends[-1]).role == "input":
                raise ValueError(f"model {self.name}: interaction {it} acts on the clamped input {it.ends[-1]}")
            it.validate(self)

    # ---- declaration queries ---------------------------------------------------------------------------------
    def group(self, name: str) -> Group:
        return next(g for g in self.groups if g.name == name)

    @property
    def sizes(self) -> tuple:
        return tuple(g.size for g in self.groups)

    @property
    def dynamic_groups(self) -> tuple:
        return tuple(g for g in self.groups if g.role != "input")

    @property
    def output_group(self) -> Group:
        return next(g for g in self.groups if g.role == "output")

    def param_shapes(self) -> dict:
        shapes = {}
        for it in self.interactions:
            shapes.update(it.shapes(self))
        return shapes

    def init_params(self, seed: int, dtype=torch.float64, scale: float = 1.0) -> dict:
        """Each interaction's seeded draws in declaration order (its `init`, e.g. Dense's U(-1/sqrt(fan_in),
        1/sqrt(fan_in)) times `scale`; a Local's zeros, no draw), from one generator; then the model's `init` (e.g.
        feedback weights from forward ones)."""
        gen = torch.Generator().manual_seed(int(seed))
        params = {}
        for it in self.interactions:
            params.update(it.init(self, gen, scale))
        if self.init is not None:
            params = self.init(params, gen)
        return {k: v.to(dtype) for k, v in params.items()}

    # ---- partition into logical nodes --------------------------------------------------------------------
    def partition(self, granularity: str = "layer", split: int = 1) -> tuple:
        """Blocks of every non-input group: `layer` one block per group cut into `split` near-equal blocks,
        `neuron` one block per unit. A single block is named after its group, others `group.lo`."""
        blocks = []
        for g in self.dynamic_groups:
            if granularity == "neuron":
                cuts = list(range(g.size + 1))
            elif granularity == "layer":
                k = max(1, min(int(split), g.size))
                cuts = [round(i * g.size / k) for i in range(k + 1)]
            else:
                raise ValueError(f"granularity: expected 'layer' or 'neuron', got {granularity!r}")
            single = len(cuts) == 2
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                blocks.append(Block(g.name if single else f"{g.name}.{lo}", g.name, lo, hi))
        return tuple(blocks)

    def node_specs(self, blocks, kinds=()) -> dict:
        """node id -> NodeSpec for every block of a partition (in the partition's order); `kinds`: the extra
        message kinds (EXTRA_KINDS) whose ports are derived as well."""
        bad = set(kinds) - set(EXTRA_KINDS)
        if bad:
            raise ValueError(f"model {self.name}: unknown message kinds {sorted(bad)}; expected some of {EXTRA_KINDS}")
        by_group = {}
        for b in blocks:
            by_group.setdefault(b.group, []).append(b)
        specs = {b.node_id: self._spec(b, by_group) for b in blocks}
        if "r" in kinds:
            specs = {i: self._twin(s, "r") for i, s in specs.items()}
        if "t" in kinds:
            specs = self._transposed(specs, by_group)
        if "g" in kinds:
            specs = self._backward(specs, by_group)
        outs = {}
        for s in specs.values():  # a node's out-ports are its neighbours' in-ports from it
            for p in s.in_ports:
                outs.setdefault(p.src, []).append(p)
        return {i: dataclasses.replace(s, out_ports=tuple(sorted(outs.get(i, ()), key=lambda p: (p.dst, p.kind))))
                for i, s in specs.items()}

    def _spec(self, b: Block, by_group: dict) -> NodeSpec:
        """Block b's interface: every interaction's share of it (Interaction.share), the slots and in-ports of the
        signals its terms read, and its boundary keys."""
        held, terms, grads, needed, boundary = {}, [], {}, {}, set()

        def need(group, mask=None, rows=None, cols=None):
            return self._need(needed, group, by_group, b, mask, rows, cols)

        for it in self.interactions:
            h, t, g, keys = it.share(self, b, need)
            held.update(h)
            terms.extend(t)
            grads.update(g)
            boundary |= set(keys)
        if self.group(b.group).role == "output":
            boundary.add("y")
        slots, in_ports = {}, set()
        for group, sources in needed.items():
            parts = []
            for c in sorted(sources, key=lambda c: c.lo):
                parts.append(("self" if c.node_id == b.node_id else c.node_id, c.lo, c.hi))
                if c.node_id != b.node_id:
                    in_ports.add(Port(c.node_id, b.node_id, SIGNAL, c.width))
            name = f"{group}.{SIGNAL}"
            slots[name] = Slot(name, group, SIGNAL, self.group(group).size, tuple(parts))
        return NodeSpec(id=b.node_id, model=self, block=b, held=held, terms=tuple(terms), grads=grads,
                        slots=slots, in_ports=tuple(sorted(in_ports, key=lambda p: (p.src, p.kind))),
                        out_ports=(),
                        boundary=tuple(sorted(boundary)))

    @staticmethod
    def _twin(spec: NodeSpec, kind: str) -> NodeSpec:
        """The spec with a `kind` twin of every signal slot and in-port: the same neighbours, another payload."""
        slots = dict(spec.slots)
        for sl in spec.slots.values():
            if sl.kind == SIGNAL:
                name = f"{sl.group}.{kind}"
                slots[name] = dataclasses.replace(sl, name=name, kind=kind)
        ports = spec.in_ports + tuple(dataclasses.replace(p, kind=kind) for p in spec.in_ports if p.kind == SIGNAL)
        return dataclasses.replace(spec, slots=slots, in_ports=tuple(sorted(ports, key=lambda p: (p.src, p.kind))))

    def _backward(self, specs: dict, by_group: dict) -> dict:
        """Kind "g": what each interaction sends back along itself (Interaction.backward_sends; Dense: every directed
        term between dynamic groups, q @ W[c rows, b columns]); the receiver has one slot `g.<sender>`."""
        sends = {i: [] for i in specs}
        into = {i: set() for i in specs}
        for it in self.interactions:
            for sender, entry in it.backward_sends(self, by_group):
                sends[sender].append(entry)
                into[entry[0]].add(sender)
        return {i: _per_sender(spec, "g", into[i], backward=tuple(sends[i])) for i, spec in specs.items()}

    def _transposed(self, specs: dict, by_group: dict) -> dict:
        """Kind "t": the transposed products each interaction sends (Interaction.transposed_sends; Dense: q @ W[c
        rows, b columns] from each destination block c to each source block b it is connected to, and back from a
        symmetric term's replica), summed by the receiver over the interactions; a receiver holds one slot
        `t.<sender>` per such neighbour and computes its own share ("self") locally."""
        sends = {i: [] for i in specs}
        for it in self.interactions:
            for sender, entry in it.transposed_sends(self, by_group):
                sends[sender].append(entry)
        into = {i: set() for i in specs}
        for c, entries in sends.items():
            for dst, *_ in entries:
                if dst != "self":
                    into[dst].add(c)
        return {i: _per_sender(spec, "t", into[i], transposed=tuple(sends[i])) for i, spec in specs.items()}

    def _need(self, needed: dict, group: str, by_group: dict, b: Block, mask, rows=None, cols=None):
        """Record that block b reads the signal of `group` from the blocks the mask connects it to; the slot's
        name, or None when the mask connects it to none."""
        found = set()
        for c in by_group.get(group, ()):
            r, k = (rows, (c.lo, c.hi)) if rows is not None else ((c.lo, c.hi), cols)
            if _connected(mask, r, k):
                found.add(c)
        if not found:
            return None
        needed.setdefault(group, set()).update(found)
        return f"{group}.{SIGNAL}"

    # ---- what the audits derive ------------------------------------------------------------------------------
    def legal_edges(self, blocks, kinds=()) -> set:
        """Directed (src, dst) pairs allowed to carry data-plane messages: blocks that share an interaction (both
        ways where kind "t" sends back along a directed one)."""
        return {(p.src, p.dst) for s in self.node_specs(blocks, kinds).values() for p in s.in_ports}

    def routes(self, blocks) -> dict:
        """node id -> the boundary keys the model routes to it (x to the blocks driven by an input group, y to the
        output group's blocks)."""
        return {i: s.boundary for i, s in self.node_specs(blocks).items()}
