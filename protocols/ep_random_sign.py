"""`ep-random-sign` (Scellier & Bengio 2017 code; Laborieux et al. 2021): `ep` with the sign of beta drawn per batch
from the run's seeded generator. g_hat = (G(s_beta) - G(s0)) / beta with the signed beta; O(beta) bias per batch,
zero in expectation.
"""
from protocols.ep import EP


class EPRandomSign(EP):
    name = "ep-random-sign"
    random_sign = True


PROTOCOL = EPRandomSign()
