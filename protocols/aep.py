"""`aep`, one-sided AEP (Scurria et al. 2026; docs/algorithms.md §9, the Jacobian variant): free phase -> x0; one
learning phase at beta from x0 whose dynamics carry the anchor term,

    dx/dt = f(x) - beta dC/dx - 2A (x - x0),   A = (J - J^T)/2 at x0      (nodes/nonreciprocal.py, kinds r and t)

so that (x^beta - x0)/beta -> J^-T dC/dx = lambda, the adjoint of implicit differentiation; then every node pairs
its own displacement with the pre-synaptic free signals, g_hat = -(d_theta f(x0))^T (x^beta - x0)/beta:

    vector field:  g_hat_{W_ij} = -(x^beta_i - x0_i) rho(x0_j) / beta,   g_hat_{b_i} = -(x^beta_i - x0_i) / beta
    energy net:    g_hat_{W_ij} = -[p_i rho(x0_j) + rho(x0_i) p_j] / beta,  g_hat_{b_i} = -p_i / beta,
                   p = rho'(x0)(x^beta - x0), p_j from j's last r message          (batch means)

Bias O(beta). On an energy net J is symmetric and the anchor vanishes (docs/families/nonconservative.md, "On energy").
"""
from nodes.nonreciprocal import ANCHOR, NonreciprocalRule
from protocols.base import Phase, Protocol, add


class Nonreciprocal(Protocol):
    """What AEP and Dyadic EP share: directed vector fields, the nodes' rule with the anchored and adjoint phases."""

    models = ("vector-field", "vector-graph")
    checks = ("feedback_init", "noise")
    rule = NonreciprocalRule
    stationary = True

    def validate(self, beta, **settings):
        super().validate(beta, **settings)
        if settings.get("noise"):
            raise ValueError(f"noise: protocol {self.name} runs noiseless (its anchor and adjoint phases draw none)")
        if settings.get("feedback_init") == "tied":
            raise ValueError(f"feedback_init: protocol {self.name} on a tied vector field (B = W^T, symmetric "
                             f"interactions) is not built: its estimate couples both ends of a synapse; use "
                             f"'transpose' (B its own parameter, started as W^T)")

    @staticmethod
    def pullback(G, scale, displacement, free):
        """scale * -(d_theta f(x0))^T delta at the node: its own post-synaptic factor with the neighbours' free
        signals, plus, on an energy net, its own free signal with the neighbours' factors (synapses only)."""
        (post, pre), (a0, pre0) = displacement, free
        acc = G.outer(scale, post, pre0)
        return acc if pre is None else add(acc, G.outer(scale, a0, pre, synapses=True))


class AEP(Nonreciprocal):
    name = "aep"
    models = ("vector-field", "vector-graph", "energy")
    ports = ANCHOR

    def program(self, beta, T1, T2):
        return Phase("free", T1), Phase("nudged", T2, beta, "free", kinds=ANCHOR)

    def on_exit(self, phase, mem, G):
        if phase.beta == 0:
            return {**mem, "free": G.signals()}
        return {"acc": self.pullback(G, 1.0 / phase.beta, G.displacement(), mem["free"])}


PROTOCOL = AEP()
