"""A model's vocabulary and a logical node's interface: the plain data that nodes/graph.py declares and derives.

Groups and interactions (Interaction subclasses: nodes/dense.py's Dense, and Local parameters of one group's units)
make a declaration (nodes/graph.Model); Blocks, Ports, Held tensors, drive Terms, inbox Slots and G recipes make each
logical node's NodeSpec. The functions at the end move tensors between a node's share and the full parameters
(slice_params, assemble) and cut a target to the node (target_of).
Nothing here knows the runtime: no sockets, no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from nodes.graph import Model

ROLES = ("input", "hidden", "output")
SIGNAL = "a"  # the message kind of the layered physics: a node's signal a(s)
# Message kinds a protocol may add (Protocol.ports), each with ports derived from the interactions:
#   "r": the twin of every signal port (same neighbours, same direction), e.g. AEP's rho'(x0_j) (x_j - x0_j);
#   "t": the transposed product along every Dense term between dynamic groups: the owner of W's rows (the
#        destination) sends each source block (its own quantity) @ W[rows, source block's columns], e.g. Dyadic
#        EP's W_ji d_j; on a symmetric term the replica holder (the source) also sends each destination block
#        (its own quantity) @ W[destination rows, its columns]^T, each end with its own copy of W.
#   "g": back along every directed Dense term between dynamic groups only: the owner of W's rows sends each source
#        block (its own quantity) @ W[rows, source block's columns], e.g. a Hamiltonian layer's input gradient to
#        the layer that drives it (nodes/leapfrog.py, stacked layers).
EXTRA_KINDS = ("r", "t", "g")


def carried(kinds) -> frozenset:
    """The message kinds a phase carries: the signal and its extra `kinds` (protocols/base.Phase.kinds)."""
    return frozenset((SIGNAL, *kinds))


def connected(mask, rows, cols) -> bool:
    """Whether a structural mask (0/1 rows of the destination, None: dense) leaves any non-zero entry in the
    (rows, cols) block: whether two blocks are neighbours through it."""
    return mask is None or any(any(row[cols[0]:cols[1]]) for row in mask[rows[0]:rows[1]])


@dataclass(frozen=True)
class Group:
    """A unit group: `size` units with state fields `layout` (e.g. ("s",), ("m", "d"), ("phi", "pi"))."""

    name: str
    size: int
    role: str = "hidden"
    layout: tuple = ("s",)


class Interaction:
    """A term of the energy (or primitive) between two unit groups, which knows its own physics. A subclass (one class
    in one file; nodes/dense.py is the model) declares, as a frozen dataclass with at least `src` and `dst` (group
    names):

      shapes(model)               {parameter: shape} of the parameters it owns
      init(model, gen, scale)     {parameter: seeded initial value}, drawn from `gen` in a fixed order
      validate(model)             raise ValueError naming the model and the parameter for a bad declaration
      ends                        the groups it names, the one it acts on last (by default (src, dst))
      reciprocal                  whether it drives each group it touches through the same parameters, as the
                                  gradient of one energy term (False by default: a directed coupling)
      bias_of(group)              the name of its bias on `group`'s units, if it has one (None by default)
      share(model, block, need)   what one logical node holds of it: (held {local: Held}, drive terms, G recipes
                                  {local: Grad}, boundary keys); `need(group, rows=..., cols=...)` records that the
                                  node reads `group`'s signal on its in-ports and returns the slot's name (None when
                                  the node is connected to none of it)

    Its terms (Term subclasses) say how it drives a node's units, and its Grads how G of each held tensor is
    computed from the node's own signal and what it read: no other module switches on what kind it is. Subclasses
    register themselves (INTERACTIONS, by class name) when they are defined, in nodes/ or anywhere else.

    The centralised references (cluster/truth/) ask it the same physics over whole groups, on {group: tensor} dicts
    that it updates in place (each reference asks for what its family needs; one not implemented is refused):

      masks()                                  {parameter: 0/1 tensor}, its structural zeros (none by default)
      add_drive(model, u, params, a)           u[g] += its part of group g's drive, from the signals a
                                               {group: (B, size)}
      add_jacobian(model, J, params, da, span) J (B, n, n) += d(its drive)/ds, with da {group: rho'(s)} and
                                               span {group: (lo, hi)} of the dynamic units
      add_vjp(model, out, params, da, d)       out[g] += (J^T d)_g of its part, d {group: (B, size)}
      add_force(model, F, params, phi, span)   F (B, n) plus its force on the positions phi (B, n), not through a
                                               drive (a Hamiltonian's springs); returns the new F"""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        INTERACTIONS[cls.__name__] = cls

    @property
    def ends(self) -> tuple:
        """The groups it names, the one it acts on last: (src, dst)."""
        return (self.src, self.dst)

    reciprocal = False

    def bias_of(self, group: str) -> str | None:
        return None

    def validate(self, model) -> None:
        pass

    def masks(self) -> dict:
        return {}

    def _centralised(self, what: str):
        raise NotImplementedError(f"interaction {type(self).__name__} declares no centralised {what}, which this "
                                  f"reference asks it")

    def add_drive(self, model, u, params, a) -> None:
        self._centralised("drive (add_drive)")

    def add_jacobian(self, model, J, params, da, span) -> None:
        self._centralised("Jacobian (add_jacobian)")

    def add_vjp(self, model, out, params, da, d) -> None:
        self._centralised("Jacobian product (add_vjp)")

    def add_force(self, model, F, params, phi, span):
        self._centralised("force (add_force)")

    def transposed_sends(self, model, by_group) -> list:
        """Message kind "t" along this interaction (a protocol that asks for it, e.g. Dyadic EP); none by default."""
        raise ValueError(f"interaction {type(self).__name__} sends no message of kind 't' (nodes/dense.py does)")

    def backward_sends(self, model, by_group) -> list:
        """Message kind "g" back along this interaction (stacked Hamiltonian layers); none by default."""
        raise ValueError(f"interaction {type(self).__name__} sends no message of kind 'g' (nodes/dense.py does)")


INTERACTIONS: dict = {}  # class name -> Interaction subclass, filled as they are defined


@dataclass(frozen=True)
class Local(Interaction):
    """A parameter of one group's units alone (e.g. an oscillator's own stiffness), an interaction of the group with
    itself that drives nothing: shape (size,), each block holding its units' entries; or `whole` a shape held whole by
    the group's blocks (a readout, whose loss needs the whole group and so runs where the group is one block). It
    draws nothing from the generator: zeros, which the model's `init` sets. The rule that reads it finds it by name
    (e.g. nodes/hamiltonian.Echo.roles)."""

    group: str
    name: str
    whole: tuple = ()

    reciprocal = True  # it drives nothing, so it breaks no energy

    @property
    def ends(self) -> tuple:
        return (self.group,)

    def shape(self, size: int) -> tuple:
        return tuple(self.whole) if self.whole else (size,)

    def shapes(self, model) -> dict:
        return {self.name: self.shape(model.group(self.group).size)}

    def init(self, model, gen, scale: float) -> dict:
        """Zeros (no draw from `gen`)."""
        return {self.name: torch.zeros(self.shape(model.group(self.group).size), dtype=torch.float64)}

    def share(self, model, b, need) -> tuple:
        """Its units' entries (all of it when `whole`) on the group's blocks, as their owner; no drive, no G."""
        if b.group != self.group:
            return {}, [], {}, ()
        return {self.name: Held(self.name, None if self.whole else (b.lo, b.hi), None, "primary")}, [], {}, ()

    def add_drive(self, model, u, params, a) -> None:
        """No part of any drive: the rule that reads it finds it by name."""

    def add_jacobian(self, model, J, params, da, span) -> None:
        """Nothing: no part of any drive."""

    def add_vjp(self, model, out, params, da, d) -> None:
        """Nothing: no part of any drive."""

    def add_force(self, model, F, params, phi, span):
        """F: no force of its own (an onsite parameter's force is the onsite potential's, read by name)."""
        return F

    def transposed_sends(self, model, by_group) -> list:
        return []

    def backward_sends(self, model, by_group) -> list:
        return []


@dataclass(frozen=True)
class Block:
    """A logical node's share of the units: group `group`, units [lo, hi)."""

    node_id: str
    group: str
    lo: int
    hi: int

    @property
    def width(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True)
class Port:
    """A directed data-plane connection: `src` sends messages of `kind` ((B, width) arrays) to `dst`."""

    src: str
    dst: str
    kind: str
    width: int


@dataclass(frozen=True)
class Held:
    """A tensor a node holds: W[rows, cols] of parameter `param` (None = all), as owner or replica."""

    param: str
    rows: tuple | None
    cols: tuple | None
    role: str  # "primary" (the owner's copy, gathered for audits) or "replica"

    def take(self, full):
        t = full if self.rows is None else full[self.rows[0]:self.rows[1]]
        return t if self.cols is None else t[:, self.cols[0]:self.cols[1]]


@dataclass(frozen=True)
class Term:
    """One contribution of an interaction to a node's drive u, with the held tensor `weight` and, for a per-step
    term, the inbox slot it reads. A subclass says which kind it is by what it implements:

      per step (constant False):  u += k a_slot M, with M = operand(W) for W = the held tensor in the run's dtype
      constant (constant True):   u = add_const(u, W, boundary, dtype), once per phase (the clamped part of the drive:
                                  boundary signals and biases); `order` sorts them (lower first)

    A rule with physics of its own asks its terms what that physics needs instead (a Hamiltonian node's terms:
    nodes/springs.HamiltonianTerm's drive, force and dV). `kind` names the term within its interaction (e.g. Dense's
    fwd, bwd, clamped, bias)."""

    kind: str
    weight: str
    slot: str | None = None

    constant = False
    order = 0
    reads = ()          # the boundary keys it reads (routed to the node)

    def operand(self, W):
        raise NotImplementedError(f"term {self.kind} of {self.weight}: no per-step operand")

    def add_const(self, u, W, boundary, dtype):
        raise NotImplementedError(f"term {self.kind} of {self.weight}: not a constant term")


@dataclass(frozen=True)
class Slot:
    """An inbox entry: the signal of `group`, (B, width), assembled from `parts` = ((source, lo, hi), ...), where a
    source is a neighbour's node id (a port of kind `kind`) or "self"."""

    name: str
    group: str
    kind: str
    width: int
    parts: tuple

    @property
    def tiled(self) -> bool:
        """Whether the parts, in order, cover [0, width) without gaps (a mask may leave gaps: zeros there)."""
        at = 0
        for _, lo, hi in self.parts:
            if lo != at:
                return False
            at = hi
        return at == self.width


@dataclass(frozen=True)
class Grad:
    """How G (docs/algorithms.md §1: dE/dtheta at a state, batch mean) of one held tensor is computed. `value(terms)`
    returns sum_k c_k G_k over the terms of a sum (nodes/rules.Products: c_k = -scale_k / B, the node's own signal,
    the inbox slots it read, x), before the structural `mask` (rows, cols) is applied; a subclass implements it.
    `slot`: the inbox slot it reads (`reads_inbox`), or the boundary key; `active` False: a held tensor with no G
    (a block the mask leaves without a source: zero, left out)."""

    kind: str
    slot: str | None = None
    mask: torch.Tensor | None = None

    active = True
    reads_inbox = False     # the G reads a neighbour's signal from the inbox slot `slot`
    reads_x = False         # the G reads the boundary's clamped input x

    def value(self, terms):
        raise NotImplementedError(f"G of kind {self.kind}")


@dataclass(frozen=True)
class NoGrad(Grad):
    """A held tensor with no G (structural zeros only)."""

    kind: str = "none"
    active = False


@dataclass(frozen=True)
class NodeSpec:
    """A logical node's interface: plain data, derived from the model and the partition."""

    id: str
    model: "Model"
    block: Block
    held: dict            # local tensor name -> Held
    terms: tuple          # Term, in a fixed order
    grads: dict           # local tensor name -> Grad
    slots: dict           # slot name -> Slot
    in_ports: tuple       # Port, sorted
    out_ports: tuple      # Port, sorted
    boundary: tuple       # boundary keys routed to this node ("x", "y")
    transposed: tuple = ()  # kind "t": (dst node id or "self", held W, lo, hi, rows): it sends q @ W[:, lo:hi]
                            # (rows False: it owns W's rows) or q @ W[lo:hi, :]^T (rows True: a replica's columns)
    backward: tuple = ()    # kind "g": (dst node id, held W, lo, hi): it sends q @ W[:, lo:hi] (a directed term's source)

    @property
    def width(self) -> int:
        return self.block.width

    @property
    def is_output(self) -> bool:
        return self.model.group(self.block.group).role == "output"


def target_of(spec: NodeSpec, y):
    """The output node's share of a target y (B, d_out) or a target sequence (B, T, d_out): its units' columns; a
    target whose last axis is not the output group's (a readout's classes) goes whole to the output group's one
    block."""
    if y.shape[-1] != spec.model.group(spec.block.group).size:
        return y
    return y[..., spec.block.lo:spec.block.hi]


def slice_params(spec: NodeSpec, params: dict, copy: bool = True) -> dict:
    """The tensors a node holds, cut from full parameters (contiguous copies, or views when copy=False)."""
    return {k: (h.take(params[h.param]).clone().contiguous() if copy else h.take(params[h.param]))
            for k, h in spec.held.items()}


def assemble(model: "Model", specs: dict, held: dict, role: str = "primary") -> dict:
    """Full parameters from the nodes' held tensors of `role` (held: {node id: {local: tensor}})."""
    some = next(t for h in held.values() for t in h.values())
    full = {k: torch.zeros(v, dtype=some.dtype) for k, v in model.param_shapes().items()}
    for i, spec in specs.items():
        for local, h in spec.held.items():
            if h.role == role:
                h.take(full[h.param]).copy_(held[i][local])
    return full
