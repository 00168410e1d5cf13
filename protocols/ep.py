"""`ep`, one-sided EP (Scellier & Bengio 2017): free phase -> s0; nudged at beta from s0 -> s_beta.

g_hat = (G(s_beta) - G(s0)) / beta, bias O(beta).
"""
from protocols.base import FREE, Phase, Protocol

PROTOCOL = Protocol(
    name="ep",
    phases=(FREE, Phase("nudged", "T2", +1, "free")),
    coefficients=lambda beta: {"nudged": 1.0 / beta, "free": -1.0 / beta},
)
