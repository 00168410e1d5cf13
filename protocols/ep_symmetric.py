"""`ep-symmetric` (Laborieux et al. 2021): free -> s0; +beta and -beta phases, each from s0.

g_hat = (G(s_{+beta}) - G(s_{-beta})) / (2 beta), bias O(beta^2).
"""
from protocols.base import Phase, Protocol


class EPSymmetric(Protocol):
    name = "ep-symmetric"

    def program(self, beta, T1, T2):
        return (Phase("free", T1, 0.0, "zero"), Phase("plus", T2, beta, "free", coef=0.5 / beta),
                Phase("minus", T2, -beta, "free", coef=-0.5 / beta))


PROTOCOL = EPSymmetric()
