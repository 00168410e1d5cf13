"""Learning-phase dynamics of AEP's anchor and Dyadic EP's adjoint (docs/algorithms.md §9), as one node's local rule.

On a `vector-field` model (directed Dense terms), f_i = -x_i + sum_j W_ij rho(x_j) + b_i (+ U x), so
J_ij = -delta_ij + W_ij rho'(x_j); a phase's extra message kinds (protocols/base.Phase.kinds; the ports are
nodes/graph.EXTRA_KINDS) say which dynamics it runs:

  kinds ("r", "t"), AEP's anchored nudged phase, from the saved anchor x0 (the phase's start state):
      dx_i/dt = f_i -+ beta dC/dx_i - (2A(x - x0))_i,  A = (J - J^T)/2 at x0, i.e.
      (2A(x - x0))_i = sum_j W_ij r_j - rho'(x0_i) sum_j t_ji,   r_j = rho'(x0_j)(x_j - x0_j),  t_ji = W_ji (x_j - x0_j)
    node j sends r_j forward on every signal port (kind "r") and, as the owner of W_ji's rows, t_ji backwards to
    each pre-synaptic neighbour i (kind "t"); node i multiplies the first by its own W_ij and the second's sum by
    its own rho'(x0_i). No node holds a weight it does not own, and rho'(x0_j) never travels alone: it is folded
    into r_j (so the one message after the free phase that a literal reading of §9 suggests is not needed).
  kinds ("t",), Dyadic EP's phase, from (m, d) = (x0, 0):
      dm/dt = f(m),   dd_i/dt = -d_i + rho'(m_i) sum_j W_ji d_j - beta dC/dm_i     (J(m)^T d - beta dC/dm)
    m is the node's state `s` (its signal rho(m) goes out as usual), d its second field; node j sends W_ji d_j
    back across each synapse i -> j (kind "t").

On an `energy` model (symmetric terms, a replica of W at both ends), f = -dE/dx and J_ij = rho'(x_i) W_ij rho'(x_j)
off the diagonal, symmetric: the anchor is computed all the same, from each end's own copy of W,
      (2A(x - x0))_i = rho'(x0_i) (sum_j W_ij r_j - sum_j t_ji),   t_ji = W_ji r_j  (sent by j, with j's copy),
so it is zero where the two copies of every coupling agree (the replicas stay equal: drift 0), and the nudged
states are `ep-symmetric`'s. AEP's estimate -(d_theta f(x0))^T delta then has a term from each end
(`displacement`); Dyadic EP is not built on energy nets.

Explicit Euler with the model's dt, every node from the old state of all: the centralised reference
cluster/truth/nonconservative.py computes the same sums as one (B, n, n) Jacobian. A self-connection (W_SS on one node)
is the node's own share of the transposed product, computed in place.
"""
from __future__ import annotations

import torch

from nodes.graph import SIGNAL
from nodes.rules import NodeRule, PhaseRule

ANCHOR, ADJOINT = ("r", "t"), ("t",)
PHYSICS = ("vector-field", "energy")


class NonreciprocalRule(NodeRule):
    """NodeRule with the anchored (AEP) and adjoint (Dyadic) learning phases; phases with no extra kinds run the
    plain physics."""

    def __init__(self, spec, protocol, lrs=None, noise=(0.0, 0)):
        super().__init__(spec, protocol, lrs, noise)
        if self.phys.name not in PHYSICS or (self.phys.name == "energy" and set(protocol.ports) != set(ANCHOR)):
            raise ValueError(f"model: protocol {protocol.name} runs on a vector-field model"
                             f"{' or an energy net' if set(protocol.ports) == set(ANCHOR) else ''}, not physics "
                             f"{self.phys.name!r} (node {self.id})")
        if self.phys.name == "vector-field" and any(it.reciprocal and len(set(it.ends)) > 1
                                                     for it in spec.model.interactions):
            raise ValueError(f"model: protocol {protocol.name} on a vector field with symmetric interactions (a tied "
                             f"net, {spec.model.name}) is not built (node {self.id})")
        if self.noise_std:
            raise ValueError(f"noise: protocol {protocol.name} runs noiseless (node {self.id})")
        self.gradient = self.phys.name == "energy"  # f = -dE/dx: J symmetric, d_theta f couples both ends
        sends = {}
        for dst, w, lo, hi, rows in spec.transposed:
            sends.setdefault(dst, []).append((w, lo, hi, rows))
        self.t_self = tuple(sends.pop("self", ()))
        self.t_out = tuple(sends.items())
        self.r_slots = {t.slot: t.slot[: -len(SIGNAL)] + "r" for t in self.step_terms}
        self.t_slots = tuple(s.name for s in spec.slots.values() if s.kind == "t")

    def phase(self, ph) -> PhaseRule:
        kinds = tuple(sorted(ph.kinds))
        if kinds == ANCHOR:
            return AnchorPhase(self, ph)
        if kinds == ADJOINT:
            return AdjointPhase(self, ph)
        if kinds:
            raise ValueError(f"node {self.id}, phase {ph.name}: no dynamics carries kinds {kinds}")
        return PlainPhase(self, ph)

    def checked(self, state):
        """What the divergence check and the residual read: s, and d in an adjoint phase."""
        d = state.get("d")
        return state["s"] if d is None else torch.cat([state["s"], d], 1)

    @staticmethod
    def _product(q, W, lo, hi, rows):
        return q @ W[lo:hi].T if rows else q @ W[:, lo:hi]

    def transposed(self, q, params) -> dict:
        """{(dst, "t"): the node's share of sum_j W_ji q_j at dst, over its interactions with dst} (its own q)."""
        return {(dst, "t"): sum(self._product(q, params[w], lo, hi, rows) for w, lo, hi, rows in parts)
                for dst, parts in self.t_out}

    def gathered(self, q, inbox, params):
        """sum_j W_ji q_j over the node's neighbours j across Dense terms (their "t" messages, its own share)."""
        out = None
        for w, lo, hi, rows in self.t_self:
            v = self._product(q, params[w], lo, hi, rows)
            out = v if out is None else out + v
        for slot in self.t_slots:
            out = inbox[slot].clone() if out is None else out + inbox[slot]
        return torch.zeros_like(q) if out is None else out


class PlainPhase(PhaseRule):
    def enter(self, state, params, boundary):
        state, out = super().enter(state, params, boundary)
        return {**state, "d": None}, out


class AnchorPhase(PhaseRule):
    """AEP: dx/dt = f -+ beta dC/dx - 2A (x - x0), the anchor x0 and rho'(x0) the node's own, held from entry."""

    def enter(self, state, params, boundary):
        if self.ph.start not in state.get("saved", {}):
            raise ValueError(f"node {self.node.id}, phase {self.ph.name}: the anchored phase starts from a saved "
                             f"state, got start {self.ph.start!r}")
        state, out = super().enter(state, params, boundary)
        x0 = state["saved"][self.ph.start].to(state["dtype"])
        state = {**state, "d": None, "x0": x0, "rp0": self.node.phys.rho_prime(x0),
                 "zero": x0.new_zeros(self.node.spec.width)}  # the constant part of sum_j W_ij r_j: none
        return self._messages(state, out, params)

    def _messages(self, state, out, params):
        dx = state["s"] - state["x0"]
        r = state["rp0"] * dx
        n = self.node
        return {**state, "r": r, "dx": dx}, {**out, "r": r, **n.transposed(r if n.gradient else dx, params)}

    def step(self, state, inbox, params, boundary, t):
        n = self.node
        B, dtype = state["s"].shape[0], state["dtype"]
        forward = n.drive(state["zero"], {a: inbox[r] for a, r in n.r_slots.items()}, params, B,
                          dtype)  # sum_j W_ij r_j, the node's own copies
        if n.gradient:
            anchor = state["rp0"] * (forward - n.gathered(state["r"], inbox, params))
        else:
            anchor = forward - state["rp0"] * n.gathered(state["dx"], inbox, params)
        y = boundary.get("y") if n.is_output else None
        s = n.phys.step(state["s"], n.drive(state["const"], inbox, params, B, dtype), boundary["beta"], y)
        s = s - n.phys.dt * anchor
        a = n.phys.signal(s)
        return self._messages({**state, "s": s, "a": a}, {SIGNAL: a}, params) + (None,)

    def _G(self, state, inbox, boundary):
        """G with `G.displacement()`: the post-synaptic factor of -(d_theta f(x0))^T (x - x0) at the node (x - x0 on
        a vector field, rho'(x0)(x - x0) on an energy net) and, on an energy net, its neighbours' rho'(x0)(x - x0)
        (their r messages, per signal slot) for the pre-synaptic term; None on a vector field."""
        G = super()._G(state, inbox, boundary)
        n = self.node

        def displacement():
            if not n.gradient:
                return state["dx"].clone(), None
            return state["r"].clone(), {g.slot: inbox[n.r_slots[g.slot]].clone() for _, g in n.grads
                                        if g.reads_inbox}

        G.displacement = displacement
        return G


class AdjointPhase(PhaseRule):
    """Dyadic EP: m (the state s) relaxes on f alone; d on J(m)^T d - beta dC/dm, from d = 0."""

    def enter(self, state, params, boundary):
        state, out = super().enter(state, params, boundary)
        d = torch.zeros_like(state["s"])
        return {**state, "d": d}, {**out, **self.node.transposed(d, params)}

    def step(self, state, inbox, params, boundary, t):
        n = self.node
        m, d = state["s"], state["d"]
        jt = n.phys.rho_prime(m) * n.gathered(d, inbox, params) - d
        if n.is_output and boundary["beta"] != 0:
            jt = jt - boundary["beta"] * (m - boundary["y"])
        u = n.drive(state["const"], inbox, params, m.shape[0], state["dtype"])
        s = n.phys.step(m, u)
        d = d + n.phys.dt * jt
        a = n.phys.signal(s)
        return {**state, "s": s, "a": a, "d": d}, {SIGNAL: a, **n.transposed(d, params)}, None
