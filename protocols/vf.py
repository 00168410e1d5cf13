"""`vf`, the vector-field rule (Scellier et al. 2018; docs/algorithms.md §1 "VF rule"), for nets whose feedback
weights are their own parameters (`prototypical-asym`): free phase -> s0; nudged at beta from s0 -> s_beta; then
every node pairs its own post-synaptic change with the pre-synaptic free signals it received:

    g_hat_{W_n} = -(s_beta_{n+1} - s0_{n+1}) a0_n^T / beta,   g_hat_{b_n} = -(s_beta_{n+1} - s0_{n+1}) / beta,
    g_hat_{B_n} = -(s_beta_n - s0_n) a0_{n+1}^T / beta          (batch means; a0 = s0 on prototypical-asym,
                                                                 rho(x0) on vector-field)

The node keeps its own free state and its neighbours' free signals (what the last free exchange delivered) until
the nudged phase ends. `random_sign` draws the sign of beta per batch.
"""
from dataclasses import dataclass

from protocols.base import Phase, Protocol


@dataclass(frozen=True)
class SignSettings:
    random_sign: bool = False  # the sign of beta drawn per batch (as ep-random-sign does)


class VectorField(Protocol):
    name = "vf"
    Settings = SignSettings
    models = ("prototypical-asym", "vector-field", "vector-graph")
    stationary = True

    def program(self, beta, T1, T2):
        return Phase("free", T1), Phase("nudged", T2, beta, "free")

    def on_exit(self, phase, mem, G):
        if phase.beta == 0:
            return {**mem, "free": (G.state().clone(), G.signals()[1])}
        s0, pre0 = mem["free"]
        return {"acc": G.outer(1.0 / phase.beta, G.state() - s0, pre0)}


PROTOCOL = VectorField()
