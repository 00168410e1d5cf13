"""`ep`, one-sided EP (Scellier & Bengio 2017): free phase -> s0; nudged at beta from s0 -> s_beta.

g_hat = (G(s_beta) - G(s0)) / beta, bias O(beta).
"""
from protocols.base import Phase, Protocol


class EP(Protocol):
    name = "ep"

    def program(self, beta, T1, T2):
        return (Phase("free", T1, 0.0, "zero", coef=-1.0 / beta), Phase("nudged", T2, beta, "free", coef=1.0 / beta))


PROTOCOL = EP()
