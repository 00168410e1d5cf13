"""`aep-symmetric`, AEP with +-beta (ALGORITHMS.md §9): free phase -> x0; two anchored learning phases from x0, at
+beta and -beta (nodes/nonreciprocal.py), then every node pairs its own symmetric difference with the pre-synaptic
free signals:

    g_hat_{W_ij} = -(x^+_i - x^-_i) rho(x0_j) / (2 beta),   g_hat_{b_i} = -(x^+_i - x^-_i) / (2 beta)   (batch means)

Bias O(beta^2).
"""
from nodes.nonreciprocal import ANCHOR
from protocols.aep import Nonreciprocal
from protocols.base import Phase


class AEPSymmetric(Nonreciprocal):
    name = "aep-symmetric"
    ports = ANCHOR

    def program(self, beta, T1, T2):
        return (Phase("free", T1), Phase("plus", T2, beta, "free", kinds=ANCHOR),
                Phase("minus", T2, -beta, "free", kinds=ANCHOR))

    def on_exit(self, phase, mem, G):
        if phase.beta == 0:
            return {**mem, "free": G.signals()[1]}
        if phase.name == "plus":
            return {**mem, "plus": G.state().clone()}
        return {"acc": G.outer(-0.5 / phase.beta, mem["plus"] - G.state(), mem["free"])}


PROTOCOL = AEPSymmetric()
