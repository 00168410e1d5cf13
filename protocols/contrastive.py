"""`cl`, contrastive learning (Movellan 1991, Baldi & Pineda 1991; compared with EP and CpL in Scellier et al.
2023): free phase -> s0; a clamped phase from s0 in which the output units are HELD at the target y while every
other unit relaxes -> s_c (nodes/clamped.py); then every node contrasts G = dE/dtheta at the two states,

    g_hat = G(s_c) - G(s0)

(theta -= lr g_hat lowers the energy of the clamped state and raises that of the free one). It is `cpl` at
eta = 1 with no division: the clamp fraction is 1 by definition, so the config's beta must be 1. Its estimate is
the gradient of the contrastive objective F(y) - F(s0_out) (F: the energy minimised over the hidden units with the
output held), not of the cost L: the audit's cosine against BPTT measures how well it aligns with dL/dtheta, and
its norm is not comparable (docs/families/clamped.md).
"""
from protocols.coupled import Coupled


class Contrastive(Coupled):
    name = "cl"

    def validate(self, beta, steps=False, **settings):
        if beta != 1:
            raise ValueError(f"beta: protocol cl clamps the output at y itself, a clamp fraction of 1; got beta = "
                             f"{beta!r} (set beta=1, or use cpl for a partial clamp s_free + beta (y - s_free))")
        super().validate(beta, steps=steps, **settings)

    def batch_beta(self, beta, rng):
        """The clamp fraction of every batch: 1."""
        return 1.0


PROTOCOL = Contrastive()
