"""`cpl`, coupled learning (Stern et al. 2021; compared with EP and CL in Scellier et al. 2023): free phase -> s0;
a clamped phase from s0 in which the output units are HELD at

    c = s0_out + eta (y - s0_out)                                   (nodes/clamped.py; eta = the config's beta)

while every other unit relaxes -> s_eta; then every node contrasts G = dE/dtheta at the two states,

    g_hat = (G(s_eta) - G(s0)) / eta.

The clamp is not EP's nudge: no force acts on the output, its state is set. Where the free and clamped states are
stationary (the phases have settled), write F(c, theta) = min over the hidden units of E with the output held at
c, H = d2F/dc2 at c = s0_out (the Schur complement of E's Hessian on the output block; per sample) and
K = d2F/(dtheta dc). Then G(s_eta) = dF/dtheta(c) and, per sample,

    lim_{eta -> 0} g_hat = K (y - s0_out),                            one-sided error O(eta)
    dL/dtheta            = K H^-1 (y - s0_out)      (L = 1/2 ||s0_out - y||^2: EP's beta -> 0 limit, BPTT's truth)

so the eta -> 0 limit is not the gradient of L but that of 1/2 (s0_out - y)^T H (s0_out - y) with H held fixed: the
two agree only where H is a multiple of the identity (docs/families/clamped.md). eta < 0 clamps away from the target
(the mean of the +eta and -eta estimates is the centred difference, error O(eta^2)).
"""
from nodes.clamped import ClampedRule
from protocols.base import Phase, Protocol


class Coupled(Protocol):
    """What coupled and contrastive learning share: the clamped rule on symmetric energy nets, the two-phase
    program with coefficients -+1/eta."""

    name = "cpl"
    models = ("energy", "prototypical")
    checks = ("steps",)
    rule = ClampedRule
    stationary = True

    def validate(self, beta, steps=False, **settings):
        super().validate(beta, **settings)
        if isinstance(beta, complex) or not 0 < abs(beta) <= 1:
            raise ValueError(f"beta: protocol {self.name} clamps the output at s_free + eta (y - s_free) with eta = "
                             f"beta, 0 < |eta| <= 1; got {beta!r}")
        if steps:
            raise ValueError(f"steps: the step-wise (GDU) audit pairs EP's nudged steps with BPTT's; protocol "
                             f"{self.name}'s clamped phase has no such relation (set steps=false)")

    def program(self, beta, T1, T2):
        self.validate(beta)  # the Python API reaches here without a config
        eta = float(beta)
        return (Phase("free", T1, 0.0, "zero", coef=-1.0 / eta),
                Phase("clamped", T2, eta, "free", coef=1.0 / eta))


PROTOCOL = Coupled()
