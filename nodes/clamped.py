"""Clamped learning phases (contrastive and coupled learning, protocols/contrastive.py and protocols/coupled.py), as
one node's local rule.

EP's learning phase adds a force to the output units' dynamics (nodes/dynamics.py: the cost's gradient, scaled by
beta). A clamped phase instead HOLDS the output units' state at a value and lets every other unit relax:

    s_out(t) = c = s_out_free + eta (y - s_out_free)      for every step t of the phase, its start included
    s_h(t+1) = physics step of s_h(t) with the output's signal a(c) in its drive   (hidden units)

eta is the phase's beta (the global signal every node receives with the phase); eta = 1 gives c = y exactly
(contrastive learning), 0 < |eta| < 1 the coupled-learning clamp. The output node holds everything it needs: its
own free state s_out_free (the phase's start state, which it saved itself) and its slice of the target y (the
boundary signal the model routes to it); nothing travels that EP's nudged phase does not already send. It
sends a(c) = rho(c) (`energy`) or c (`prototypical`) on every step, so the neighbours' drives and G read the clamped
signal. Phases at beta = 0 run the plain physics (the free phase).

The rule runs on the symmetric layered nets (`energy`, `prototypical`), whose free and clamped states are
stationary points of an energy E, so that G = dE/dtheta (nodes/rules.NodeRule.G) at the two states is what the
estimators contrast.
"""
from __future__ import annotations

import torch

from nodes.graph import SIGNAL
from nodes.rules import NodeRule, PhaseRule

PHYSICS = ("energy", "prototypical")


def clamp_of(s_free, y, eta):
    """c = s_free + eta (y - s_free), computed so that eta = 1 gives y itself (torch.lerp evaluates
    y - (y - s_free)(1 - eta) for eta >= 0.5: exactly y at eta = 1)."""
    return torch.lerp(s_free, y.to(s_free.dtype), float(eta))


class ClampedRule(NodeRule):
    """NodeRule whose output nodes hold their state at the clamp in every phase with a non-zero beta."""

    def __init__(self, spec, protocol, lrs=None, noise=(0.0, 0)):
        super().__init__(spec, protocol, lrs, noise)
        if self.phys.name not in PHYSICS:
            raise ValueError(f"model: protocol {protocol.name} clamps the output of an energy-based net (physics "
                             f"{' or '.join(PHYSICS)}), not physics {self.phys.name!r} (node {self.id})")
        if not all(it.reciprocal for it in spec.model.interactions):
            raise ValueError(f"model: protocol {protocol.name} needs symmetric interactions (an energy), model "
                             f"{spec.model.name} has directed ones (node {self.id})")

    def phase(self, ph) -> PhaseRule:
        if ph.kinds or ph.complex or ph.rows(1) != 1:
            raise ValueError(f"node {self.id}, phase {ph.name}: a clamped rule runs real phases with the signal "
                             f"alone (protocol {self.protocol.name})")
        if self.is_output and ph.beta != 0:
            return ClampPhase(self, ph)
        return PhaseRule(self, ph)


class ClampPhase(PhaseRule):
    """The output node in a clamped phase: s = c from entry to exit, a(c) sent at every step."""

    def enter(self, state, params, boundary):
        n, ph = self.node, self.ph
        if ph.start not in state.get("saved", {}):
            raise ValueError(f"node {n.id}, phase {ph.name}: the clamp s_free + eta (y - s_free) reads the node's "
                             f"saved start state, got start {ph.start!r}")
        y = boundary.get("y")
        if y is None:
            raise ValueError(f"node {n.id}, phase {ph.name}: clamped (eta = {boundary['beta']}) with no target y")
        state, _ = super().enter(state, params, boundary)
        c = clamp_of(state["saved"][ph.start].to(state["dtype"]), y, boundary["beta"])
        a = n.phys.signal(c)
        return {**state, "s": c, "a": a}, {SIGNAL: a}

    def step(self, state, inbox, params, boundary, t):
        """The clamped unit does not move: it sends the same a(c) again."""
        return state, {SIGNAL: state["a"]}, None
