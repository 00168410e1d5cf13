"""`rhel`, Recurrent Hamiltonian Echo Learning (Pourcel & Ernoult 2025; docs/algorithms.md §10) on a Hamiltonian model
(nodes/hamiltonian.py, nodes/leapfrog.py): two phases, whatever the size of the system,

    forward   T steps from the initial state with the input u_1..u_T; the output node accumulates the loss
    echo      every node flips its own momenta, then T steps with the input played backwards, two copies side by
              side: nudged at +eps and -eps (`sided: two`), or at 0 and +eps (`sided: one`); the output node kicks
              pi <- pi + c eps g_n at the aligned steps, g_n = dl_n/dphi at the copies' reference (nodes/leapfrog)

and every node estimates, from its own accumulators G_c = sum_k h dH/dtheta(phi_half, u) of each copy,

    g_hat = -(G_+ - G_-) / (2 eps)   (two-sided; exact for any eps when H is quadratic)
    g_hat = -(G_+ - G_0) / eps       (one-sided; error O(eps))

(in general the least-squares slope of G_c against the copies' nudges, times -1), plus the readout's gradient,
which the output node accumulated directly in the forward pass (a readout is no part of H). The coordinator sends
the phase, eps and `sided` to every node and the input and target sequences at the batch's start; positions cross
the springs (kind a), nothing else.
"""
from dataclasses import dataclass

from nodes.hamiltonian import HAMILTONIAN_MODELS
from nodes.leapfrog import contrast
from protocols.base import Phase, Protocol

SIDED = {"two": (1.0, -1.0), "one": (0.0, 1.0)}
NUDGES = ("reference", "own")
STACK = ("g",)  # the echo's message kind besides the half-step positions: input gradients down a stack  # the kick's cotangent: at the copies' reference state, or at each copy's own



@dataclass(frozen=True)
class EchoPhase(Phase):
    """The echo of a Hamiltonian model: every node negates its own momenta on entry (`flip`, nodes/leapfrog.py) and
    runs `copies` of its state side by side, copy c nudged at copies[c] * beta (its rows: the batch times the
    copies)."""

    flip: bool = True
    copies: tuple = ()

    def rows(self, batch: int) -> int:
        return batch * max(1, len(self.copies))


@dataclass(frozen=True)
class EchoSettings:
    sided: str = "two"         # echo copies nudged at +eps and -eps ("two") or at 0 and +eps ("one")
    nudge: str = "reference"   # the kicks' cotangent at the copies' reference state, or each copy's own


class RHEL(Protocol):
    name = "rhel"
    needs_beta = False
    Settings = EchoSettings
    checks = ("eps", "integrator", "damping", "noise", "residual_tol")
    models = HAMILTONIAN_MODELS
    ports = STACK     # a stacked layer's input gradient to the layer below (none in a model without a stack)
    terminal = False  # the loss is summed over the whole forward trajectory

    def validate(self, beta, **settings):
        eps, sided = settings["eps"], settings["sided"]
        if not eps or eps != eps:
            raise ValueError(f"eps: protocol {self.name} needs a non-zero nudging strength, got {eps!r}")
        if sided not in SIDED:
            raise ValueError(f"sided: expected one of {tuple(SIDED)}, got {sided!r}")
        if settings["nudge"] not in NUDGES:
            raise ValueError(f"nudge: expected one of {NUDGES}, got {settings['nudge']!r}")
        integ = settings["integrator"]
        if integ != "leapfrog":
            raise ValueError(f"integrator: protocol {self.name} needs an exactly time-reversible symplectic integrator "
                             f"(leapfrog, the force at the half-step position); {integ!r} is not: the echo would not "
                             f"retrace the forward pass")
        if settings["noise"]:
            raise ValueError(f"noise: protocol {self.name} runs noiseless (a noisy step is not time-reversible)")
        if settings["residual_tol"] is not None:
            raise ValueError(f"residual_tol: protocol {self.name} runs trajectories, not relaxations to a fixed point: "
                             f"there is no residual to gate on")
        if settings["damping"]:
            raise ValueError(f"damping: protocol {self.name} runs on non-dissipative systems only (damping breaks "
                             f"time-reversal symmetry), got {settings['damping']!r}")

    def program(self, eps, T1, T2=None):
        """(forward, echo): T1 = T steps each; the echo's copies from `sided`."""
        copies = SIDED[self.settings["sided"]]
        return Phase("forward", T1), EchoPhase("echo", T1, eps, "forward", kinds=STACK, copies=copies)

    def gdu_phase(self, program):
        return program[-1]

    def prediction(self, state, program):
        """The output node's forward-pass result: logits (ce-mean) or the loss per sample (B, 1)."""
        return state["mem"]["pred"]

    def estimate(self, mem, held):
        """-(slope of G_c against the copies' nudges) for H's parameters; the direct gradient for a readout."""
        acc, direct = mem.get("acc") or {}, mem.get("direct") or {}
        out = {}
        for k, v in held.items():
            if k in direct:
                out[k] = direct[k].clone()
            elif k in acc:
                out[k] = contrast(acc[k], mem["copies"], mem["eps"])
            else:
                out[k] = v.new_zeros(v.shape)
        return out




PROTOCOL = RHEL()
