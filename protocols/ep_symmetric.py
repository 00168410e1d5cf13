"""`ep-symmetric` (Laborieux et al. 2021): free -> s0; +beta and -beta phases, each from s0.

g_hat = (G(s_{+beta}) - G(s_{-beta})) / (2 beta), bias O(beta^2).
"""
from protocols.base import FREE, Phase, Protocol

PROTOCOL = Protocol(
    name="ep-symmetric",
    phases=(FREE, Phase("plus", "T2", +1, "free"), Phase("minus", "T2", -1, "free")),
    coefficients=lambda beta: {"plus": 0.5 / beta, "minus": -0.5 / beta},
)
