"""`aep`, one-sided AEP (Scurria et al. 2026; ALGORITHMS.md §9, the Jacobian variant): free phase -> x0; one
learning phase at beta from x0 whose dynamics carry the anchor term,

    dx/dt = f(x) - beta dC/dx - 2A (x - x0),   A = (J - J^T)/2 at x0      (nodes/nonreciprocal.py, kinds r and t)

so that (x^beta - x0)/beta -> J^-T dC/dx = lambda, the adjoint of implicit differentiation; then every node pairs
its own displacement with the pre-synaptic free signals, as `vf` does:

    g_hat_{W_ij} = -(x^beta_i - x0_i) rho(x0_j) / beta,   g_hat_{b_i} = -(x^beta_i - x0_i) / beta   (batch means)

Bias O(beta). On an energy net J is symmetric and the anchor vanishes: see the README ("AEP on energy").
"""
from nodes.nonreciprocal import ANCHOR, NonreciprocalRule
from protocols.base import Phase, Protocol
from protocols.vf import VectorField


class Nonreciprocal(Protocol):
    """What AEP and Dyadic EP share: directed vector fields, the nodes' rule with the anchored and adjoint phases."""

    models = ("vector-field", "vector-graph")
    checks = ("feedback_init",)
    rule = NonreciprocalRule
    stationary = True

    def validate(self, beta, **settings):
        super().validate(beta, **settings)
        if settings.get("feedback_init") == "tied":
            raise ValueError(f"feedback_init: protocol {self.name} sends W_ji (x_j - x0_j) back across directed "
                             f"synapses; a tied net (B = W^T, symmetric interactions) has none: use 'transpose'")


class AEP(Nonreciprocal, VectorField):
    name = "aep"
    keys = ()
    ports = ANCHOR

    def program(self, beta, T1, T2):
        return Phase("free", T1), Phase("nudged", T2, beta, "free", kinds=ANCHOR)


PROTOCOL = AEP()
