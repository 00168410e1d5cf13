"""`aep-symmetric`, AEP with +-beta (docs/algorithms.md §9): free phase -> x0; two anchored learning phases from x0, at
+beta and -beta (nodes/nonreciprocal.py), then every node pairs its own symmetric difference with the pre-synaptic
free signals, g_hat = -(d_theta f(x0))^T (x^+ - x^-)/(2 beta):

    vector field:  g_hat_{W_ij} = -(x^+_i - x^-_i) rho(x0_j) / (2 beta),   g_hat_{b_i} = -(x^+_i - x^-_i) / (2 beta)
    energy net:    the same with p = rho'(x0)(x^+ - x^-) and a term from each end (protocols/aep.py)

Bias O(beta^2). On an energy net the anchor vanishes, so the nudged states are `ep-symmetric`'s and the two
estimates differ by O(beta^2) (docs/families/nonconservative.md, "On energy").
"""
from nodes.nonreciprocal import ANCHOR
from protocols.aep import Nonreciprocal
from protocols.base import Phase


class AEPSymmetric(Nonreciprocal):
    name = "aep-symmetric"
    models = ("vector-field", "vector-graph", "energy")
    ports = ANCHOR

    def program(self, beta, T1, T2):
        return (Phase("free", T1), Phase("plus", T2, beta, "free", kinds=ANCHOR),
                Phase("minus", T2, -beta, "free", kinds=ANCHOR))

    def on_exit(self, phase, mem, G):
        if phase.beta == 0:
            return {**mem, "free": G.signals()}
        if phase.name == "plus":
            return {**mem, "plus": G.displacement()}
        (pp, qp), (pm, qm) = mem["plus"], G.displacement()
        diff = (pp - pm, None if qp is None else {k: qp[k] - qm[k] for k in qp})
        return {"acc": self.pullback(G, -0.5 / phase.beta, diff, mem["free"])}


PROTOCOL = AEPSymmetric()
