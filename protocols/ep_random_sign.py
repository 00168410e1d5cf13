"""`ep-random-sign` (Scellier & Bengio 2017 code; Laborieux et al. 2021): `ep` with the sign of beta drawn
per batch from the run's seeded generator. g_hat = (G(s_beta) - G(s0)) / beta with the signed beta;
O(beta) bias per batch, zero in expectation.
"""
from protocols.base import FREE, Phase, Protocol

PROTOCOL = Protocol(
    name="ep-random-sign",
    phases=(FREE, Phase("nudged", "T2", +1, "free")),
    coefficients=lambda beta: {"nudged": 1.0 / beta, "free": -1.0 / beta},
    random_sign=True,
)
