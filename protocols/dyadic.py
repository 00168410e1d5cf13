"""`dyadic`, Dyadic EP (Scurria et al. 2026; docs/algorithms.md §9, the (m, d) form): free phase -> x0; one learning
phase from (m, d) = (x0, 0) in which every node relaxes its midpoint on the field and its difference on the adjoint,

    dm/dt = f(m),   dd/dt = J(m)^T d - beta dC/dm                 (nodes/nonreciprocal.py, kind t: W_ji d_j backwards)

At stationarity m = x0 and J^T d = beta dC/dx exactly, so d / beta is the adjoint lambda with no finite-beta bias.
Every node pairs its own d with the pre-synaptic signals rho(m) of the last exchange:

    g_hat_{W_ij} = -d_i rho(m_j) / beta,   g_hat_{b_i} = -d_i / beta   (batch means)
"""
from nodes.nonreciprocal import ADJOINT
from protocols.aep import Nonreciprocal
from protocols.base import Phase


class Dyadic(Nonreciprocal):
    name = "dyadic"
    ports = ADJOINT

    def program(self, beta, T1, T2):
        return Phase("free", T1), Phase("dyadic", T2, beta, "free", kinds=ADJOINT)

    def on_exit(self, phase, mem, G):
        if phase.beta == 0:
            return mem
        return {"acc": G.outer(1.0 / phase.beta, G.state("d"), G.signals()[1])}


PROTOCOL = Dyadic()
